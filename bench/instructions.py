#!/usr/bin/env python3
"""User-space instructions per request, counted by valgrind's callgrind: a figure this VM's noise
cannot move (throughput moves +-25% between runs here, instruction counts by < 1%).

    python3 bench/instructions.py [path/to/gateway ...]

For each build (default: target/release/gateway) and each route — plain proxying (`/bench/json`)
and the edge checks (`/edge/json`, HS256 + the per-IP limit) — the gateway runs under callgrind
against a static nginx origin; 200 sequential requests warm it up, then instrumentation is
switched on for N (BENCH_REQUESTS, default 2000) more. Prints instructions per request and
keeps each profile under target/callgrind (`callgrind_annotate <file>` shows where they go). Kernel time is not
counted: syscalls per request are compared with `strace -c` instead (docs/BENCHMARKS.md).
Needs `valgrind` (Debian package) and nginx.
"""

import http.client
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the bench's process helpers, tokens and ports)

N = int(os.environ.get("BENCH_REQUESTS", "2000"))
ROUTES = (("plain", "/bench/json"), ("edge", "/edge/json"))
# Where the profiles go (replaced on every run).
OUT = os.path.join(R.ROOT, "target", "callgrind")


def conf(name, port, metrics, origin, tracing=""):
    return R.write(os.path.join(R.WORK, f"{name}.yaml"), f"""
version: 1
threads: 1
pid_file: {R.WORK}/{name}.pid
upgrade_sock: {R.WORK}/{name}.sock
gateway:
  listen: "127.0.0.1:{port}"
  metrics_listen: "127.0.0.1:{metrics}"
  auth: {{ public_paths: ["/healthz", "/readyz", "/bench/"] }}
  rate_limit: {{ per_minute: 1000000000 }}
  upstreams:
    origin: {{ backends: ["127.0.0.1:{origin}"], health_check: {{ kind: tcp, interval_ms: 60000 }} }}
  routes:
    - {{ prefix: "/bench/", upstream: origin, strip_prefix: "/bench" }}
    - {{ prefix: "/edge/", upstream: origin, strip_prefix: "/edge" }}
{tracing}""")


def requests(port, path, headers, n):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n):
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"instructions: {path} answered {r.status}")
    conn.close()


def count(binary, path, origin, headers, tracing="", tag=""):
    port, metrics = R.free_port(), R.free_port()
    out = os.path.join(OUT, f"{os.path.basename(binary)}-{path.strip('/').split('/')[0]}{tag}.out")
    gw = R.start("gateway", ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                             binary, "-c", conf("cg", port, metrics, origin, tracing)], R.PROXY_CPU,
                 {"JWT_SECRET": R.SECRET, "RUST_LOG": "warn"})
    R.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
    requests(port, path, headers, 200)
    subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], capture_output=True, check=True)
    requests(port, path, headers, N)
    if tracing:
        # Let the last batch go out inside the counted window: export is part of the cost.
        time.sleep(1.5)
    subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-d", str(gw.pid)], capture_output=True, check=True)
    gw.kill()
    gw.wait()
    # callgrind names the dump after the file given, with a part number.
    dump = next(f for f in sorted(os.listdir(OUT), reverse=True) if f.startswith(os.path.basename(out) + "."))
    with open(os.path.join(OUT, dump)) as f:
        total = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
    return total / N, os.path.join(OUT, dump)


def main():
    if not shutil.which("valgrind"):
        raise SystemExit("instructions: valgrind is missing (apt-get install valgrind)")
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    binaries = sys.argv[1:] or [R.GATEWAY]
    origin = R.free_port()
    R.write(os.path.join(R.WORK, "origin.conf"), f"""
worker_processes 1; daemon off; pid {R.WORK}/origin.pid; error_log {R.WORK}/origin.log error;
events {{ worker_connections 1024; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{origin};
    location = /json {{ default_type application/json; return 200 '{{"id":"1","ok":true}}'; }} }} }}
""")
    R.start("origin", [shutil.which("nginx") or "/usr/sbin/nginx", "-c", os.path.join(R.WORK, "origin.conf")],
            R.LOAD_CPU)
    R.wait_http(f"http://127.0.0.1:{origin}/json")
    auth = {"Authorization": f"Bearer {R.token('1')}"}
    # BENCH_TRACING="0,0.1,1": also count each route with tracing on at these sample ratios,
    # spans exported to the mocks' OTLP collector (its own instructions are not counted).
    ratios = [r for r in os.environ.get("BENCH_TRACING", "").split(",") if r]
    collector = R.free_port()
    if ratios:
        R.start("collector", [R.MOCKS, "--services", "collector", "--collector-port", str(collector)], R.LOAD_CPU)
        R.wait_http(f"http://127.0.0.1:{collector}/healthz")
    variants = [("", "")] + [(f'  tracing: {{ enabled: true, endpoint: "http://127.0.0.1:{collector}", '
                              f'sample_ratio: {r} }}\n', f"-traced{r}") for r in ratios]
    for binary in binaries:
        for tracing, tag in variants:
            for name, path in ROUTES:
                per, dump = count(binary, path, origin, auth if name == "edge" else {}, tracing, tag)
                print(f"{binary}: {name + tag:16s} {per:9.0f} instructions per request ({dump})", flush=True)
                time.sleep(0.2)


if __name__ == "__main__":
    main()
