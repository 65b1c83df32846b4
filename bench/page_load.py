"""Dashboard page load, from navigation to fully rendered, in headless Chromium. Goal: < 2 s per page.

Starts `trainmon dashboard` on a free loopback port against ClickHouse (--url, else the settings: the
local engine), in a database of its own (default `trainmon_bench_pages`) migrated and seeded with
tests/dashboard_seed.py (4 runs, 4 nodes x 4 GPUs for 30 minutes, alerts); the pages read it as the
read-only `reader` user. Then loads each page in one headless Chromium (Debian's `chromium`), once to
warm up and --loads times more, and reports per page the median, min and max milliseconds.

"Fully rendered" (tests/headless.py): Streamlit's script has finished (`data-test-script-state` is
`notRunning`), the page shows its expected text, no element is a loading skeleton and every chart has
drawn its marks. Each load is a new browser session (a new Streamlit session over a new websocket).
By default each load waits out the dashboard's query cache (5 s TTL) first, so every load runs its
ClickHouse queries; --warm-cache skips that wait.

    python bench/page_load.py [--url http://127.0.0.1:8123] [--loads 5] [--warm-cache] [--json PATH]
    python bench/page_load.py --database trainmon_bench --no-seed   # a database bench/queries.py --keep left
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clickhouse_target import bench_clickhouse  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from trainmon.deploy.migrate import migrate  # noqa: E402
from tests import dashboard_seed as seed  # noqa: E402
from tests.headless import Chromium, Dashboard  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402

GOAL_MS = 2000.0
TTL_S = 5  # dashboard/components.py TTL_S: how long the pages reuse a query's answer
PAGES = [  # name, path and query, text the rendered page shows (seeded data), charts it draws
    ("runs", "", ["Runs shown"], 0),
    ("run", f"run?project={seed.PROJECT}&run={seed.LIVE_RUN}", [seed.LIVE_RUN, "Learning rate"], 4),
    ("compare", f"compare?project={seed.PROJECT}&runs={seed.LIVE_RUN},{seed.DONE_RUN},{seed.FAILED_RUN}",
     ["Config: what differs", "Hyperparameters vs a final metric"], 2),
    ("cluster", "cluster", ["Silent nodes", "Nodes"], 1),
    ("alerts", "alerts", ["Firing now", "Deliveries"], 1),
    ("host", f"host?host={seed.HOT[0]}", [f"Host {seed.HOT[0]}", "Firing on this host"], 4),
]
UNSEEDED = {"runs": ["Runs"], "run": ["Metrics"], "compare": ["Compare runs"], "cluster": ["Cluster"],
            "alerts": ["Firing now"], "host": ["Host"]}


def unseeded_pages(client: Any) -> list[tuple[str, str, list[str], int]]:
    """Pages on a database the benchmark did not seed (bench/queries.py --keep): the run and compare
    pages open its runs with the most metric points, the host page its first node."""
    biggest = client.query("SELECT project, run FROM metric_rollup_1m GROUP BY project, run "
                           "ORDER BY sum(count) DESC LIMIT 3").result_rows
    hosts = client.query("SELECT host FROM system_latest ORDER BY host LIMIT 1").result_rows
    pages = [(name, path.split("?")[0], UNSEEDED[name], 0) for name, path, _, _ in PAGES]
    by_name = {page[0]: page for page in pages}
    if biggest:
        project, run = biggest[0]
        by_name["run"] = ("run", f"run?{urlencode({'project': project, 'run': run})}", ["Loss"], 1)
        same = [r for p, r in biggest if p == project]
        by_name["compare"] = ("compare", f"compare?{urlencode({'project': project, 'runs': ','.join(same)})}",
                              ["Compare runs"], 1)
    if hosts:
        host = hosts[0][0]
        by_name["host"] = ("host", f"host?{urlencode({'host': host})}", [f"Host {host}"], 4)
    return [by_name[name] for name, *_ in pages]


def say(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="ClickHouse HTTP URL (default: from the settings, the local engine)")
    parser.add_argument("--database", default="trainmon_bench_pages", help="database (default trainmon_bench_pages)")
    parser.add_argument("--read-user", default="reader", help="ClickHouse user the dashboard reads as (default reader)")
    parser.add_argument("--loads", type=int, default=5, help="timed loads per page after one warm-up (default 5)")
    parser.add_argument("--warm-cache", action="store_true",
                        help=f"do not wait out the {TTL_S} s query cache between loads")
    parser.add_argument("--no-seed", action="store_true",
                        help="use the database as it is (pages open on their default selection)")
    parser.add_argument("--pages", default=",".join(p[0] for p in PAGES),
                        help="comma-separated pages to time (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database afterwards")
    parser.add_argument("--screenshots", metavar="DIR", help="save each page's last load as DIR/<page>.png")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, loads=1)

    settings, admin, described = bench_clickhouse(args.url, args.database)
    say(f"{described}, load average {os.getloadavg()[0]:.1f}")
    seeded = not args.no_seed
    if seeded:
        admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")
        migrate(settings, progress=lambda message: None)
        client = connect(settings)
        seed.seed(client)
        client.close()
        say("seeded: 4 runs, 4 nodes x 4 GPUs (30 min), 4 alerts")
    pages = PAGES if seeded else unseeded_pages(connect(settings))
    wanted = set(args.pages.split(","))
    pages = [page for page in pages if page[0] in wanted]
    env = {"TRAINMON_CLICKHOUSE_URL": settings.clickhouse, "TRAINMON_CLICKHOUSE_DATABASE": args.database,
           "TRAINMON_DASHBOARD_CLICKHOUSE_USER": args.read_user, "TRAINMON_DASHBOARD_REFRESH_S": "0"}
    results: dict[str, dict] = {}
    try:
        with Dashboard(env) as dashboard, Chromium() as browser:
            say(f"dashboard at {dashboard.url}; one warm-up load, then {args.loads} per page"
                + ("" if args.warm_cache else f", each after the {TTL_S} s query cache expired"))
            for name, path, expect, charts in pages:
                url = f"{dashboard.url}/{path}"
                browser.load(url, expect, timeout=60, charts=charts)
                times = []
                for _ in range(args.loads):
                    if not args.warm_cache:
                        time.sleep(TTL_S + 0.5)
                    rendered = browser.load(url, expect, timeout=60, charts=charts)
                    if rendered.exceptions:
                        raise RuntimeError(f"{name}: the page shows an exception:\n{rendered.text[-1500:]}")
                    times.append(rendered.ms)
                if args.screenshots:
                    browser.screenshot(Path(args.screenshots) / f"{name}.png")
                results[name] = {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
                                 "loads_ms": [round(t, 1) for t in times], "charts": rendered.charts,
                                 "load_average_1m": round(os.getloadavg()[0], 2)}
                r = results[name]
                say(f"  {name}: median {r['median_ms']:.0f} ms (min {r['min_ms']:.0f}, max {r['max_ms']:.0f}), "
                    f"{r['charts']} chart(s); machine load average {r['load_average_1m']:.1f}")
    finally:
        if seeded and not args.keep:
            admin.command(f"DROP DATABASE IF EXISTS {args.database} SYNC")

    say("")
    say(f"{'page':<10}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'load avg':>10}  goal < {GOAL_MS:.0f} ms")
    for name, r in results.items():
        met = "ok" if r["median_ms"] < GOAL_MS else "MISSED"
        say(f"{name:<10}{r['median_ms']:>11.0f}{r['min_ms']:>9.0f}{r['max_ms']:>9.0f}{r['load_average_1m']:>10.1f}  {met}")
    say(f"({os.cpu_count()} CPUs; Chromium, the dashboard and ClickHouse share them with whatever else runs here)")
    if args.json:
        figures = {"goal_ms": GOAL_MS, "loads": args.loads, "warm_cache": args.warm_cache, "seeded": seeded,
                   "clickhouse_version": admin.server_version, "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
                   **{f"{name}_median_ms": round(r["median_ms"], 1) for name, r in results.items()},
                   "pages": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
