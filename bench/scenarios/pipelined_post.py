"""Scenarios 3 and 4. Pipelined (8 GETs per write) and POST with a 1 KiB body (buffered, the
default, vs streamed, and vs nginx), the same route as 1, in one set of rounds."""

from harness import CONNS, clean, compare, detail, log, rounds, strip_pairs, url, wrk

NUMBERS = (3, 4)
TITLE = 'pipelined (depth 8) and POST 1 KiB (buffered, streamed), gateway vs nginx'


def run(fleet, results):
    ports, gw, nginx_p, origin = fleet.ports, fleet.gw, fleet.nginx_p, fleet.origin
    log("bench: 3-4/15 pipelined (depth 8) and POST 1 KiB (buffered, streamed), gateway vs nginx")
    scripted = lambda port, path, pid, script: (lambda s: wrk(url(port, path), CONNS, s, (), (pid, origin.pid), script))
    qr = rounds([("gateway-piped", scripted(ports["gw"], "/bench/json", gw.pid, "pipeline.lua")),
                 ("nginx-piped", scripted(ports["nginx"], "/json", nginx_p.pid, "pipeline.lua")),
                 ("buffered", scripted(ports["gw"], "/bench/json", gw.pid, "post.lua")),
                 ("streamed", scripted(ports["gw"], "/stream/json", gw.pid, "post.lua")),
                 ("nginx-post", scripted(ports["nginx"], "/json", nginx_p.pid, "post.lua"))])
    results["pipelined"] = strip_pairs(compare(qr, "gateway-piped", "nginx-piped", "gateway", "nginx"))
    results["post"] = {"vs_streamed": strip_pairs(compare(qr, "buffered", "streamed")),
                       "vs_nginx": strip_pairs(compare(qr, "buffered", "nginx-post", "gateway", "nginx"))}


def rows(r, row):
    pl = r.get("pipelined")
    if pl:
        row("3 pipelined (depth 8) vs nginx", f"{pl['ratio_median']:.2f}x (min {pl['ratio_min']:.2f}, max {pl['ratio_max']:.2f})",
            "reported", None,
            f"gateway {pl['a_rps_median']:.0f} rps, nginx {pl['b_rps_median']:.0f} rps; invalid runs {pl['invalid_runs']}, errors {pl['errors']}")
    po = r.get("post")
    if po:
        v = po["vs_streamed"]
        row("4 POST 1 KiB, buffered vs streamed", f"{v['ratio_median']:.2f}x (min {v['ratio_min']:.2f}, max {v['ratio_max']:.2f})",
            ">= 0.95x streamed", clean(v) and v["ratio_median"] >= 0.95, detail(v))
        n = po["vs_nginx"]
        row("4 POST 1 KiB, buffered vs nginx", f"{n['ratio_median']:.2f}x (min {n['ratio_min']:.2f}, max {n['ratio_max']:.2f})",
            "reported", None,
            f"gateway {n['a_rps_median']:.0f} rps, nginx {n['b_rps_median']:.0f} rps; invalid runs {n['invalid_runs']}, errors {n['errors']}")
