"""Scenario 12. Upstream connection reuse: the origin's accepted connections over one wrk run."""

import urllib.request

from harness import CONNS, SECONDS, log, url, wrk

NUMBERS = (12,)
TITLE = 'upstream connection reuse'


def run(fleet, results):
    ports = fleet.ports
    log("bench: 12/15 upstream connection reuse")
    accepts0 = origin_accepts(ports["origin"])
    r7 = wrk(url(ports["gw"], "/bench/json"), CONNS, SECONDS)
    accepts1 = origin_accepts(ports["origin"])
    new_conns = accepts1 - accepts0 - 1  # the status request itself
    results["reuse"] = {"requests": r7["requests"], "new_upstream_connections": new_conns,
                        "per_100k": new_conns * 100000 / max(1, r7["requests"])}


def origin_accepts(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/nginx_status").read().decode()
    return int(text.splitlines()[2].split()[0])


def rows(r, row):
    u = r["reuse"]
    row("12 new upstream connections", f"{u['per_100k']:.1f} per 100k requests", "<= 100", u["per_100k"] <= 100,
        f"{u['new_upstream_connections']} for {u['requests']} requests")
