"""The sink's columnar batch: shared columns stored once per event, expanded per row exactly."""

import math

import pytest

from trainmon.stream_processors.sink import Batch, _types
from trainmon.contract import envelope


def test_arrow_rows_carry_their_events_constants_in_order():
    batch = Batch()
    first = envelope("metrics", project="p", run="r1", rank=0, host="h0", step=7, epoch=1.5, time=1700000000.123456,
                     values={"loss": 0.5, "lr": 0.001})
    second = envelope("metrics", project="p", run="r2", rank=3, host="h1", step=8, time=1700000001.0,
                      values={"loss": 0.25, "acc": 0.9, "f1": 0.8})
    batch.add_metrics(first, "t.metrics", 2, 40)
    batch.add_metrics(second, "t.metrics", 5, 41)
    batch.add_metrics(envelope("metrics", project="p", run="r3", rank=0, host="h0", step=1, time=1.0, values={}),
                      "t.metrics", 5, 42)  # no values: no rows, but its offset still counts
    rows = batch.metric.arrow(_types()).to_pylist()
    assert [(r["run"], r["name"], r["value"], r["rank"], r["step"], r["src_partition"], r["src_offset"]) for r in rows] == [
        ("r1", "loss", 0.5, 0, 7, 2, 40), ("r1", "lr", 0.001, 0, 7, 2, 40),
        ("r2", "loss", 0.25, 3, 8, 5, 41), ("r2", "acc", 0.9, 3, 8, 5, 41), ("r2", "f1", 0.8, 3, 8, 5, 41)]
    assert rows[0]["epoch"] == 1.5 and math.isnan(rows[2]["epoch"])
    assert rows[0]["time"].timestamp() == pytest.approx(1700000000.123456, abs=1e-6)
    assert batch.values == 5 and batch.offsets == {("t.metrics", 2): 40, ("t.metrics", 5): 42}


def test_codes_and_columns_expand_shared_values_per_row():
    batch = Batch()
    for run, n in (("a", 2), ("b", 1), ("a", 3)):
        batch.add_metrics(envelope("metrics", project="p", run=run, rank=0, host="h", step=0, time=10.0,
                                   values={f"m{i}": float(i) for i in range(n)}), "t", 0, 0)
    codes, labels = batch.metric.codes("run")
    assert [labels[c] for c in codes] == ["a", "a", "b", "a", "a", "a"]
    assert list(batch.metric.column("time")) == [10.0] * 6
    assert list(batch.metric.column("value")) == [0.0, 1.0, 0.0, 0.0, 1.0, 2.0]


def test_system_sample_rows_per_host_and_gpu():
    batch = Batch()
    batch.add_system(envelope("system", host="n1", time=5.0, figures={"cpu_percent": 40.0},
                              gpus=[{"index": 0, "uuid": "GPU-0", "figures": {"util_percent": 90.0, "temp_c": 60.0}}]),
                     "t.system", 1, 9)
    rows = batch.system.arrow(_types()).to_pylist()
    assert [(r["host"], r["gpu"], r["gpu_uuid"], r["name"], r["value"]) for r in rows] == [
        ("n1", -1, "", "cpu_percent", 40.0), ("n1", 0, "GPU-0", "util_percent", 90.0), ("n1", 0, "GPU-0", "temp_c", 60.0)]
    assert batch.values == 3 and len(batch.rows["gpus"]) == 1


def test_a_refused_login_or_missing_grant_holds_the_stream_instead_of_dead_lettering() -> None:
    """A password rotated under a running worker (516) or a grant missing after a migration (497) is
    an operator's fix, like an unmigrated table (60): retried, never split into dead letters."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from trainmon.stream_processors.sink import transient

    def error(code: int, name: str) -> DatabaseError:
        return DatabaseError(f"HTTPDriver for http://127.0.0.1:8123 received ClickHouse error code {code}\n"
                             f" Code: {code}. DB::Exception: ... ({name}) (version 26.9.2.1)")

    assert transient(error(516, "AUTHENTICATION_FAILED")) and transient(error(497, "ACCESS_DENIED"))
    assert transient(error(60, "UNKNOWN_TABLE"))
    assert not transient(error(53, "TYPE_MISMATCH"))  # a value ClickHouse refuses: isolated, dead-lettered
