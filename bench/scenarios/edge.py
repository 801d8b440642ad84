"""Scenario 6. Edge checks on (HS256 + limit): embedded, one Redis, a Cluster, an RS256 token, a
per-user GCRA policy against the same fixed-window one, and Traefik with its rate-limit
middleware beside its plain route; then one token verification's cost when the verified-token
cache cannot help."""

import json
import time

from harness import SECRET, clean, compare, detail, log, mint, proc_cpu, rounds, strip_pairs

NUMBERS = (6,)
TITLE = "edge checks (embedded, Redis, Cluster, RS256, GCRA; Traefik's rate limit)"


def run(fleet, results):
    ports, peers, gw, auth, runner = fleet.ports, fleet.peers, fleet.gw, fleet.auth, fleet.runner
    log("bench: 6/15 edge checks (embedded, Redis, Cluster, RS256, GCRA, tracing; Traefik's rate limit)")
    rs = f"Authorization: Bearer {mint(ports['m_idp'], 'RS256', '1')}"
    edge_members = [("plain", runner(ports["gw"], "/bench/json", gw.pid)),
                    ("edge-memory", runner(ports["gw"], "/edge/json", gw.pid, (auth,))),
                    ("edge-redis", runner(ports["gw_redis"], "/edge/json", fleet.gw_redis.pid, (auth,))),
                    ("edge-cluster", runner(ports["gw_cluster"], "/edge/json", fleet.gw_cluster.pid, (auth,))),
                    ("edge-rs256", runner(ports["gw"], "/edge/json", gw.pid, (rs,))),
                    ("edge-gcra", runner(ports["gw_gcra"], "/edge/json", fleet.policy_gws["gw_gcra"].pid, (auth,))),
                    ("edge-fixed", runner(ports["gw_fixed"], "/edge/json", fleet.policy_gws["gw_fixed"].pid, (auth,)))]
    if "traefik" in peers:
        t = peers["traefik"].pid
        edge_members += [("traefik-plain", runner(ports["traefik"], "/json", t)),
                         ("traefik-limit", runner(ports["traefik"], "/limited/json", t))]
    er = rounds(edge_members)
    results["edge"] = {"memory": strip_pairs(compare(er, "edge-memory", "plain")),
                       "redis": strip_pairs(compare(er, "edge-redis", "plain")),
                       "cluster": strip_pairs(compare(er, "edge-cluster", "edge-redis")),
                       "gcra": strip_pairs(compare(er, "edge-gcra", "edge-fixed")),
                       "rs256": strip_pairs(compare(er, "edge-rs256", "edge-memory", "edge-rs256", "edge-hs256"))}
    if "traefik" in peers:
        results["edge"]["traefik"] = {"limit_vs_plain": strip_pairs(compare(er, "traefik-limit", "traefik-plain")),
                                      "gateway_vs_traefik": strip_pairs(compare(er, "edge-memory", "traefik-limit"))}
    results["edge"]["uncached_us"] = {alg: per_token_cost(ports["gw"], gw.pid, toks)
                                      for alg, toks in fresh_tokens(ports["m_idp"]).items()}


UNCACHED_TOKENS = 1000


def fresh_tokens(idp_port):
    """UNCACHED_TOKENS distinct tokens per algorithm (HS256 signed here with the shared secret)."""
    import base64, hashlib, hmac
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    def hs(sub):
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 7200}).encode())
        sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64(sig)}"
    out = {"HS256": [hs(f"u{i}") for i in range(UNCACHED_TOKENS)]}
    for alg in ("RS256", "ES256", "EdDSA"):
        out[alg] = [mint(idp_port, alg, f"u{i}") for i in range(UNCACHED_TOKENS)]
    return out


def per_token_cost(port, pid, tokens):
    """Gateway CPU per request with every token new minus the same with one token repeated:
    what one verification costs when the verified-token cache cannot help (us)."""
    import http.client
    def run(seq):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        before = proc_cpu(pid)
        for t in seq:
            conn.request("GET", "/edge/json", headers={"Authorization": f"Bearer {t}"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"bench: uncached token answered {r.status}")
        spent = proc_cpu(pid) - before
        conn.close()
        return spent * 1e6 / len(seq)
    repeated = run([tokens[0]] * len(tokens))
    unique = run(tokens)
    return {"unique_us_per_req": unique, "repeated_us_per_req": repeated, "verify_us": unique - repeated}



def rows(r, row):
    e = r["edge"]
    row("6 edge checks, Redis", f"{e['redis']['ratio_median']:.2f}x (min {e['redis']['ratio_min']:.2f}, max {e['redis']['ratio_max']:.2f})",
        ">= 0.95x plain", clean(e["redis"]) and e["redis"]["ratio_median"] >= 0.95, detail(e["redis"]))
    row("6 edge checks, embedded", f"{e['memory']['ratio_median']:.2f}x (min {e['memory']['ratio_min']:.2f}, max {e['memory']['ratio_max']:.2f})",
        ">= 0.95x plain", clean(e["memory"]) and e["memory"]["ratio_median"] >= 0.95, detail(e["memory"]))
    c3 = e.get("cluster")
    if c3:
        row("6 edge checks, Redis Cluster vs one Redis", f"{c3['ratio_median']:.2f}x (min {c3['ratio_min']:.2f}, max {c3['ratio_max']:.2f})",
            ">= 0.95x one Redis", clean(c3) and c3["ratio_median"] >= 0.95, detail(c3))
    g3 = e.get("gcra")
    if g3:
        row("6 per-user policy, GCRA vs fixed window", f"{g3['ratio_median']:.2f}x (min {g3['ratio_min']:.2f}, max {g3['ratio_max']:.2f})",
            ">= 0.95x fixed window", clean(g3) and g3["ratio_median"] >= 0.95, detail(g3))
    t3 = e.get("traefik")
    if t3:
        x, y = t3["limit_vs_plain"], t3["gateway_vs_traefik"]
        row("6 Traefik rate-limit middleware vs its plain route", f"{x['ratio_median']:.2f}x (min {x['ratio_min']:.2f}, max {x['ratio_max']:.2f})",
            "reported (gateway embedded: see above)", None, f"{detail(x)}; limit only: Traefik has no JWT check built in")
        row("6 edge checks (HS256 + limit) vs Traefik's limit alone", f"{y['ratio_median']:.2f}x (min {y['ratio_min']:.2f}, max {y['ratio_max']:.2f})",
            ">= 1.5x (plain target)", clean(y) and y["ratio_median"] >= 1.5, detail(y))
    k = e.get("rs256")
    if k:
        row("6 edge checks, RS256 (cached) vs HS256", f"{k['ratio_median']:.2f}x (min {k['ratio_min']:.2f}, max {k['ratio_max']:.2f})",
            ">= 0.95x HS256", clean(k) and k["ratio_median"] >= 0.95, detail(k))
        u = e["uncached_us"]
        ok = u["RS256"]["verify_us"] <= 40 and u["ES256"]["verify_us"] <= 80
        row("6 one verification, uncached (CPU)", ", ".join(f"{a} {u[a]['verify_us']:.0f} us" for a in u),
            "RS256 <= 40 us, ES256 <= 80 us", ok,
            f"{UNCACHED_TOKENS} distinct tokens each, sequential, CPU per request minus a repeated token's")
