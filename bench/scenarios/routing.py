"""Scenario 13. The route table's cost: 1,000 routes (500 hosts x 2 paths, every tenth host's
second path a template) against the plain single-table gateway, the same requests to both (Host
cycling through the 500 hosts, GET /bench/json)."""

from harness import CONNS, clean, compare, detail, log, rounds, strip_pairs, url, wait_http, wrk

NUMBERS = (13,)
TITLE = 'routing table: 1,000 routes vs the plain conf'

HOSTS = 500


def routes_yaml():
    """The 1,000 extra routes of the `gw_routes` gateway, as lines under `routes:`."""
    lines = []
    for i in range(HOSTS):
        host = f"h{i}.example.com"
        lines.append(f'    - {{ name: h{i}-bench, match: {{ hosts: ["{host}"], path: {{ prefix: "/bench/" }} }}, '
                     f'upstream: origin, rewrite: {{ strip_prefix: "/bench" }}, auth: public }}')
        if i % 10 == 0:
            other = 'path: { template: "/items/{id}" } }, upstream: origin, rewrite: { path: "/json" }'
        else:
            other = 'path: { prefix: "/edge/" } }, upstream: origin, rewrite: { strip_prefix: "/edge" }'
        lines.append(f'    - {{ name: h{i}-other, match: {{ hosts: ["{host}"], {other}, auth: public }}')
    return "\n".join(lines) + "\n"


def run(fleet, results):
    ports = fleet.ports
    log("bench: 13/15 routing table: 1,000 routes vs the plain conf")
    # Started here, not with the fleet: its conf needs this scenario's routes (and a gateway
    # new enough to read them, so that a bench of an older build can skip it).
    gw_routes = fleet.gateway("gateway-routes", "gw_routes", 0, fleet.svc_env)
    wait_http(f"http://127.0.0.1:{ports['gw_routes']}/readyz")

    def member(port, pid):
        return lambda s: wrk(url(port, "/bench/json"), CONNS, s, (), (pid, fleet.origin.pid), script="hosts.lua")

    members = [("gateway", member(ports["gw"], fleet.gw.pid)),
               ("routes", member(ports["gw_routes"], gw_routes.pid))]
    rr = rounds(members)
    results["routing"] = strip_pairs(compare(rr, "routes", "gateway", "1,000 routes", "plain conf"))


def rows(r, row):
    x = r.get("routing")
    if not x:
        row("13 routing table, 1,000 routes vs plain", "not run", ">= 0.97x", None)
        return
    row("13 routing table, 1,000 routes vs plain",
        f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})",
        ">= 0.97x", clean(x) and x["ratio_median"] >= 0.97, detail(x))
