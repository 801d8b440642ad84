"""The report: every scenario's rows as one table, printed, kept in bench/results/latest.json with
the raw figures and the machine, and written to docs/BENCHMARKS.md (bench/ANALYSIS.md appended)."""

import json
import os
import platform
import subprocess
import time

from harness import CONNS, OHA, PAIRS, PEERS_BIN, RESULTS, ROOT, SECONDS, TRACING_PAIRS, verdict


def report(r, scenarios):
    rows = []

    def row(scenario, figure, target, ok, detail=""):
        rows.append((scenario, figure, target, verdict(ok) if ok is not None else "n/a", detail))

    for scenario in scenarios:
        scenario.rows(r, row)
    table = format_table(rows)
    print(table)
    r["table"] = rows
    r["machine"] = machine()
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(r, f, indent=2, default=str)
    write_doc(table, r["machine"])


def format_table(rows):
    widths = [max(len(str(x[i])) for x in rows + [("scenario", "figure", "target", "verdict", "detail")]) for i in range(5)]
    lines = []
    header = ("scenario", "figure", "target", "verdict", "detail")
    lines.append("| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for rrow in rows:
        lines.append("| " + " | ".join(str(v).ljust(widths[i]) for i, v in enumerate(rrow)) + " |")
    return "\n".join(lines)


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    def ver(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    return {
        "cpu": model, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "nginx": ver(["nginx", "-v"]), "haproxy": ver(["haproxy", "-v"]), "wrk": ver(["wrk", "-v"]),
        "oha": ver([OHA, "--version"]) if OHA and os.path.exists(OHA) else "missing",
        "traefik": ver([os.path.join(PEERS_BIN, "traefik"), "version"]).split()[-1],
        "caddy": ver([os.path.join(PEERS_BIN, "caddy"), "version"]).split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_doc(table, m):
    doc = f"""# Benchmarks

Produced by `make bench` (`bench/run.py`; `BENCH_SECONDS={SECONDS}` per run, `BENCH_PAIRS={PAIRS}`,
{CONNS} connections) on {m['date']}. Raw figures: `bench/results/latest.json`.

Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, Linux {m['kernel']}.
Peers: {m['nginx']}; {m['haproxy']}; load: {m['wrk']}; fixed-rate latency: oha ({m['oha']}) with
`--latency-correction` (corrects for coordinated omission).

Method: every process on 127.0.0.1, one worker/thread each, access logs off. The proxy under
test runs alone on CPU 1 (taskset); wrk/oha, the origins (nginx static, the mocks) and Redis on
CPU 0. Each scenario's members (the gateway's variants and its peers: plain proxying runs the
gateway, nginx, HAProxy, bare Pingora, Traefik and Caddy together) run once each per round
after a warm-up, {PAIRS} rounds ({TRACING_PAIRS} for tracing, whose gateways run against an
untraced twin in rounds of their own), the order reversed every other round; a
ratio is the median of the per-round ratios (min and max shown). A run whose generator core
was saturated while the proxy core was not is counted as invalid. Absolute figures move +-25%
between runs on this 2-core machine and are reported, not judged. Scenario 7 is also counted
in instructions per request (callgrind, `bench/instructions.py`'s count, the median of three
processes per configuration): tracing's 3% margin is inside this VM's throughput noise.
Peers from PyPI: Traefik ({m.get('traefik', 'not installed')}), Caddy ({m.get('caddy', 'not installed')}), GOMAXPROCS=1.

{table}
"""
    analysis = os.path.join(ROOT, "bench", "ANALYSIS.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            doc += "\n" + f.read()
    with open(os.path.join(ROOT, "docs", "BENCHMARKS.md"), "w") as f:
        f.write(doc)
