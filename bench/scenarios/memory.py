"""Scenario 11. Memory: an idle gateway's RSS, then what each of 10,000 idle keep-alive
connections adds after a proxied request (the connection a real client holds), with bare
Pingora measured the same way beside it."""

import socket
import time

from harness import log, rss_kib, url, wait_http

NUMBERS = (11,)
TITLE = 'memory (idle, and 10,000 idle keep-alive connections after a proxied request)'


def run(fleet, results):
    ports = fleet.ports
    log("bench: 11/15 memory (idle, and 10,000 idle keep-alive connections after a proxied request)")
    idle = fleet.gateway("gateway-idle", "gw_idle", 0, fleet.svc_env)
    wait_http(url(ports["gw_idle"], "/readyz"))
    time.sleep(1)
    idle_rss = rss_kib(idle.pid)
    conns, per_conn = hold_connections(ports["gw_idle"], 10000, idle.pid, idle_rss, "/bench/json")
    bare = fleet.peers["bare"]
    bare_rss = rss_kib(bare.pid)
    bare_conns, bare_per_conn = hold_connections(ports["bare"], 10000, bare.pid, bare_rss, "/json")
    results["memory"] = {"idle_rss_kib": idle_rss, "connections": conns, "kib_per_connection": per_conn,
                         "bare_connections": bare_conns, "bare_kib_per_connection": bare_per_conn}


def hold_connections(port, n, pid, base_rss, path):
    """Opens n keep-alive connections, one GET of `path` each, and keeps them idle."""
    socks = []
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(req)
            socks.append(s)
            if len(socks) % 500 == 0:
                for t in socks[-500:]:
                    t.recv(4096)
        for t in socks[len(socks) - len(socks) % 500:]:
            t.recv(4096)
        time.sleep(1)
        rss = rss_kib(pid)
        return len(socks), (rss - base_rss) / max(1, len(socks))
    finally:
        for s in socks:
            s.close()


def rows(r, row):
    m = r["memory"]
    row("11 idle RSS", f"{m['idle_rss_kib']/1024:.1f} MiB", "<= 16 MiB", m["idle_rss_kib"] <= 16 * 1024)
    bare = m.get("bare_kib_per_connection")
    row("11 per idle keep-alive connection after a proxied GET",
        f"{m['kib_per_connection']:.2f} KiB ({m['connections']} conns)", "<= 4 KiB",
        m["kib_per_connection"] <= 4.0,
        f"bare Pingora {bare:.2f} KiB measured the same way" if bare is not None else "")
