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

BENCH_ROUTE_TABLE=1 adds scenario 13's 1,000 routes (500 hosts x 2 paths) to the conf and sends
each request with the Host of the next of those 500 hosts (the routing table's cost).
BENCH_TRACING="0,0.1,1" also counts both routes with tracing on at those sample ratios.
BENCH_HANDSHAKES=1 (or `only`) also counts a new TLS connection carrying one proxied request
(`Connection: close`, TLS 1.3, P-256 certificate), the gateway beside nginx proxying to the same
origin (the handshake-rate row of `make bench`, without this VM's noise).
Needs `valgrind` (Debian package), nginx and the openssl CLI.
"""

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (the bench's process helpers, tokens and ports)

N = int(os.environ.get("BENCH_REQUESTS", "2000"))
ROUTES = (("plain", "/bench/json"), ("edge", "/edge/json"))
# Where the profiles go (replaced on every run).
OUT = os.path.join(H.ROOT, "target", "callgrind")


def conf(name, port, metrics, origin, tracing="", tls=""):
    return H.write(os.path.join(H.WORK, f"{name}.yaml"), f"""
version: 1
threads: 1
pid_file: {H.WORK}/{name}.pid
upgrade_sock: {H.WORK}/{name}.sock
gateway:
  listen: "127.0.0.1:{port}"
  metrics_listen: "127.0.0.1:{metrics}"
{tls}  auth: {{ public_paths: ["/healthz", "/readyz", "/bench/"] }}
  rate_limit: {{ per_minute: 1000000000 }}
  upstreams:
    origin: {{ backends: ["127.0.0.1:{origin}"], health_check: {{ kind: tcp, interval_ms: 60000 }} }}
  routes:
    - {{ prefix: "/bench/", upstream: origin, strip_prefix: "/bench" }}
    - {{ prefix: "/edge/", upstream: origin, strip_prefix: "/edge" }}
{route_table()}{tracing}""")


def route_table():
    """Scenario 13's routes when BENCH_ROUTE_TABLE is set, else nothing."""
    if not os.environ.get("BENCH_ROUTE_TABLE"):
        return ""
    from scenarios.routing import routes_yaml  # noqa: PLC0415 (only for this option)
    return routes_yaml()


def requests(port, path, headers, n):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    rotate = bool(os.environ.get("BENCH_ROUTE_TABLE"))
    for i in range(n):
        if rotate:
            headers = dict(headers, Host=f"h{i % 500}.example.com")
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"instructions: {path} answered {r.status}")
    conn.close()


def count(binary, path, origin, headers, tracing="", tag=""):
    port, metrics = H.PORTS.free(), H.PORTS.free()
    out = os.path.join(OUT, f"{os.path.basename(binary)}-{path.strip('/').split('/')[0]}{tag}.out")
    gw = H.start("gateway", ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                             binary, "-c", conf("cg", port, metrics, origin, tracing)], H.PROXY_CPU,
                 {"JWT_SECRET": H.SECRET, "RUST_LOG": "warn"})
    H.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
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


