"""Scenario 16. gRPC and WebSocket on their own gateway (`gw_protocols`, h2c on): unary gRPC calls
through the gateway against the same calls straight to the server (h2load with a prepared gRPC
body, h2c both ways), and WebSocket echo messages through the gateway against straight to the
echo server (examples/protocol_bench.rs on both ends). Both servers and both load generators
run on the generator core; the gateway has the proxy core to itself."""

import json
import os
import socket
import subprocess
import time

from harness import (CONNS, LOAD_CPU, ROOT, WORK, clean, compare, detail, h2load, log, proc_cpu, rounds, start,
                     strip_pairs, wait_http)

NUMBERS = (16,)
TITLE = "protocols: gRPC unary and WebSocket echo, through the gateway vs direct"
BENCH = os.path.join(ROOT, "target", "release", "examples", "protocol_bench")
# One gRPC message: HelloRequest { name: "bench" }.
GRPC_BODY = b"\x00\x00\x00\x00\x07\x0a\x05bench"
WS_CONNS = 64


def protocol_upstreams(ports):
    """The groups of `gw_protocols`, as lines under `upstreams:`."""
    return (f'    greeter:\n      backends: ["127.0.0.1:{ports["grpc"]}"]\n'
            f'      http2: {{ prior_knowledge: true }}\n      health_check: {{ kind: tcp, interval_ms: 60000 }}\n'
            f'    chat:\n      backends: ["127.0.0.1:{ports["ws"]}"]\n'
            f'      health_check: {{ kind: tcp, interval_ms: 60000 }}\n')


def protocol_routes():
    """The routes of `gw_protocols`, as lines under `routes:`."""
    return ('    - { name: grpc, match: { path: { prefix: "/helloworld.Greeter/" } }, upstream: greeter, auth: public }\n'
            '    - { name: chat, match: { path: { prefix: "/ws/" } }, upstream: chat, auth: public }\n')


def ws_load(port, seconds, pids):
    """WebSocket echo messages per second over WS_CONNS connections (and the CPU of `pids`)."""
    before = {pid: proc_cpu(pid) for pid in pids}
    out = subprocess.run(["taskset", "-c", LOAD_CPU, BENCH, "ws-load", f"ws://127.0.0.1:{port}/ws/echo",
                          str(WS_CONNS), str(seconds)], capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return {"rps": got["messages"] / got["seconds"], "messages": got["messages"], "errors": 0, "non2xx": 0,
            "valid": True, "cpu_s": {pid: proc_cpu(pid) - before[pid] for pid in pids}}


def wait_port(port, timeout=30):
    """Until something accepts connections on `port`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run(fleet, results):
    ports = fleet.ports
    log("bench: 16/16 protocols: gRPC unary and WebSocket echo, through the gateway vs direct")
    grpc = start("grpc-server", [BENCH, "grpc-server", str(ports["grpc"])], LOAD_CPU)
    ws = start("ws-server", [BENCH, "ws-server", str(ports["ws"])], LOAD_CPU)
    wait_port(ports["grpc"])
    wait_port(ports["ws"])
    gw = fleet.gateway("gateway-protocols", "gw_protocols", 0, fleet.svc_env)
    port = ports["gw_protocols"]
    wait_http(f"http://127.0.0.1:{port}/readyz")
    body = os.path.join(WORK, "grpc_request.bin")
    with open(body, "wb") as f:
        f.write(GRPC_BODY)
    extra = ("-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers")

    def grpc_member(p):
        return lambda s: h2load(f"http://127.0.0.1:{p}/helloworld.Greeter/SayHello", CONNS // 8, s,
                                (gw.pid, grpc.pid), streams=10, extra=extra)

    rr = rounds([("gateway", grpc_member(port)), ("direct", grpc_member(ports["grpc"]))])
    g = strip_pairs(compare(rr, "gateway", "direct"))
    g["gw_cpu_us_per_call"] = cpu_per(rr["gateway"], gw.pid)
    rr = rounds([("gateway", lambda s: ws_load(port, s, (gw.pid, ws.pid))),
                 ("direct", lambda s: ws_load(ports["ws"], s, (gw.pid, ws.pid)))])
    w = strip_pairs(compare(rr, "gateway", "direct"))
    w["gw_cpu_us_per_message"] = cpu_per(rr["gateway"], gw.pid)
    results["protocols"] = {"grpc": g, "websocket": w}


def cpu_per(runs, pid):
    """The gateway's CPU microseconds per call or message over `runs`."""
    cpu = sum(r["cpu_s"].get(pid, 0.0) for r in runs)
    n = sum(r.get("messages") or r.get("requests") or 0 for r in runs)
    return cpu / n * 1e6 if n else 0.0


TARGETS = {"grpc": 0.5, "websocket": 0.5}
LABELS = {"grpc": "16a gRPC unary via gateway vs direct", "websocket": "16b WebSocket echo via gateway vs direct"}


def rows(r, row):
    x = r.get("protocols")
    for key, label in LABELS.items():
        c = (x or {}).get(key)
        if not c:
            row(label, "not run", f">= {TARGETS[key]}x", None)
            continue
        per = c.get("gw_cpu_us_per_call") or c.get("gw_cpu_us_per_message") or 0.0
        row(label, f"{c['ratio_median']:.2f}x (min {c['ratio_min']:.2f}, max {c['ratio_max']:.2f}); "
            f"gateway {per:.1f} us CPU each",
            f">= {TARGETS[key]}x", clean(c) and c["ratio_median"] >= TARGETS[key], detail(c))
