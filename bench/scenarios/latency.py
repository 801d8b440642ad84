"""Scenario 5. Added latency: one connection, then a fixed rate half the gateway's own maximum
(scenario 1's median rate)."""

from harness import SECONDS, log, oha, url, wrk

NUMBERS = (5,)
TITLE = "added latency (1 connection; fixed rate at half the gateway's max)"


def run(fleet, results):
    ports, peers = fleet.ports, fleet.peers
    log("bench: 5/15 added latency")
    targets = [("direct", ports["origin"], "/json"), ("gateway", ports["gw"], "/bench/json"),
               ("nginx", ports["nginx"], "/json")]
    targets += [(name, ports[name], "/json") for name in ("traefik", "caddy") if name in peers]
    lat = {name: wrk(url(port, path), 1, SECONDS) for name, port, path in targets}
    added_p50 = lat["gateway"]["p50_us"] - lat["direct"]["p50_us"]
    rate = int(results["plain"]["vs_nginx"]["a_rps_median"] / 2)
    fixed = {name: oha(url(port, path), rate, 32, SECONDS) for name, port, path in targets[:3]}
    added_p99 = None
    if all(fixed.values()):
        added_p99 = {n: fixed[n]["p99_us"] - fixed["direct"]["p99_us"] for n in ("gateway", "nginx")}
    results["latency"] = {"c1": lat, "added_p50_us": added_p50, "fixed_rate": rate, "fixed": fixed,
                          "added_p99_us": added_p99}


def rows(r, row):
    lat = r["latency"]
    c1 = lat["c1"]
    row("5 added p50 at 1 connection", f"{lat['added_p50_us']:.0f} us", "<= 50 us", lat["added_p50_us"] <= 50,
        "; ".join(f"{n} {c1[n]['p50_us']:.0f} us" for n in c1))
    others = [n for n in ("nginx", "traefik", "caddy") if n in c1]
    row("5 added p50 at 1 connection, peers",
        ", ".join(f"{n} {c1[n]['p50_us'] - c1['direct']['p50_us']:.0f} us" for n in others),
        "gateway <= Traefik and Caddy",
        all(lat["added_p50_us"] <= c1[n]["p50_us"] - c1["direct"]["p50_us"] for n in others if n != "nginx"))
    if lat["added_p99_us"]:
        a = lat["added_p99_us"]
        row(f"5 added p99 at {lat['fixed_rate']} req/s (50% of the gateway's max)",
            f"gateway {a['gateway']:.0f} us, nginx {a['nginx']:.0f} us", "gateway <= nginx", a["gateway"] <= a["nginx"])
    else:
        row("5 added p99 at 50% of the gateway's max", "oha unavailable", "gateway <= nginx", None)
