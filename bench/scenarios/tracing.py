"""Scenario 7. Tracing: each route's traced gateways against their untraced twin (the same conf
without the tracing block), in rounds of their own so that the pairs run back to back: spread
over a long round of peers, this machine's drift buried a 3% effect. The same cost is also
counted in instructions (callgrind, instructions.py's count)."""

import json
import os
import shutil
import statistics
import urllib.request

import instructions
from fleet import TRACED
from harness import (COUNT_REPEATS, GATEWAY, TRACING_PAIRS, clean, compare, detail, log, pair_cpu_us, rounds,
                     strip_pairs, token, url)

NUMBERS = (7,)
TITLE = 'tracing 0/10/100% vs untraced, plain and edge routes'

# The rows (route_ratio) and their targets against untraced (None: reported only), judged both by
# throughput and by instruction count.
TRACING_TARGETS = (("plain_0%", None), ("plain_10%", 0.97), ("plain_100%", 0.85),
                   ("edge_10%", 0.97), ("edge_100%", 0.85))


def pct(ratio):
    """A sample ratio as the member names show it: 0.1 -> "10%"."""
    return f"{round(ratio * 100)}%"


def run(fleet, results):
    ports, traced, twin, auth, runner = fleet.ports, fleet.traced, fleet.twin, fleet.auth, fleet.runner
    log(f"bench: 7/15 tracing 0/10/100% vs untraced, plain and edge routes ({TRACING_PAIRS} rounds each)")
    tr = {}
    for route, path, headers, ratios in (("plain", "/bench/json", (), TRACED.values()),
                                         ("edge", "/edge/json", (auth,), [r for r in TRACED.values() if r > 0])):
        members = [("untraced", runner(ports["gw_toff"], path, twin.pid, headers))]
        members += [(f"traced-{pct(r)}", runner(ports[n], path, traced[n].pid, headers))
                    for n, r in TRACED.items() if r in ratios]
        tround = rounds(members, TRACING_PAIRS)
        for name, ratio in TRACED.items():
            if ratio in ratios:
                x = compare(tround, f"traced-{pct(ratio)}", "untraced")
                tr[f"{route}_{pct(ratio)}"] = dict(strip_pairs(x), cpu_us=pair_cpu_us(x, traced[name].pid, twin.pid))
    # The same cost counted in instructions (callgrind), which this VM's noise cannot move: an
    # A/A of two untraced processes reads 0.99-1.01x over 8 rounds with single pairs from 0.89x
    # to 1.33x, while the target is 3%.
    tr["instructions"] = tracing_instructions(ports["origin"], ports["m_otlp"], token("1"))
    tr["collector"] = json.load(urllib.request.urlopen(url(ports["m_otlp"], "/__stats")))
    tr["gateway_100"] = span_metrics(url(ports.metrics("gw_t100"), "/metrics"))
    results["tracing"] = tr


def tracing_instructions(origin, collector, user_token):
    """Instructions per request (`bench/instructions.py`'s count) untraced and traced at each of
    the scenario's ratios, both routes; {} without valgrind."""
    if not shutil.which("valgrind"):
        log("bench: valgrind missing, scenario 7 by instruction count skipped")
        return {}
    os.makedirs(instructions.OUT, exist_ok=True)
    for f in os.listdir(instructions.OUT):
        os.remove(os.path.join(instructions.OUT, f))
    auth = {"Authorization": f"Bearer {user_token}"}
    out = {}
    for route, path in instructions.ROUTES:
        ratios = [r for r in TRACED.values() if route == "plain" or r > 0]
        for ratio in [None] + ratios:
            tracing = ("" if ratio is None else f'  tracing: {{ enabled: true, endpoint: "http://127.0.0.1:{collector}", '
                                                f'sample_ratio: {ratio} }}\n')
            tag = "untraced" if ratio is None else pct(ratio)
            # valgrind reads `%` in a file name as a format.
            file_tag = "-untraced" if ratio is None else f"-traced{ratio}"
            # The median of three processes: where jemalloc's heap happens to lay out Pingora's
            # 64 KiB response buffer moves one process's count by up to ~1,300 (extent splits
            # and merges), which is the whole margin at 10%.
            counts = [instructions.count(GATEWAY, path, origin, auth if route == "edge" else {}, tracing, file_tag)[0]
                      for _ in range(COUNT_REPEATS)]
            per = statistics.median(counts)
            out[f"{route}_{tag}"] = per
            log(f"bench: 7 {route} {tag}: {per:,.0f} instructions per request "
                f"({', '.join(f'{c:,.0f}' for c in counts)})")
    return out


def span_metrics(metrics_url):
    """The tracing_* series of a gateway, summed over labels."""
    out = {}
    for line in urllib.request.urlopen(metrics_url).read().decode().splitlines():
        if line.startswith("tracing_"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0] + ("{" + name.split("{", 1)[1] if "{" in name else "")
            out[key] = float(value)
    return out


def rows(r, row):
    tr = r.get("tracing")
    if not tr:
        return
    for key, target in TRACING_TARGETS:
        x = tr.get(key)
        if not x:
            continue
        scenario, pct = key.split("_")
        label = "plain proxy" if scenario == "plain" else "edge checks (HS256 + limit)"
        a_us, b_us = x["cpu_us"]
        row(f"7 tracing {pct} sampled, {label}",
            f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})",
            f">= {target}x untraced" if target else "reported (unsampled cost)",
            (clean(x) and x["ratio_median"] >= target) if target else None,
            f"{detail(x)}; CPU {a_us:.1f} vs {b_us:.1f} us/req")
    instruction_rows(tr, row)
    g, c = tr.get("gateway_100", {}), tr.get("collector", {})
    dropped = sum(v for k, v in g.items() if k.startswith("tracing_spans_dropped_total"))
    exported = g.get("tracing_spans_exported_total", 0)
    row("7 spans at 100% (whole scenario)", f"{exported:.0f} exported, {dropped:.0f} dropped", "reported", None,
        f"collector decoded {c.get('spans', 0)} spans in {c.get('exports', 0)} exports, {c.get('bad', 0)} bad")


def instruction_rows(tr, row):
    ins = tr.get("instructions") or {}
    for key, target in TRACING_TARGETS:
        scenario, pct_ = key.split("_")
        base, traced = ins.get(f"{scenario}_untraced"), ins.get(key)
        if not (base and traced):
            continue
        label = "plain proxy" if scenario == "plain" else "edge checks (HS256 + limit)"
        row(f"7 tracing {pct_} sampled, {label}, by instructions", f"{base / traced:.3f}x",
            f">= {target}x untraced" if target else "reported (unsampled cost)",
            base / traced >= target if target else None,
            f"{traced:,.0f} vs {base:,.0f} instructions per request (callgrind, {os.environ.get('BENCH_REQUESTS', '2000')} "
            f"requests, export included; median of {COUNT_REPEATS} processes each)")
