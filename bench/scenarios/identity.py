"""Scenario 14. The ways in besides HS256, on their own gateway (`gw_identity`: the mock identity
provider's keys and introspection endpoint, and an API keys file): a flood of forged RS256 tokens
(a published kid, a signature that does not verify: every request pays a verification and is
refused), an opaque token answered from the introspection cache against a cached HS256 token,
and an API key against the same HS256 token."""

import base64
import hashlib
import json
import os
import time

from harness import CONNS, WORK, clean, compare, detail, log, mint, rounds, strip_pairs, url, wait_http, wrk

NUMBERS = (14,)
TITLE = "identity: forged RS256 flood; introspection and API keys vs HS256"

API_KEY = "gw_bench-key-for-scenario-14-only"


def keys_file():
    """The API keys file of `gw_identity` (one key, its SHA-256 only)."""
    path = os.path.join(WORK, "api-keys.yaml")
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    with open(path, "w") as f:
        f.write(f'keys:\n  - {{ sha256: "{digest}", sub: bench, roles: [reader], scopes: [api] }}\n')
    return path


def forged(idp_port):
    """An RS256 token of the mock provider with its last signature bytes changed."""
    good = mint(idp_port, "RS256", "flood")
    head, body, sig = good.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-1] ^= 0xFF
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def run(fleet, results):
    ports = fleet.ports
    log("bench: 14/15 identity: forged RS256 flood; introspection and API keys vs HS256")
    env = dict(fleet.svc_env, INTROSPECTION_SECRET="bench")
    gw = fleet.gateway("gateway-identity", "gw_identity", 0, env)
    base = f"http://127.0.0.1:{ports['gw_identity']}"
    wait_http(f"{base}/readyz")
    hs = fleet.auth
    members = [
        ("hs256", lambda s: wrk(url(ports["gw_identity"], "/edge/json"), CONNS, s, (hs,), (gw.pid,))),
        ("opaque", lambda s: wrk(url(ports["gw_identity"], "/edge/json"), CONNS, s,
                                 ("Authorization: Bearer opaque-bench",), (gw.pid,))),
        ("apikey", lambda s: wrk(url(ports["gw_identity"], "/edge/json"), CONNS, s,
                                 (f"X-Api-Key: {API_KEY}",), (gw.pid,))),
    ]
    rr = rounds(members)
    out = {"opaque": strip_pairs(compare(rr, "opaque", "hs256", "introspected (cached)", "HS256 (cached)")),
           "apikey": strip_pairs(compare(rr, "apikey", "hs256", "API key", "HS256 (cached)"))}
    # The flood: every answer a 401 after a full RS256 verification (failures are not cached).
    token = forged(ports["m_idp"])
    flood = wrk(url(ports["gw_identity"], "/edge/json"), CONNS, 5, (f"Authorization: Bearer {token}",), (gw.pid,))
    cpu = flood["cpu_s"][gw.pid]
    out["flood"] = {"rps": flood["rps"], "requests": flood["requests"], "refused": flood["non2xx"],
                    "errors": flood["errors"], "cpu_s": cpu,
                    "us_per_request": cpu * 1e6 / flood["requests"] if flood["requests"] else 0.0,
                    "valid": flood["valid"]}
    results["identity"] = out


def rows(r, row):
    x = r.get("identity")
    if not x:
        for name in ("14a forged RS256 flood, refused/s", "14b introspected vs HS256", "14c API key vs HS256"):
            row(name, "not run", "", None)
        return
    f = x["flood"]
    row("14a forged RS256 flood (one core), refused/s",
        f"{f['rps']:,.0f}/s, {f['us_per_request']:.1f} us CPU each ({f['refused']:,} of {f['requests']:,} answered 401)",
        ">= 20,000/s", f["valid"] and f["rps"] >= 20000 and f["refused"] == f["requests"])
    for key, name in (("opaque", "14b introspected (cached) vs HS256 (cached)"), ("apikey", "14c API key vs HS256 (cached)")):
        c = x[key]
        row(name, f"{c['ratio_median']:.2f}x (min {c['ratio_min']:.2f}, max {c['ratio_max']:.2f})",
            ">= 0.95x", clean(c) and c["ratio_median"] >= 0.95, detail(c))
