"""Scenario 1. Plain proxying: the gateway, its peers and the framework's floor in the same rounds."""

import statistics

from harness import clean, compare, detail, log, pair_cpu_us, rounds, strip_pairs

NUMBERS = (1,)
TITLE = 'plain proxying: gateway, nginx, HAProxy, bare Pingora, Traefik, Caddy'


def run(fleet, results):
    ports, peers, gw, nginx_p, haproxy_p = fleet.ports, fleet.peers, fleet.gw, fleet.nginx_p, fleet.haproxy_p
    runner = fleet.runner
    log("bench: 1/15 plain proxying: gateway, nginx, HAProxy, bare Pingora, Traefik, Caddy")
    plain_members = [("gateway", runner(ports["gw"], "/bench/json", gw.pid)),
                     ("nginx", runner(ports["nginx"], "/json", nginx_p.pid)),
                     ("haproxy", runner(ports["haproxy"], "/json", haproxy_p.pid))]
    plain_members += [(name, runner(ports[name], "/json", p.pid)) for name, p in peers.items()]
    pr = rounds(plain_members)
    s1n, s1h = compare(pr, "gateway", "nginx"), compare(pr, "gateway", "haproxy")

    def cpu_per_req(result, name):
        runs = [(a if result["a"] == name else b) for a, b in result["pairs"]]
        pid = {"gateway": gw.pid, "nginx": nginx_p.pid, "haproxy": haproxy_p.pid}[name]
        proxy_us = statistics.median(r["cpu_s"][pid] * 1e6 / max(1, r["requests"]) for r in runs)
        origin_us = statistics.median(r["cpu_s"][fleet.origin.pid] * 1e6 / max(1, r["requests"]) for r in runs)
        return proxy_us, origin_us

    cpu = {}
    for name, res in (("gateway", s1n), ("nginx", s1n), ("haproxy", s1h)):
        p_us, o_us = cpu_per_req(res, name)
        cpu[name] = {"proxy_us_per_req": p_us, "origin_us_per_req": o_us, "normalised": p_us / o_us if o_us else 0}
    results["plain"] = {"vs_nginx": strip_pairs(s1n), "vs_haproxy": strip_pairs(s1h), "cpu": cpu}
    for name, p in peers.items():
        x = compare(pr, "gateway", name)
        results["plain"][f"vs_{name}"] = dict(strip_pairs(x), cpu_us=pair_cpu_us(x, gw.pid, p.pid))


def rows(r, row):
    p = r["plain"]
    for peer in ("nginx", "haproxy"):
        x = p[f"vs_{peer}"]
        row(f"1 plain proxy vs {peer}", f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})",
            ">= 1.0x (goal 1.1x)", clean(x) and x["ratio_median"] >= 1.0,
            f"gateway {x['a_rps_median']:.0f} rps, {peer} {x['b_rps_median']:.0f} rps; invalid runs {x['invalid_runs']}, errors {x['errors']}")
    targets = {"bare": (1.0, "bare Pingora"), "traefik": (1.5, "Traefik"), "caddy": (2.0, "Caddy")}
    n_ratio = p["vs_nginx"]["ratio_median"]
    for peer, (target, label) in targets.items():
        x = p.get(f"vs_{peer}")
        if not x:
            row(f"1 plain proxy vs {label}", "not installed", f">= {target}x", None)
            continue
        # The peer's own ratio to nginx, through the gateway's ratios to both.
        peer_vs_nginx = n_ratio / x["ratio_median"] if x["ratio_median"] else 0.0
        g_us, p_us = x["cpu_us"]
        row(f"1 plain proxy vs {label}", f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})",
            f">= {target}x", clean(x) and x["ratio_median"] >= target,
            f"{detail(x)}; {label} ~{peer_vs_nginx:.2f}x nginx; CPU {g_us:.1f} vs {p_us:.1f} us/req")
    b = p.get("vs_bare")
    if b:
        row("1 CPU per request vs bare Pingora", f"gateway {b['cpu_us'][0]:.1f}, bare {b['cpu_us'][1]:.1f} us/req",
            "gateway <= bare", b["cpu_us"][0] <= b["cpu_us"][1])
    c = p["cpu"]
    row("1 CPU per request (normalised by origin)",
        f"gateway {c['gateway']['normalised']:.2f}, nginx {c['nginx']['normalised']:.2f}, haproxy {c['haproxy']['normalised']:.2f}",
        "gateway <= nginx", c["gateway"]["normalised"] <= c["nginx"]["normalised"],
        f"gateway {c['gateway']['proxy_us_per_req']:.1f} us/req, nginx {c['nginx']['proxy_us_per_req']:.1f} us/req")
