"""Probe: ClickHouse CPU per write with the sink's blocks pre-sorted by the table's sort key."""
import sys, statistics
sys.path.insert(0, ".")  # run from the checkout root
import bench.insert_cost as ic
from trainmon.stream_processors import sink

orig = sink.Columns.arrow
def sorted_arrow(self, types):
    t = orig(self, types)
    if "step" in t.column_names:
        return t.sort_by([(k, "ascending") for k in ("project", "run", "name", "rank", "step")])
    return t.sort_by([(k, "ascending") for k in ("host", "gpu", "name", "time")])

orig_prepare = ic.prepare
def prepare(target, variant):
    sink.Columns.arrow = sorted_arrow if variant.endswith("_sorted") else orig
    orig_prepare(target, variant.removesuffix("_sorted"))
ic.prepare = prepare
ic.VARIANTS = ("schema", "schema_sorted", "raw_only", "raw_only_sorted")
raise SystemExit(ic.main(sys.argv[1:]))
