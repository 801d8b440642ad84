"""Scenario 2. HTTPS, same certificate (P-256) for both: keep-alive HTTP/1.1, h2, new handshakes."""

from harness import CONNS, clean, compare, h2load, log, rounds, strip_pairs, wrk

NUMBERS = (2,)
TITLE = 'HTTPS (keep-alive HTTP/1.1, h2, a new handshake per request), gateway vs nginx'


def run(fleet, results):
    ports, peers, gw, nginx_p, origin = fleet.ports, fleet.peers, fleet.gw, fleet.nginx_p, fleet.origin
    log("bench: 2/15 HTTPS (keep-alive HTTP/1.1, h2, a new handshake per request) gateway vs nginx")
    tls_url = lambda port, path: f"https://127.0.0.1:{port}{path}"
    g_tls, n_tls = tls_url(ports["gw_tls"], "/bench/json"), tls_url(ports["nginx_tls"], "/json")
    g_pids, n_pids = (gw.pid, origin.pid), (nginx_p.pid, origin.pid)
    hr = rounds([("gateway-h1", lambda s: wrk(g_tls, CONNS, s, (), g_pids)),
                 ("nginx-h1", lambda s: wrk(n_tls, CONNS, s, (), n_pids)),
                 ("gateway-h2", lambda s: h2load(g_tls, CONNS, s, g_pids)),
                 ("nginx-h2", lambda s: h2load(n_tls, CONNS, s, n_pids)),
                 ("gateway-hs", lambda s: wrk(g_tls, CONNS, s, ("Connection: close",), g_pids)),
                 ("nginx-hs", lambda s: wrk(n_tls, CONNS, s, ("Connection: close",), n_pids))]
                + ([("bare-h2", lambda s: h2load(tls_url(ports["bare_tls"], "/json"), CONNS, s,
                                                 (peers["bare"].pid, origin.pid))),
                    ("bare-hs", lambda s: wrk(tls_url(ports["bare_tls"], "/json"), CONNS, s, ("Connection: close",),
                                              (peers["bare"].pid, origin.pid)))] if "bare" in peers else []))
    results["https"] = {key: strip_pairs(compare(hr, f"gateway-{m}", f"nginx-{m}", "gateway", "nginx"))
                        for key, m in (("http1", "h1"), ("h2", "h2"), ("handshakes", "hs"))}
    if "bare" in peers:
        # The framework's floor for a new connection: Pingora's own TLS listener, no filters.
        results["https"]["handshakes_bare"] = strip_pairs(compare(hr, "bare-hs", "nginx-hs", "bare", "nginx"))
        results["https"]["handshakes_vs_bare"] = strip_pairs(compare(hr, "gateway-hs", "bare-hs", "gateway", "bare"))
        results["https"]["h2_bare"] = strip_pairs(compare(hr, "bare-h2", "nginx-h2", "bare", "nginx"))
        results["https"]["h2_vs_bare"] = strip_pairs(compare(hr, "gateway-h2", "bare-h2", "gateway", "bare"))


def rows(r, row):
    p = r["plain"]
    hs = r.get("https")
    if hs:
        plain_ratio = p["vs_nginx"]["ratio_median"]
        for key, label in (("http1", "keep-alive HTTP/1.1"), ("h2", "h2, 10 streams per connection")):
            x = hs[key]
            row(f"2 HTTPS {label} vs nginx", f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})",
                f">= plain ratio - 0.05 ({plain_ratio - 0.05:.2f}x)", clean(x) and x["ratio_median"] >= plain_ratio - 0.05,
                f"gateway {x['a_rps_median']:.0f} rps, nginx {x['b_rps_median']:.0f} rps; invalid runs {x['invalid_runs']}, errors {x['errors']}")
        x = hs["handshakes"]
        row("2 new TLS handshakes per second vs nginx", f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})",
            ">= 0.9x nginx", clean(x) and x["ratio_median"] >= 0.9,
            f"gateway {x['a_rps_median']:.0f}/s, nginx {x['b_rps_median']:.0f}/s; invalid runs {x['invalid_runs']}, errors {x['errors']}")
        for key, label in (("handshakes_bare", "new TLS handshakes, bare Pingora's vs nginx (the floor)"),
                           ("handshakes_vs_bare", "new TLS handshakes, gateway's vs bare Pingora's"),
                           ("h2_bare", "HTTPS h2, bare Pingora vs nginx (the floor)"),
                           ("h2_vs_bare", "HTTPS h2, gateway vs bare Pingora")):
            x = hs.get(key)
            if x:
                row(f"2 {label}",
                    f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})", "reported", None,
                    f"{x['a']} {x['a_rps_median']:.0f}/s, {x['b']} {x['b_rps_median']:.0f}/s; "
                    f"invalid runs {x['invalid_runs']}, errors {x['errors']}")
