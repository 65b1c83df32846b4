"""The importers without ClickHouse: TensorBoard logs written by tensorboardX, MLflow stores laid out
as MLflow 3.18 writes them (file store and SQLite), their contract events, and the loader's rows."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IN_CI
from trainmon.agent.importers import load, mlflow, tensorboard
from trainmon.agent.importers.run import ImportedRun, number
from trainmon.contract import decode, encode

T0 = 1_700_000_000.0  # 2023-11-14: older than anything a live clock would give


def needs_tensorboardx() -> None:
    """tensorboardX writes the logs (the `import` and `test` extras): skipped without it, but not under CI."""
    if not IN_CI:
        pytest.importorskip("tensorboardX")


def tensor_scalar(tag: str, value: float, *, double: bool = False):
    """A scalar as TF2's tf.summary.scalar writes it: a one-element tensor of the scalars plugin (float_val
    for DT_FLOAT, tensor_content for DT_DOUBLE)."""
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.proto.tensor_pb2 import TensorProto

    tensor = (TensorProto(dtype=2, tensor_content=np.array([value], "<f8").tobytes()) if double
              else TensorProto(dtype=1, float_val=[value]))
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    return Summary(value=[Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])


def write_log(directory: Path, *, restart: bool = False) -> None:
    """loss as simple_value, acc and lr as one-element tensors (TF2's way), a NaN, hparams in the same run;
    restart: a second writer (a resumed job) logging steps 3 and 4 again, later."""
    needs_tensorboardx()
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    writer = SummaryWriter(str(directory), filename_suffix=".a")
    for step in range(5):
        writer.add_scalar("train/loss", 1 / (step + 1), step, walltime=T0 + step)
        writer.file_writer.add_summary(tensor_scalar("acc", step / 10), step, walltime=T0 + step + 0.5)
        writer.file_writer.add_summary(tensor_scalar("lr", 0.1 / 3 ** step, double=True), step,
                                       walltime=T0 + step + 0.5)
    writer.add_scalar("train/loss", math.nan, 5, walltime=T0 + 5)
    for summary in hparams({"lr": 0.1, "optimizer": "adam", "amp": True}, {"hparam/acc": 0.4}):
        writer.file_writer.add_summary(summary, walltime=T0)
    writer.close()
    if restart:
        again = SummaryWriter(str(directory), filename_suffix=".b")
        for step in (3, 4):
            again.add_scalar("train/loss", 10.0 + step, step, walltime=T0 + 100 + step)
        again.close()


def test_a_tensorboardx_log_reads_back_with_its_steps_wall_times_values_and_hparams(tmp_path: Path) -> None:
    write_log(tmp_path / "lr0.1")
    (run,) = tensorboard.read(tmp_path, project="vision")
    assert (run.project, run.name, run.status) == ("vision", "lr0.1", "finished")
    assert run.config == {"lr": 0.1, "optimizer": "adam", "amp": True}
    kept = run.latest()
    for step in range(5):
        assert kept[("train/loss", step)] == (T0 + step, float(np.float32(1 / (step + 1))))  # float32 on disk
        assert kept[("acc", step)] == (T0 + step + 0.5, float(np.float32(step / 10)))
        assert kept[("lr", step)] == (T0 + step + 0.5, 0.1 / 3 ** step)  # a double stays exact
    assert math.isnan(kept[("train/loss", 5)][1])
    assert run.started == T0 and run.host  # the writer's host, from the file name


def test_every_event_is_a_valid_contract_event_in_time_order(tmp_path: Path) -> None:
    write_log(tmp_path)
    (run,) = tensorboard.read(tmp_path, project="p")
    events = [decode(encode(event)) for event in run.events()]  # as the processors would read them
    assert [e["kind"] for e in (events[0], events[-1])] == ["run_start", "run_end"]
    assert events[0]["config"]["lr"] == 0.1 and events[0]["code"]["imported_from"].startswith("tensorboard:")
    times = [e["time"] for e in events[1:-1]]
    assert times == sorted(times)
    assert {(e["step"], e["time"]) for e in events if e["kind"] == "metrics"} >= {(0, T0), (0, T0 + 0.5), (5, T0 + 5)}
    assert events[-1]["step"] == 5


def test_a_restarted_writer_replaces_the_steps_it_logged_again(tmp_path: Path) -> None:
    write_log(tmp_path, restart=True)
    (run,) = tensorboard.read(tmp_path, project="p")
    kept = run.latest()
    assert kept[("train/loss", 3)] == (T0 + 103, 13.0) and kept[("train/loss", 2)][1] == pytest.approx(1 / 3)
    done = load.load(None, run, dry_run=True)
    assert done.replaced == 2 and done.points == 6 + 5 + 5


def test_the_run_id_is_the_same_for_the_same_log_and_differs_between_runs(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_log(tmp_path / name)
    first = {r.name: r.run for r in tensorboard.read(tmp_path)}
    assert first == {r.name: r.run for r in tensorboard.read(tmp_path)}
    assert len(set(first.values())) == 2 and all(r.startswith("tb-") for r in first.values())
    with pytest.raises(tensorboard.EventFileError, match="holds 2"):
        tensorboard.read(tmp_path, run="one-id")


def test_a_file_cut_short_reads_to_its_last_whole_record_and_garbage_is_refused(tmp_path: Path) -> None:
    needs_tensorboardx()
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(tmp_path / "cut")) as writer:
        for step in range(3):
            writer.add_scalar("loss", 1.0, step, walltime=T0 + step)
    (path,) = (tmp_path / "cut").glob("*tfevents*")
    path.write_bytes(path.read_bytes()[:-7])  # a writer killed in the middle of its last record
    assert [step for _, step, _, _ in tensorboard.read(tmp_path / "cut")[0].points] == [0, 1]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "events.out.tfevents.1.host").write_bytes(b"not a tfrecord at all")
    with pytest.raises(tensorboard.EventFileError, match="not an event file"):
        tensorboard.read(tmp_path / "junk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(tensorboard.EventFileError, match="no TensorBoard event files"):
        tensorboard.read(tmp_path / "empty")


# --- MLflow: stores as MLflow 3.18 lays them out (checked against its own output, docs/history.md) ----

RUN_A, RUN_B, RUN_GONE = "36992a7234094e0e98b8f8d160328622", "5a1b0c", "dead00"
T_MS = 1_690_000_000_000


def file_store(root: Path, run_a: str = RUN_A, t_ms: int = T_MS) -> Path:
    """mlruns/ with experiment 1 "exp-a": run_a finished (params, tags, metrics with a NaN and an Inf, a
    nested key), RUN_B still RUNNING, RUN_GONE deleted; experiment 0 "Default" without runs. Times from t_ms."""
    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    put(root / "0" / "meta.yaml", "artifact_location: file:///x/0\nexperiment_id: '0'\nlifecycle_stage: active\n"
        "name: Default\n")
    experiment = root / "185740933255701637"
    put(experiment / "meta.yaml", "artifact_location: file:///x\ncreation_time: 1\n"
        "experiment_id: '185740933255701637'\nlast_update_time: 1\nlifecycle_stage: active\nname: exp-a\n"
        "trace_location: null\nworkspace: default\n")
    for run_id, name, status, stage in ((run_a, "r1", 3, "active"), (RUN_B, "r2", 1, "active"),
                                        (RUN_GONE, "r3", 3, "deleted")):
        end = "null" if status == 1 else str(t_ms + 9_000)
        put(experiment / run_id / "meta.yaml",
            f"artifact_uri: file:///x/{run_id}/artifacts\nend_time: {end}\nentry_point_name: ''\n"
            f"experiment_id: '185740933255701637'\nlifecycle_stage: {stage}\nrun_id: {run_id}\nrun_name: {name}\n"
            f"source_name: ''\nsource_type: 4\nsource_version: ''\nstart_time: {t_ms}\nstatus: {status}\ntags: []\n"
            "user_id: alice\n")
    run = experiment / run_a
    for key, value in {"lr": "0.001", "batch": "32", "opt/name": "adam", "amp": "True", "seed_list": "[1, 2]"}.items():
        put(run / "params" / key, value)
    for key, value in {"team": "vision", "mlflow.source.name": "train.py", "mlflow.source.git.commit": "abc123",
                       "mlflow.runName": "r1", "mlflow.user": "alice"}.items():
        put(run / "tags" / key, value)
    put(run / "metrics" / "train" / "loss", "".join(f"{t_ms + s} {1 / (s + 1)!r} {s}\n" for s in range(5)))
    put(run / "metrics" / "val_loss", f"{t_ms + 8000} nan 4\n{t_ms + 8001} inf 5\n")
    put(experiment / RUN_B / "metrics" / "loss", f"{t_ms} 2.5 0\n")
    return root


MLFLOW_318_DDL = [  # the columns and keys these tables have in a store MLflow 3.18 made
    "CREATE TABLE experiments (experiment_id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(256) NOT NULL, "
    "artifact_location VARCHAR(256), lifecycle_stage VARCHAR(32), creation_time BIGINT, last_update_time BIGINT, "
    "workspace VARCHAR(63) DEFAULT 'default' NOT NULL)",
    "CREATE TABLE runs (run_uuid VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(250), source_type VARCHAR(20), "
    "source_name VARCHAR(500), entry_point_name VARCHAR(50), user_id VARCHAR(256), status VARCHAR(9), "
    "start_time BIGINT, end_time BIGINT, source_version VARCHAR(50), lifecycle_stage VARCHAR(20), "
    "artifact_uri VARCHAR(200), experiment_id INTEGER, deleted_time BIGINT)",
    "CREATE TABLE metrics (\"key\" VARCHAR(250) NOT NULL, value FLOAT NOT NULL, timestamp BIGINT NOT NULL, "
    "run_uuid VARCHAR(32) NOT NULL, step BIGINT DEFAULT '0' NOT NULL, is_nan BOOLEAN DEFAULT '0' NOT NULL)",
    "CREATE TABLE params (\"key\" VARCHAR(250) NOT NULL, value VARCHAR(8000) NOT NULL, run_uuid VARCHAR(32) NOT NULL)",
    "CREATE TABLE tags (\"key\" VARCHAR(250) NOT NULL, value VARCHAR(8000), run_uuid VARCHAR(32) NOT NULL)",
]


def sqlite_store(path: Path, run_a: str = RUN_A, t_ms: int = T_MS) -> str:
    """The runs of file_store() as the SQL store keeps them (status as text, NaN as is_nan, Inf as 1.8e308)."""
    db = sqlite3.connect(path)
    for statement in MLFLOW_318_DDL:
        db.execute(statement)
    db.executemany("INSERT INTO experiments (experiment_id, name, lifecycle_stage) VALUES (?, ?, 'active')",
                   [(0, "Default"), (1, "exp-a")])
    db.executemany("INSERT INTO runs (run_uuid, name, user_id, status, start_time, end_time, lifecycle_stage, "
                   "experiment_id) VALUES (?, ?, 'alice', ?, ?, ?, ?, 1)",
                   [(run_a, "r1", "FINISHED", t_ms, t_ms + 9_000, "active"),
                    (RUN_B, "r2", "RUNNING", t_ms, None, "active"),
                    (RUN_GONE, "r3", "FINISHED", t_ms, t_ms, "deleted")])
    db.executemany("INSERT INTO params VALUES (?, ?, ?)", [("lr", "0.001", run_a), ("opt/name", "adam", run_a)])
    db.executemany("INSERT INTO tags VALUES (?, ?, ?)", [("team", "vision", run_a), ("mlflow.runName", "r1", run_a)])
    db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                   [("train/loss", 1 / (s + 1), t_ms + s, run_a, s, 0) for s in range(5)]
                   + [("val_loss", 0.0, t_ms + 8000, run_a, 4, 1),
                      ("val_loss", 1.7976931348623157e308, t_ms + 8001, run_a, 5, 0), ("loss", 2.5, t_ms, RUN_B, 0, 0)])
    db.commit()
    db.close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize("store", ["files", "file-uri", "sqlite"])
def test_mlflow_runs_read_back_with_params_tags_steps_timestamps_and_status(tmp_path: Path, store: str) -> None:
    if store == "sqlite":
        uri = sqlite_store(tmp_path / "mlflow.db")
    else:
        root = file_store(tmp_path / "mlruns")
        uri = root.as_uri() if store == "file-uri" else str(root)
    runs = {r.run: r for r in mlflow.read(uri)}
    assert set(runs) == {f"mlflow-{RUN_A}", f"mlflow-{RUN_B}"}  # the deleted run is not imported
    done, running = runs[f"mlflow-{RUN_A}"], runs[f"mlflow-{RUN_B}"]
    assert (done.project, done.name, done.user, done.status) == ("exp-a", "r1", "alice", "finished")
    assert (done.started, done.ended) == (T_MS / 1000, (T_MS + 9_000) / 1000)
    assert done.config["lr"] == 0.001 and done.config["opt/name"] == "adam"
    assert "team=vision" in done.tags and not [t for t in done.tags if t.startswith("mlflow.")]
    kept = done.latest()
    assert [kept[("train/loss", s)] for s in range(5)] == [((T_MS + s) / 1000, 1 / (s + 1)) for s in range(5)]
    assert math.isnan(kept[("val_loss", 4)][1])
    assert kept[("val_loss", 5)][1] in (math.inf, 1.7976931348623157e308)  # the SQL store keeps Inf as max float
    assert running.status is None  # RUNNING: no run_end is made up


def test_mlflow_file_store_keeps_types_code_and_filters(tmp_path: Path) -> None:
    root = file_store(tmp_path / "mlruns")
    (run,) = mlflow.read(str(root), run_ids=[RUN_A], project="moved")
    assert run.project == "moved"
    assert run.config == {"lr": 0.001, "batch": 32, "opt/name": "adam", "amp": True, "seed_list": "[1, 2]"}
    assert run.code == {"mlflow_run_id": RUN_A, "command": "train.py", "commit": "abc123"}
    assert mlflow.read(str(root), experiments=["nope"]) == []
    assert len(mlflow.read(str(root), experiments=["185740933255701637"])) == 2  # by id as well as by name


@pytest.mark.parametrize("uri, message", [
    ("http://mlflow.internal:5000", "only local stores"),
    ("/does/not/exist", "no such directory"),
    ("sqlite:////does/not/exist.db", "no such file"),
])
def test_mlflow_stores_it_cannot_read_are_named(uri: str, message: str) -> None:
    with pytest.raises(mlflow.MlflowStoreError, match=message):
        mlflow.read(uri)


def test_a_file_that_is_no_sqlite_store_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_text("hello")
    with pytest.raises(mlflow.MlflowStoreError, match="not an MLflow SQLite store"):
        mlflow.read(f"sqlite:///{tmp_path / 'x.db'}")


def test_a_bad_metric_line_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    root = file_store(tmp_path / "mlruns")
    next(root.rglob("val_loss")).write_text(f"{T_MS} 1.0 0\nthree words here\n")
    with pytest.raises(mlflow.MlflowStoreError, match=r"val_loss:2: expected"):
        mlflow.read(str(root))


@pytest.mark.parametrize("text, value", [("0.001", 0.001), ("32", 32), ("True", True), ("false", False),
                                         ("adam", "adam"), ("1_000", "1_000"), ("nan", "nan"), ("[1, 2]", "[1, 2]")])
def test_parameters_are_typed_only_where_they_are_exactly_a_number_or_boolean(text: str, value: object) -> None:
    assert number(text) == value and type(number(text)) is type(value)


# --- the loader's rows, with a sink that keeps them ---------------------------------------------------


class KeptSink:
    """ClickHouseSink's interface: `client` for the existence check, `write` keeps the batches."""

    def __init__(self, existing: list[str] = ()) -> None:
        self.batches: list = []
        self.client = self
        self.existing = list(existing)

    def query(self, sql: str, parameters: dict):
        return type("Result", (), {"result_rows": [[p] for p in self.existing]})

    def write(self, batch) -> list:
        self.batches.append(batch)
        return []


def run_of(points: int, status: str | None = "finished") -> ImportedRun:
    return ImportedRun(project="p", run="imp-1", source="test", started=T0, status=status,
                       points=[("loss", s, T0 + s, 1 / (s + 1)) for s in range(points)], config={"lr": 0.1})


def test_the_loader_writes_points_in_chunks_and_the_run_row_last(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = KeptSink()
    monkeypatch.setattr(load, "CHUNK_VALUES", 100)
    done = load.load(None, run_of(250), sink_factory=lambda settings: sink)
    assert (done.state, done.points, done.first_step, done.last_step) == ("imported", 250, 0, 249)
    assert [len(b.metric) for b in sink.batches] == [100, 100, 50]
    assert [bool(b.rows.get("runs")) for b in sink.batches] == [False, False, True]  # listed once all is in
    (row,) = sink.batches[-1].rows["runs"]
    assert (row["status"], row["last_step"], row["config"]) == ("finished", 249, '{"lr":0.1}')
    assert row["started_at"].timestamp() == T0 and row["ended_at"].timestamp() == T0 + 249
    sources = {source for b in sink.batches for source in b.metric.sources()}
    assert {topic for topic, _, _ in sources} == {"import:imp-1"}  # never a Kafka topic's "name#id"
    assert len(sources) == 250  # each event its own position: deterministic deduplication tokens


def test_a_run_already_there_is_not_written_again() -> None:
    sink = KeptSink(existing=["p"])
    assert load.load(None, run_of(10), sink_factory=lambda settings: sink).state == "exists"
    assert sink.batches == []


def test_a_run_whose_end_is_unknown_is_listed_lost_at_its_last_point() -> None:
    sink = KeptSink()
    load.load(None, run_of(10, status=None), sink_factory=lambda settings: sink)
    (row,) = sink.batches[-1].rows["runs"]
    assert row["status"] == "lost" and row["ended_at"].timestamp() == T0 + 9


def test_events_the_contract_refuses_are_counted_and_named_not_written() -> None:
    run = run_of(3)
    run.points += [("x" * 200, 1, T0 + 1.5, 1.0), ("ok", -1, T0 + 2.5, 1.0)]  # a 200-character name, a negative step
    done = load.load(None, run, dry_run=True)
    assert (done.points, done.invalid) == (3, 2)
    assert any("x" * 40 in p or "bad name" in p for p in done.problems)
