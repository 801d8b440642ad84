#!/usr/bin/env python3
"""make bench: the gateway measured side by side with nginx and HAProxy in one run.

Every process listens on 127.0.0.1 and is stopped on exit, even on failure. The proxy under test
runs alone on CPU 1; the load generator, the origins and Redis on CPU 0. Each scenario runs its
members (the gateway's variants and its peers) in interleaved rounds after a warm-up, the order
reversed every other round (A B C, C B A), and each figure judged is the median of per-round
ratios (min and max beside it): on this 2-core machine raw throughput moves +-25% between runs,
ratios much less. Sharing rounds is also what keeps the whole run near 10 minutes.

Environment: BENCH_SECONDS (per run, default 3), BENCH_PAIRS (default 4),
BENCH_TRACING_PAIRS (scenario 7's rounds, default max(8, BENCH_PAIRS)), BENCH_CONNECTIONS (default 64), OHA (path to oha).

    python3 bench/run.py          the whole bench (what `make bench` runs)
    python3 bench/run.py --list   the scenarios, in the order they run, without starting anything
    python3 bench/run.py 1 13     only the scenarios with these numbers; prints their results as
                                  JSON and leaves docs/BENCHMARKS.md alone (a quick before/after)

Layout: harness.py (settings, processes, ports, load generators, rounds), fleet.py (the processes
measured), scenarios/ (one module per scenario, in order), report.py (the table and the docs).
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios  # noqa: E402
from fleet import Fleet  # noqa: E402
from harness import CONNS, PAIRS, RESULTS, SECONDS, raise_nofile  # noqa: E402
from report import report  # noqa: E402


def main():
    if sys.argv[1:] == ["--list"]:
        for scenario in scenarios.ALL:
            print(f"{'+'.join(map(str, scenario.NUMBERS)):6s} {scenario.TITLE} ({scenario.__name__})")
        return
    only = set()
    for arg in sys.argv[1:]:
        if not arg.isdigit():
            raise SystemExit("usage: bench/run.py [--list | N ...]")
        only.add(int(arg))
    chosen = [s for s in scenarios.ALL if not only or only & set(s.NUMBERS)]
    raise_nofile()
    for tool in ("wrk", "nginx", "haproxy", "redis-server", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"bench: {tool} is missing (make bench installs it)")
    os.makedirs(RESULTS, exist_ok=True)
    fleet = Fleet().start()
    results = {"config": {"seconds": SECONDS, "pairs": PAIRS, "connections": CONNS}}
    for scenario in chosen:
        scenario.run(fleet, results)
    if only:
        import json
        print(json.dumps(results, indent=2))
        return
    report(results, scenarios.ALL)


if __name__ == "__main__":
    main()
