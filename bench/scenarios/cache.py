"""Scenarios 9 and 10, in one set of rounds. 9: profile cache hits on Redis vs plain proxying of a
body of the same size; 9b: the same hits with the in-process tier in front of Redis (read only
while subscribed to invalidations: wait for that first). 10: a cached 20 KB aggregate compressed
(zstd, gzip) vs sent as is, and the bytes each sends."""

import urllib.request

from harness import clean, compare, detail, log, rounds, strip_pairs, url, wait_http, wait_metric

NUMBERS = (9, 10)
TITLE = 'cache hits (Redis, in-process tier) and compression of a cached 20 KB aggregate'


def run(fleet, results):
    ports, gw_redis, user1, auth, runner = fleet.ports, fleet.gw_redis, fleet.user1, fleet.auth, fleet.runner
    log("bench: 9/15 cache hits (Redis, in-process tier) and 10/15 compression of a cached 20 KB aggregate")
    wait_metric(url(ports.metrics("gw_local"), "/metrics"), "cache_invalidation_feed_up", 1.0)
    wait_http(url(ports["gw_local"], "/api/profile/1"), token=user1)
    doc_url = url(ports["gw_redis"], "/api/doc/1")
    wait_http(doc_url, token=user1)
    sizes = {}
    for coding in ("identity", "zstd", "br", "gzip"):
        req = urllib.request.Request(doc_url, headers={"Authorization": f"Bearer {user1}", "Accept-Encoding": coding})
        with urllib.request.urlopen(req) as resp:
            sizes[coding] = len(resp.read())
    hit = lambda ae: runner(ports["gw_redis"], "/api/doc/1", gw_redis.pid, (auth, f"Accept-Encoding: {ae}"))
    cr = rounds([("profile-hit", runner(ports["gw_redis"], "/api/profile/1", gw_redis.pid, (auth,))),
                 ("plain-sized", runner(ports["gw"], "/bench/sized", fleet.gw.pid)),
                 ("local-on", runner(ports["gw_local"], "/api/profile/1", fleet.gw_local.pid, (auth,))),
                 ("zstd", hit("zstd")), ("gzip", hit("gzip")), ("identity", hit("identity"))])
    results["cache_hit"] = strip_pairs(compare(cr, "profile-hit", "plain-sized"))
    results["cache_local"] = strip_pairs(compare(cr, "local-on", "profile-hit", "local-on", "local-off"))
    results["compression"] = {"bytes": sizes,
                              "zstd": strip_pairs(compare(cr, "zstd", "identity")),
                              "gzip": strip_pairs(compare(cr, "gzip", "identity"))}


def rows(r, row):
    ch = r["cache_hit"]
    row("9 profile cache hits (Redis)", f"{ch['ratio_median']:.2f}x (min {ch['ratio_min']:.2f}, max {ch['ratio_max']:.2f})",
        ">= 0.8x plain (same body size)", clean(ch) and ch["ratio_median"] >= 0.8, detail(ch))
    cl = r.get("cache_local")
    if cl:
        row("9b profile cache hits, in-process tier on vs off", f"{cl['ratio_median']:.2f}x (min {cl['ratio_min']:.2f}, max {cl['ratio_max']:.2f})",
            ">= 1.3x off", clean(cl) and cl["ratio_median"] >= 1.3, detail(cl))
    cz = r.get("compression")
    if cz:
        b = cz["bytes"]
        for coding in ("zstd", "gzip"):
            x = cz[coding]
            row(f"10 cached 20 KB aggregate, {coding} vs identity",
                f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})", "reported", None,
                f"{coding} {x['a_rps_median']:.0f} rps, identity {x['b_rps_median']:.0f} rps; "
                f"{b[coding]} bytes vs {b['identity']} ({100 * (1 - b[coding] / b['identity']):.0f}% saved)")
