"""Scenario 8. Aggregation, cache off: legs of 20 ms, then 50/80/120 ms (ideal 140 ms) at 200 req/s."""

import json
import urllib.request

from harness import SECONDS, log, oha, url

NUMBERS = (8,)
TITLE = 'aggregation (user 20 ms, then 50/80/120 ms)'


def run(fleet, results):
    ports = fleet.ports
    log("bench: 8/15 aggregation (user 20 ms, then 50/80/120 ms)")
    for svc, port, ms in (("user", "m_user", 20), ("order", "m_order", 50), ("product", "m_product", 80),
                          ("recommendation", "m_rec", 120)):
        req = urllib.request.Request(url(ports[port], "/__faults"), data=json.dumps({"delay_ms": ms}).encode(),
                                     method="PUT", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()
    agg = oha(url(ports["gw"], "/api/profile/[1-9][0-9]{0,2}"), 200, 64, max(SECONDS, 5),
              (f"Authorization: Bearer {fleet.admin}",), rand_url=True)
    results["aggregation"] = {"ideal_ms": 140, "result": agg}
    for port in ("m_user", "m_order", "m_product", "m_rec"):
        urllib.request.urlopen(urllib.request.Request(url(ports[port], "/__faults"), method="DELETE")).read()


def rows(r, row):
    agg = r["aggregation"]["result"]
    if agg:
        ok = agg["p50_us"] <= 141500 and agg["p99_us"] <= 144000 and agg["errors"] == 0 and agg["non2xx"] == 0
        row("8 aggregation at 200 req/s, 64 conns", f"p50 {agg['p50_us']/1000:.1f} ms, p99 {agg['p99_us']/1000:.1f} ms",
            "p50 <= 141.5, p99 <= 144 ms, 0 errors", ok, f"errors {agg['errors']}, non-2xx {agg['non2xx']}")
    else:
        row("8 aggregation", "oha unavailable", "p50 <= 141.5, p99 <= 144 ms", None)
