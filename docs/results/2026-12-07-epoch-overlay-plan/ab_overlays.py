"""A/B of the two overlays on a kept bench database: dashboard/queries.py at --base (a git commit) against the
working tree's, interleaved round by round, warm, as the read-only user. Checks first that both give the same frame.

    python docs/results/2026-12-07-epoch-overlay-plan/ab_overlays.py --url http://127.0.0.1:28123 --base b2e0a28 --rounds 7
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from bench.clickhouse_target import bench_clickhouse  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.dashboard import queries as new  # noqa: E402


def options(doc: str) -> argparse.ArgumentParser:
    """The options both scripts of this folder take."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="ClickHouse HTTP URL holding the kept bench database")
    parser.add_argument("--database", default="trainmon_bench", help="the kept database (default trainmon_bench)")
    parser.add_argument("--base", required=True, help="git commit whose dashboard/queries.py is the baseline")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--calls", type=int, default=11, help="warm calls per item, variant and round (default 11)")
    return parser


def base_module(commit: str) -> ModuleType:
    """dashboard/queries.py as it was at `commit`, imported apart from the working tree's."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "base_queries.py"
        source.write_text(subprocess.run(["git", "show", f"{commit}:dashboard/queries.py"], cwd=ROOT, check=True,
                                         capture_output=True, text=True).stdout)
        spec = importlib.util.spec_from_file_location("base_queries", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def overlay_data(args: argparse.Namespace) -> tuple[Any, list[str], str]:
    """(the read-only client, the overlay's runs, what the server is)."""
    settings, _, described = bench_clickhouse(args.url, args.database)
    reader = connect(settings.replace(clickhouse_user="reader", clickhouse_password=""), autogenerate_session_id=False)
    runs = [r for (r,) in reader.query("SELECT DISTINCT run FROM runs WHERE project = 'proj-big' ORDER BY run").result_rows]
    return reader, runs, described


def main() -> None:
    args = options(__doc__).parse_args()
    old = base_module(args.base)
    reader, runs, described = overlay_data(args)
    variants = {"base": old.Queries(reader), "new": new.Queries(reader)}
    a = variants["base"].series("proj-big", runs, "loss", x="epoch", points=1000)
    b = variants["new"].series("proj-big", runs, "loss", x="epoch", points=1000)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    print(f"{described}; the same frames; sources {set(b.attrs['sources'].values())}")
    medians: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, q in variants.items():
            for view, x in (("overlay_epoch", "epoch"), ("overlay", "step")):
                q.series("proj-big", runs, "loss", x=x, points=1000)
                calls = []
                for _ in range(args.calls):
                    began = time.perf_counter()
                    q.series("proj-big", runs, "loss", x=x, points=1000)
                    calls.append((time.perf_counter() - began) * 1000)
                medians.setdefault((view, name), []).append(statistics.median(calls))
    for (view, name), values in sorted(medians.items()):
        print(f"{view:<14} {name:<5} round medians ms {[round(v, 1) for v in values]}, median {statistics.median(values):.1f}")


if __name__ == "__main__":
    main()
