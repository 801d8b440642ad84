"""Scenario 15. Traffic features on their own gateway (`gw_traffic`), each route against the plain
route of the same gateway in the same rounds: a 95/5 split between two groups, a 10% mirror,
and groups balanced by least requests and by consistent hashing of the client address (every
group's backend is the same static origin, so only the gateway's work differs)."""

from harness import CONNS, clean, compare, detail, log, rounds, strip_pairs, url, wait_http, wrk

NUMBERS = (15,)
TITLE = "traffic: split, mirror, least_requests and hash vs round robin"


def traffic_upstreams(origin_port):
    """The extra groups of `gw_traffic`, as lines under `upstreams:`."""
    def g(name, extra=""):
        return (f'    {name}:\n      backends: ["127.0.0.1:{origin_port}"]\n'
                f'      health_check: {{ kind: tcp, interval_ms: 60000 }}{extra}\n')
    return (g("canary") + g("shadow") + g("least", "\n      balance: least_requests")
            + g("hashed", "\n      balance: { hash: client_ip }"))


def traffic_routes():
    """The routes of `gw_traffic`, as lines under `routes:`."""
    return "\n".join([
        '    - { name: split, match: { path: { prefix: "/split/" } }, auth: public, rewrite: { strip_prefix: "/split" },'
        ' split: [{ upstream: origin, weight: 95 }, { upstream: canary, weight: 5 }] }',
        '    - { name: mirror, match: { path: { prefix: "/mirror/" } }, auth: public, rewrite: { strip_prefix: "/mirror" },'
        ' upstream: origin, mirror: { upstream: shadow, percent: 10 } }',
        '    - { name: least, match: { path: { prefix: "/least/" } }, auth: public, rewrite: { strip_prefix: "/least" },'
        ' upstream: least }',
        '    - { name: hashed, match: { path: { prefix: "/hashed/" } }, auth: public, rewrite: { strip_prefix: "/hashed" },'
        ' upstream: hashed }',
    ]) + "\n"


def run(fleet, results):
    ports = fleet.ports
    log("bench: 15/15 traffic: split, mirror, least_requests and hash vs round robin")
    gw = fleet.gateway("gateway-traffic", "gw_traffic", 0, fleet.svc_env)
    port = ports["gw_traffic"]
    wait_http(f"http://127.0.0.1:{port}/readyz")

    def member(path):
        return lambda s: wrk(url(port, path), CONNS, s, (), (gw.pid, fleet.origin.pid))

    names = ("plain", "split", "mirror", "least", "hashed")
    paths = ("/bench/json", "/split/json", "/mirror/json", "/least/json", "/hashed/json")
    rr = rounds([(n, member(p)) for n, p in zip(names, paths)])
    results["traffic"] = {n: strip_pairs(compare(rr, n, "plain")) for n in names[1:]}


TARGETS = {"split": 0.97, "mirror": 0.93, "least": 0.97, "hashed": 0.97}
LABELS = {"split": "15a split 95/5 vs plain", "mirror": "15b mirror 10% vs plain",
          "least": "15c least_requests vs round robin", "hashed": "15d hash (client_ip) vs round robin"}


def rows(r, row):
    x = r.get("traffic")
    for key, label in LABELS.items():
        c = (x or {}).get(key)
        if not c:
            row(label, "not run", f">= {TARGETS[key]}x", None)
            continue
        row(label, f"{c['ratio_median']:.2f}x (min {c['ratio_min']:.2f}, max {c['ratio_max']:.2f})",
            f">= {TARGETS[key]}x", clean(c) and c["ratio_median"] >= TARGETS[key], detail(c))
