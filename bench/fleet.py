"""The processes every scenario measures, started once before the first: the origins (a static
nginx, the delay-capable mocks, Redis and a Redis Cluster), the peers (nginx, HAProxy, bare
Pingora, Traefik, Caddy) and the gateway in each of its configurations, plus the tokens the
scenarios send. The scenarios read them off one `Fleet`."""

import json
import os
import shutil
import socket
import subprocess
import time

from harness import (BARE, CONNS, GATEWAY, LOAD_CPU, MOCKS, PEERS_BIN, PORTS, PROXY_CPU, SECRET, WORK, start, token,
                     url, wait_http, write, wrk)

# Scenario 7's gateways (plain conf plus tracing) and their sample ratios.
TRACED = {"gw_t0": 0.0, "gw_t10": 0.1, "gw_t100": 1.0}
# The gateways of row 6g and the algorithm of their one per-user policy.
POLICY_ALGORITHMS = {"gw_gcra": "gcra", "gw_fixed": "fixed_window"}


class Fleet:
    """Every process a scenario measures, in the order main() used to start them."""

    def __init__(self):
        self.ports = PORTS
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        # One P-256 certificate and key for the gateway's and nginx's HTTPS listeners.
        self.cert, self.key = os.path.join(WORK, "bench.crt"), os.path.join(WORK, "bench.key")

    def start(self):
        self.write_confs()
        self.start_origins()
        self.start_proxies()
        self.start_gateways()
        self.wait_ready()
        self.make_tokens()
        return self

    def write_confs(self):
        ports, cert, key = self.ports, self.cert, self.key
        small = '{"id":"1","name":"User 1","email":"user1@example.com","ok":true}'
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test",
                        "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
        os.chmod(key, 0o644)
        write(os.path.join(WORK, "origin.conf"), f"""
worker_processes 1; daemon off; pid {WORK}/origin.pid; error_log {WORK}/origin.log error;
events {{ worker_connections 8000; }}
http {{
  access_log off; keepalive_requests 100000000; keepalive_timeout 120s;
  server {{
    listen 127.0.0.1:{ports['origin']} reuseport backlog=4096;
    location = /json {{ default_type application/json; return 200 '{small}'; }}
    location = /sized {{ default_type application/json; alias {WORK}/sized.json; }}
    location = /doc20k {{ default_type application/json; alias {WORK}/doc20k.json; }}
    location = /nginx_status {{ stub_status; }}
  }}
}}
""")
        write(os.path.join(WORK, "nginx.conf"), f"""
worker_processes 1; daemon off; pid {WORK}/nginx.pid; error_log {WORK}/nginx.log error;
events {{ worker_connections 8000; }}
http {{
  access_log off; keepalive_requests 100000000;
  upstream origin {{ server 127.0.0.1:{ports['origin']}; keepalive 128; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{ports['nginx']} backlog=4096;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{ports['nginx_tls']} ssl http2 backlog=4096;
    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        write(os.path.join(WORK, "haproxy.cfg"), f"""
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:{ports['haproxy']}
  default_backend b
backend b
  server o 127.0.0.1:{ports['origin']} maxconn 1000
""")

    def gw_conf(self, name, port, metrics, cache_ttl):
        ports, cert, key = self.ports, self.cert, self.key
        tls = (f'  tls: {{ listen: "127.0.0.1:{ports["gw_tls"]}", certificates: [{{ cert: "{cert}", key: "{key}" }}] }}\n'
               if name == "gw" else "")
        # Compression only where the cached 20 KB document is served (scenario 10).
        compression = ('  compression: { algorithms: [zstd, br, gzip], min_bytes: 1024, level: default }\n'
                       if name == "gw_redis" else "")
        # Scenario 7: the plain gateway's conf with tracing on, spans to the collector mock.
        ratio = TRACED.get(name)
        if ratio is not None:
            compression += (f'  tracing: {{ enabled: true, endpoint: "http://127.0.0.1:{ports["m_otlp"]}", '
                            f'sample_ratio: {ratio} }}\n')
        # Row 6g: one per-user policy on one Redis, GCRA against the fixed window (1 per us: the
        # finest rate GCRA spaces, never reached here).
        # Row 9b: the profile's in-process tier (defaults: 10,000 entries, 2 s).
        local = ", local: {}" if name == "gw_local" else ""
        algorithm = POLICY_ALGORITHMS.get(name)
        # Scenario 13: the same conf with 1,000 routes more (500 hosts x 2 paths).
        from scenarios.routing import routes_yaml  # noqa: PLC0415 (scenarios import this module's callers)
        extra_routes = routes_yaml() if name == "gw_routes" else ""
        # Scenario 15: a split, a mirror and the other balancers, beside a plain route.
        extra_upstreams = ""
        if name == "gw_traffic":
            from scenarios.traffic import traffic_routes, traffic_upstreams  # noqa: PLC0415
            extra_upstreams = traffic_upstreams(ports["origin"])
            extra_routes = traffic_routes()
        # Scenario 16: gRPC (h2c both ways) and WebSocket routes to the protocol bench servers.
        if name == "gw_protocols":
            from scenarios.protocols import protocol_routes, protocol_upstreams  # noqa: PLC0415
            extra_upstreams = protocol_upstreams(ports)
            extra_routes = protocol_routes()
            compression += "  h2c: true\n"
        # Scenario 14: opaque tokens introspected at the mock provider, and an API keys file.
        introspection = api_keys = ""
        if name == "gw_identity":
            from scenarios.identity import keys_file  # noqa: PLC0415
            introspection = ",\n          introspection: { client_id: bench, client_secret_env: INTROSPECTION_SECRET }"
            api_keys = f'    api_keys: {{ keys_file: "{keys_file()}" }}\n'
        policies = (f"\n    policies: [{{ name: per-user, key: sub, limit: 60000000, window_seconds: 60, "
                    f"algorithm: {algorithm} }}]" if algorithm else "")
        return write(os.path.join(WORK, f"{name}.yaml"), f"""
version: 1
threads: 1
pid_file: {WORK}/{name}.pid
upgrade_sock: {WORK}/{name}.sock
gateway:
  listen: "127.0.0.1:{port}"
  metrics_listen: "127.0.0.1:{metrics}"
{tls}{compression}  services:
    docs: {{ url: "http://127.0.0.1:{ports['origin']}" }}
    user: {{ url: "http://127.0.0.1:{ports['m_user']}" }}
    order: {{ url: "http://127.0.0.1:{ports['m_order']}" }}
    product: {{ url: "http://127.0.0.1:{ports['m_product']}" }}
    recommendation: {{ url: "http://127.0.0.1:{ports['m_rec']}" }}
  auth:
    public_paths: ["/healthz", "/readyz", "/bench/", "/stream/"]
    issuers:
      - {{ issuer: "http://127.0.0.1:{ports['m_idp']}", discovery: true, allow_insecure_http: true,
          audiences: [gateway], algorithms: [RS256, ES256, EdDSA]{introspection} }}
{api_keys}  rate_limit:
    per_minute: 1000000000
    window_seconds: 60{policies}
  aggregates:
    - name: profile
      path: "/api/profile/{{id}}"
      authorize: {{ param: id, claim: sub, bypass_roles: [admin], me: true }}
      cache: {{ ttl_seconds: {cache_ttl}, key: "profile:{{id}}"{local} }}
      legs:
        user:            {{ service: user,  path: "/users/{{id}}", required: true, expect: object }}
        orders:          {{ service: order, path: "/orders/user/{{user.id}}", default: [], expect: array }}
        products:        {{ service: product, path: "/products", after: [user], default: [], expect: array }}
        recommendations: {{ service: recommendation, path: "/recommendations/{{id}}", after: [user], default: [], expect: array }}
    - name: doc
      path: "/api/doc/{{id}}"
      cache: {{ ttl_seconds: {cache_ttl}, key: "doc:{{id}}" }}
      legs:
        doc: {{ service: docs, path: "/doc20k", required: true, expect: object }}
  upstreams:
    origin:
      backends: ["127.0.0.1:{ports['origin']}"]
      health_check: {{ kind: tcp, interval_ms: 60000 }}
{extra_upstreams}  # The memory scenario holds 10,000 connections from one address.
  limits: {{ max_connections_per_ip: 0 }}
  routes:
    - {{ prefix: "/bench/", upstream: origin, strip_prefix: "/bench" }}
    - {{ prefix: "/edge/", upstream: origin, strip_prefix: "/edge" }}
    - {{ prefix: "/stream/", upstream: origin, strip_prefix: "/stream", request_body_buffer_bytes: 0 }}
{extra_routes}""")

    def gateway(self, proc_name, name, cache_ttl, env):
        """Gateway `name` (its conf, its port and metrics port) on the proxy core, as process `proc_name`."""
        return start(proc_name, [GATEWAY, "-c", self.gw_conf(name, self.ports[name], self.ports.metrics(name), cache_ttl)],
                     PROXY_CPU, env)

    def start_origins(self):
        """The mocks, the 20 KB document, the static origin and Redis, on the generator core."""
        ports = self.ports
        self.svc_env = {
            "USER_SERVICE_URL": f"http://127.0.0.1:{ports['m_user']}",
            "ORDER_SERVICE_URL": f"http://127.0.0.1:{ports['m_order']}",
            "PRODUCT_SERVICE_URL": f"http://127.0.0.1:{ports['m_product']}",
            "RECOMMENDATION_SERVICE_URL": f"http://127.0.0.1:{ports['m_rec']}",
            "JWT_SECRET": SECRET, "RUST_LOG": "warn",
        }
        self.mocks = start("mocks", [MOCKS, "--user-port", str(ports["m_user"]), "--order-port", str(ports["m_order"]),
                                     "--product-port", str(ports["m_product"]), "--recommendation-port", str(ports["m_rec"]),
                                     "--idp-port", str(ports["m_idp"]),
                                     "--services", "user,order,product,recommendation,idp"], LOAD_CPU)
        for k in ("m_user", "m_order", "m_product", "m_rec", "m_idp"):
            wait_http(f"http://127.0.0.1:{ports[k]}/healthz")
        # A 20 KB JSON document shaped like an API answer (repeated keys, varying values).
        items = [{"id": i, "sku": f"p-{i * 7919 % 10007}", "name": f"Product {i}", "qty": i % 13,
                  "price": round((i * 37 % 500) + 0.99, 2), "tags": ["a", "b"][: i % 3]} for i in range(400)]
        text = json.dumps({"items": items})
        while len(text) > 20000:
            items.pop()
            text = json.dumps({"items": items})
        write(os.path.join(WORK, "doc20k.json"), text)
        self.origin = start("origin", [self.nginx, "-c", os.path.join(WORK, "origin.conf")], LOAD_CPU)
        self.redis = start("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], LOAD_CPU)

    def start_proxies(self):
        """nginx, the peers (bare Pingora, Traefik, Caddy) and HAProxy, on the proxy core."""
        self.nginx_p = start("nginx", [self.nginx, "-c", os.path.join(WORK, "nginx.conf")], PROXY_CPU)
        self.peers = start_peers(self.ports, self.cert, self.key)
        self.haproxy_p = start("haproxy", [self.haproxy, "-f", os.path.join(WORK, "haproxy.cfg")], PROXY_CPU)

    def start_gateways(self):
        ports, svc_env = self.ports, self.svc_env
        redis_env = dict(svc_env, REDIS_ADDR=f"127.0.0.1:{ports['redis']}")
        self.gw = self.gateway("gateway", "gw", 0, svc_env)
        self.gw_redis = self.gateway("gateway-redis", "gw_redis", 30, redis_env)
        self.collector = start("collector", [MOCKS, "--services", "collector", "--collector-port", str(ports["m_otlp"])],
                               LOAD_CPU)
        wait_http(f"http://127.0.0.1:{ports['m_otlp']}/healthz")
        self.traced = {name: self.gateway(name, name, 0, svc_env) for name in TRACED}
        # Scenario 7's baseline: the traced gateways' conf without the tracing block, its own process.
        self.twin = self.gateway("gw_toff", "gw_toff", 0, svc_env)
        # A Redis Cluster (3 masters, 3 replicas) on the generator core, for the edge checks' row 6c.
        cluster_ports = start_cluster()
        self.gw_cluster = self.gateway("gateway-cluster", "gw_cluster", 30,
                                       dict(svc_env, REDIS_CLUSTER_NODES=",".join(f"127.0.0.1:{p}" for p in cluster_ports)))
        self.policy_gws = {name: self.gateway(name, name, 30, redis_env)
                           for name in POLICY_ALGORITHMS}
        self.gw_local = self.gateway("gateway-local", "gw_local", 30, redis_env)

    def wait_ready(self):
        ports = self.ports
        for p in ("gw", "gw_redis", "gw_cluster", "gw_local") + tuple(TRACED) + ("gw_toff",) + tuple(POLICY_ALGORITHMS):
            wait_http(f"http://127.0.0.1:{ports[p]}/readyz")
        wait_http(f"http://127.0.0.1:{ports['origin']}/json")
        wait_http(f"http://127.0.0.1:{ports['nginx']}/json")
        wait_http(f"http://127.0.0.1:{ports['haproxy']}/json")

    def make_tokens(self):
        """The tokens the scenarios send, and the plain body sized like the cached profile document."""
        ports = self.ports
        self.admin = token("bench", ["admin"])
        self.user1 = token("1")
        self.auth = f"Authorization: Bearer {self.user1}"
        # Size the plain body like the cached profile document.
        doc = wait_http(f"http://127.0.0.1:{ports['gw_redis']}/api/profile/1", token=self.user1)
        wait_http(f"http://127.0.0.1:{ports['gw_redis']}/api/profile/1", token=self.user1)
        write(os.path.join(WORK, "sized.json"), "x" * len(doc))

    def runner(self, port, path, pid, headers=()):
        """One member of a scenario's rounds: wrk on `url(port, path)`, CPU counted for `pid` and the origin."""
        return lambda s: wrk(url(port, path), CONNS, s, headers, (pid, self.origin.pid))

def start_peers(ports, cert, key):
    """Bare Pingora (with a TLS listener on `cert`, the handshake row's floor), Traefik and
    Caddy on the proxy core, one thread each, access logs off; each one only if its binary is
    there."""
    out = {}
    origin = f"127.0.0.1:{ports['origin']}"
    if os.path.exists(BARE):
        out["bare"] = start("bare-pingora", [BARE, f"127.0.0.1:{ports['bare']}", origin,
                                             f"127.0.0.1:{ports['bare_tls']}", cert, key], PROXY_CPU)
    go = {"GOMAXPROCS": "1"}
    traefik = os.path.join(PEERS_BIN, "traefik")
    if os.path.exists(traefik):
        dyn = write(os.path.join(WORK, "traefik-dyn.yml"), f"""
http:
  routers:
    all: {{ rule: "PathPrefix(`/`)", service: origin, entryPoints: [web] }}
    limited: {{ rule: "PathPrefix(`/limited/`)", service: origin, entryPoints: [web], middlewares: [limit, strip] }}
  middlewares:
    # Per client address (Traefik's default source), a budget never reached: the check's cost only.
    limit: {{ rateLimit: {{ average: 1000000000, burst: 1000000000 }} }}
    strip: {{ stripPrefix: {{ prefixes: ["/limited"] }} }}
  services: {{ origin: {{ loadBalancer: {{ servers: [ {{ url: "http://{origin}" }} ] }} }} }}
""")
        static = write(os.path.join(WORK, "traefik.yml"), f"""
entryPoints: {{ web: {{ address: "127.0.0.1:{ports['traefik']}" }} }}
providers: {{ file: {{ filename: "{dyn}" }} }}
log: {{ level: ERROR }}
global: {{ checkNewVersion: false, sendAnonymousUsage: false }}
""")
        out["traefik"] = start("traefik", [traefik, f"--configFile={static}"], PROXY_CPU, go)
    caddy = os.path.join(PEERS_BIN, "caddy")
    if os.path.exists(caddy):
        caddyfile = write(os.path.join(WORK, "Caddyfile"), f"""{{
  admin off
  auto_https off
  persist_config off
}}
http://127.0.0.1:{ports['caddy']} {{
  bind 127.0.0.1
  reverse_proxy {origin}
}}
""")
        out["caddy"] = start("caddy", [caddy, "run", "--config", caddyfile, "--adapter", "caddyfile"], PROXY_CPU,
                             dict(go, HOME=WORK, XDG_DATA_HOME=WORK, XDG_CONFIG_HOME=WORK))
    for name in out:
        wait_http(f"http://127.0.0.1:{ports[name]}/json")
    return out


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout


def start_cluster():
    """Six cluster-enabled redis-servers (bus ports +10000 free too) joined with redis-cli."""
    ports = []
    while len(ports) < 6:
        p = PORTS.free()
        if p + 10000 >= 65536:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        PORTS.reserve(p + 10000)
        start(f"redis-cluster-{p}", ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--cluster-enabled", "yes", "--dir", WORK,
                                     "--cluster-config-file", f"nodes-{p}.conf"], LOAD_CPU)
        ports.append(p)
    deadline = time.time() + 20
    while not all(redis_cli(p, "PING").strip() == "PONG" for p in ports):
        if time.time() > deadline:
            raise SystemExit("bench: redis cluster nodes did not start")
        time.sleep(0.05)
    r = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench: redis-cli --cluster create failed: {r.stdout[-400:]}{r.stderr[-400:]}")
    while not all("cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in ports):
        if time.time() > deadline + 20:
            raise SystemExit("bench: the redis cluster did not become ready")
        time.sleep(0.05)
    return ports