def handshakes(port, path, n):
    """n new TLS connections, one request each (the server closes after answering)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for _ in range(n):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            if b" 200 " not in data.split(b"\r\n", 1)[0]:
                raise SystemExit(f"instructions: {path} over TLS answered {data[:60]!r}")


def counted(name, argv, pid_of, url_port, path, env=None):
    """Instructions per new TLS connection of the server `argv` (run under callgrind)."""
    n = max(100, N // 10)
    out = os.path.join(OUT, f"{name}-handshake.out")
    p = H.start(name, ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"] + argv,
                H.PROXY_CPU, env)
    deadline = time.time() + 120
    while True:
        try:
            handshakes(url_port, path, 1)
            break
        except (OSError, SystemExit):
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    handshakes(url_port, path, 20)
    pid = str(pid_of(p))
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
    handshakes(url_port, path, n)
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
    p.kill()
    p.wait()
    dump = next(f for f in sorted(os.listdir(OUT), reverse=True) if f.startswith(os.path.basename(out) + "."))
    with open(os.path.join(OUT, dump)) as f:
        total = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
    return total / n


def tls_counts(binary, origin):
    cert, key = os.path.join(H.WORK, "hs.crt"), os.path.join(H.WORK, "hs.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], capture_output=True, check=True)
    port, metrics, tls = H.PORTS.free(), H.PORTS.free(), H.PORTS.free()
    gw_conf = conf("hs", port, metrics, origin,
                   tls=f'  tls: {{ listen: "127.0.0.1:{tls}", certificates: [{{ cert: "{cert}", key: "{key}" }}] }}\n')
    gw = counted("gateway", [binary, "-c", gw_conf], lambda p: p.pid, tls, "/bench/json",
                 {"JWT_SECRET": H.SECRET, "RUST_LOG": "warn"})
    nginx_port = H.PORTS.free()
    nginx_conf = H.write(os.path.join(H.WORK, "hs-nginx.conf"), f"""
worker_processes 1; daemon off; master_process off; pid {H.WORK}/hs-nginx.pid; error_log {H.WORK}/hs-nginx.log error;
events {{ worker_connections 1024; }}
http {{ access_log off;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
  server {{ listen 127.0.0.1:{nginx_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    ngx = counted("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-c", nginx_conf], lambda p: p.pid,
                  nginx_port, "/json")
    return gw, ngx


def main():
    if not shutil.which("valgrind"):
        raise SystemExit("instructions: valgrind is missing (apt-get install valgrind)")
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    binaries = sys.argv[1:] or [H.GATEWAY]
    origin = H.PORTS.free()
    H.write(os.path.join(H.WORK, "origin.conf"), f"""
worker_processes 1; daemon off; pid {H.WORK}/origin.pid; error_log {H.WORK}/origin.log error;
events {{ worker_connections 1024; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{origin};
    location = /json {{ default_type application/json; return 200 '{{"id":"1","ok":true}}'; }} }} }}
""")
    H.start("origin", [shutil.which("nginx") or "/usr/sbin/nginx", "-c", os.path.join(H.WORK, "origin.conf")],
            H.LOAD_CPU)
    H.wait_http(f"http://127.0.0.1:{origin}/json")
    auth = {"Authorization": f"Bearer {H.token('1')}"}
    # BENCH_TRACING="0,0.1,1": also count each route with tracing on at these sample ratios,
    # spans exported to the mocks' OTLP collector (its own instructions are not counted).
    ratios = [r for r in os.environ.get("BENCH_TRACING", "").split(",") if r]
    collector = H.PORTS.free()
    if ratios:
        H.start("collector", [H.MOCKS, "--services", "collector", "--collector-port", str(collector)], H.LOAD_CPU)
        H.wait_http(f"http://127.0.0.1:{collector}/healthz")
    variants = [("", "")] + [(f'  tracing: {{ enabled: true, endpoint: "http://127.0.0.1:{collector}", '
                              f'sample_ratio: {r} }}\n', f"-traced{r}") for r in ratios]
    # BENCH_HANDSHAKES=only: the TLS count alone.
    if os.environ.get("BENCH_HANDSHAKES") == "only":
        variants = []
    for binary in binaries:
        for tracing, tag in variants:
            for name, path in ROUTES:
                per, dump = count(binary, path, origin, auth if name == "edge" else {}, tracing, tag)
                print(f"{binary}: {name + tag:16s} {per:9.0f} instructions per request ({dump})", flush=True)
                time.sleep(0.2)
        if os.environ.get("BENCH_HANDSHAKES"):
            gw, ngx = tls_counts(binary, origin)
            print(f"{binary}: new TLS connection + request: gateway {gw:,.0f}, nginx {ngx:,.0f} instructions "
                  f"(nginx/gateway {ngx / gw:.3f}: the handshake-rate ratio the instructions allow)", flush=True)


if __name__ == "__main__":
    main()
