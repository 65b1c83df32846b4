"""Where an epoch overlay's time goes, on a kept bench database (warm, as the read-only user), with
dashboard/queries.py at --base (a git commit) beside the working tree's: each statement alone, and the
Python after the queries (the series' frame and epoch map given, so only the mapping is timed).

    python docs/results/2026-12-07-epoch-overlay-plan/probe_epoch_overlay.py --url http://127.0.0.1:28123 --base b2e0a28
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab_overlays import base_module, options, overlay_data  # noqa: E402
from trainmon.dashboard import queries as new  # noqa: E402

args = options(__doc__).parse_args()
old = base_module(args.base)
reader, runs, described = overlay_data(args)


class Recorder:
    """The client, noting each statement and its parameters."""

    def __init__(self, client):
        self.client, self.seen = client, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def query(self, sql, parameters=None, **kw):
        self.seen.append(("query", sql, parameters))
        return self.client.query(sql, parameters=parameters, **kw)

    def query_arrow(self, sql, parameters=None, **kw):
        self.seen.append(("query_arrow", sql, parameters))
        return self.client.query_arrow(sql, parameters=parameters, **kw)


def statements(module):
    """(name, kind, sql, parameters) of one epoch overlay's statements with `module`'s Queries."""
    recorder = Recorder(reader)
    module.Queries(recorder).series("proj-big", runs, "loss", x="epoch", points=1000)
    named = []
    for kind, sql, params in recorder.seen:
        name = ("hourly plan" if "FROM metric_rollup_1h" in sql and "GROUP BY run" in sql and "v_min" not in sql
                else "minute plan" if "uniqExact(toStartOfHour" in sql
                else "minute count" if sql.startswith("SELECT run, uniqExact(bucket) FROM metric_rollup_1m")
                else "epoch map" if "first_epoch" in sql else "bucket query" if "v_min" in sql else sql[:40])
        named.append((name, kind, sql, params))
    return named


def post(module):
    """The Python after the queries: _by_epoch with the series' frame (and its epoch map) given."""
    q = module.Queries(reader)
    frame = q.series("proj-big", runs, "loss", x="step", points=1000, _with_epochs=True)
    q.series = lambda *a, **k: frame  # _by_epoch changes the frame's attrs, never its data: reset them per call
    frame_attrs = frame.attrs

    def call():
        frame.attrs = dict(frame_attrs)
        q._by_epoch("proj-big", runs, "loss", points=1000)
    return call


items = {}
for label, module in (("base", old), ("new", new)):
    for name, kind, sql, params in statements(module):
        items[f"{label}: {name}"] = (lambda k=kind, s=sql, p=params: getattr(reader, k)(s, parameters=p))
    items[f"{label}: Python after the queries"] = post(module)
print(f"{described}; {len(runs)} runs")
medians: dict[str, list[float]] = {}
for _ in range(args.rounds):
    for name, call in items.items():
        call()
        calls = []
        for _ in range(args.calls):
            began = time.perf_counter()
            call()
            calls.append((time.perf_counter() - began) * 1000)
        medians.setdefault(name, []).append(statistics.median(calls))
for name, values in medians.items():
    print(f"{name:<36} round medians ms {[round(v, 1) for v in values]}, median {statistics.median(values):.1f}")
