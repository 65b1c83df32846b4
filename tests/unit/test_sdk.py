"""The training SDK with a fake publisher: lifecycle, the log hot path, heartbeats, metadata."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

import trainmon
from trainmon.agent import sdk
from trainmon import TrainmonWarning
from trainmon.contract import MAX_VALUES, decode, encode


class FakePublisher:
    """The publisher's interface; keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.flushed: list[float] = []
        self.closed: list[float] = []
        self.stats: dict[str, int] = {}

    def publish(self, event: dict[str, Any]) -> bool:
        self.events.append(event)
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        self.flushed.append(timeout_s)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        self.closed.append(timeout_s)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["kind"] == kind]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:
    """No launcher variables from the outer environment; registry in tmp; no run left open."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "TORCHELASTIC_", "TRAINMON_", "JOBSET_")) or name in (
                "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRAINMON_REGISTRY_DIR", str(tmp_path / "procs"))
    yield
    for run in list(sdk._active):
        run.finish()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


def start(publisher: FakePublisher, **kwargs: Any) -> sdk.Run:
    kwargs.setdefault("heartbeat_s", 60.0)
    return trainmon.init(kwargs.pop("project", "llm"), publisher=publisher, **kwargs)


def valid(event: dict[str, Any]) -> dict[str, Any]:
    """What a consumer gets: the contract's decode of the wire bytes (raises if invalid)."""
    return decode(encode(event))


def test_lifecycle_events_pass_the_contract(publisher: FakePublisher) -> None:
    run = start(publisher, name="baseline", config={"lr": 3e-4, "layers": [1, 2]}, tags=["a", "b"])
    run.log({"loss": 0.5, "acc": 0.25})
    run.log_config({"batch": 32})
    run.log_dataset("c4", "2024-01", split="train")
    run.log_model(summary="tiny", parameters=10)
    run.finish()
    assert [event["kind"] for event in publisher.events] == [
        "run_start", "metrics", "run_meta", "run_meta", "run_meta", "run_end"]
    for event in publisher.events:
        valid(event)
    begin = publisher.events[0]
    for field in ("project", "run", "rank", "host", "time", "name", "world_size", "local_rank", "user",
                  "config", "tags", "code", "environment"):
        assert field in begin, field
    assert begin["config"] == {"lr": 3e-4, "layers": [1, 2]} and begin["tags"] == ["a", "b"]
    assert begin["code"]["command"] == sys.argv
    assert begin["environment"]["python"] and "packages" in begin["environment"]
    assert begin["environment"]["launch"] == {"launcher": "single", "run_id_source": "fresh"}
    assert {event["run"] for event in publisher.events} == {run.id}
    assert publisher.events[-1]["status"] == "finished" and publisher.events[-1]["step"] == 0
    assert publisher.flushed == [sdk.FLUSH_TIMEOUT_S] and publisher.closed == []  # not ours: flush only


def test_log_event_shape(publisher: FakePublisher) -> None:
    run = start(publisher, rank=1, world_size=2, run_id="r1")
    values = {"loss": 1.0, "n": 3}
    run.log(values, step=7, epoch=0.5)
    values["loss"] = 99.0  # the user's dict is theirs again at once
    event = valid(publisher.kinds("metrics")[0])
    assert event["values"] == {"loss": 1.0, "n": 3}
    assert (event["project"], event["run"], event["rank"], event["step"], event["epoch"]) == ("llm", "r1", 1, 7, 0.5)
    assert abs(event["time"] - time.time()) < 5


def test_nan_and_infinity_are_data(publisher: FakePublisher) -> None:
    run = start(publisher)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"loss": math.nan, "grad": math.inf, "neg": -math.inf})
    values = valid(publisher.kinds("metrics")[0])["values"]
    assert math.isnan(values["loss"]) and values["grad"] == math.inf and values["neg"] == -math.inf


def test_bad_entries_are_dropped_with_one_warning_each_and_the_rest_kept(publisher: FakePublisher) -> None:
    run = start(publisher)
    bad = {"ok": 1.0, "flag": True, "text": "0.3", "none": None, 7: 1.0, "": 1.0, " pad": 1.0,
           "x" * 129: 1.0, "tab\there": 1.0, "list": [1.0], "cplx": 1j}
    with pytest.warns(TrainmonWarning) as caught:
        run.log(bad)
    assert valid(publisher.kinds("metrics")[0])["values"] == {"ok": 1.0}
    assert len(caught) == len(bad) - 1
    assert all(record.filename == __file__ for record in caught)  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log(bad)  # the same (name, reason) again: silent
    assert valid(publisher.kinds("metrics")[1])["values"] == {"ok": 1.0}


def test_numpy_scalars_and_zero_dim_arrays() -> None:
    np = pytest.importorskip("numpy")
    publisher = FakePublisher()
    run = start(publisher)
    run.log({"f32": np.float32(0.5), "i64": np.int64(2**60), "zero_dim": np.array(1.5), "f64": np.float64(2.0)},
            step=np.int64(4), epoch=np.float32(1.0))
    event = valid(publisher.kinds("metrics")[0])
    assert event["values"] == {"f32": 0.5, "i64": 2**60, "zero_dim": 1.5, "f64": 2.0}
    assert type(event["values"]["i64"]) is float and event["step"] == 4  # past 2**53: the nearest float and event["epoch"] == 1.0
    with pytest.warns(TrainmonWarning) as caught:
        run.log({"vec": np.ones(3), "b": np.bool_(True)})
    assert sorted(str(record.message) for record in caught) == [
        "run.log dropped 'b': value is a bool", "run.log dropped 'vec': value is an array of shape (3,), not a scalar"]


class FakeTensor:
    """A 0-dim torch-like tensor: converts with float(), has a shape and a dtype."""

    shape = ()
    dtype = "torch.float32"

    def __float__(self) -> float:
        return 0.75


def test_tensor_like_scalars(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.log({"t": FakeTensor()})
    assert publisher.kinds("metrics")[0]["values"] == {"t": 0.75}


def test_non_dict_values_warn_and_return(publisher: FakePublisher) -> None:
    run = start(publisher)
    with pytest.warns(TrainmonWarning, match="expects a dict"):
        run.log([("loss", 1.0)])
    assert publisher.kinds("metrics") == []
    run.log({"a": 1})  # a plain dict still works after
    from collections import OrderedDict

    run.log(OrderedDict(b=2.0))  # any Mapping
    assert [event["values"] for event in publisher.kinds("metrics")] == [{"a": 1}, {"b": 2.0}]


def test_huge_dict_is_split_not_dropped(publisher: FakePublisher) -> None:
    run = start(publisher)
    values = {f"m{i}": float(i) for i in range(MAX_VALUES * 2 + 5)}
    with pytest.warns(TrainmonWarning, match="several events"):
        run.log(values, step=3)
    events = [valid(event) for event in publisher.kinds("metrics")]
    assert [len(event["values"]) for event in events] == [MAX_VALUES, MAX_VALUES, 5]
    assert {event["step"] for event in events} == {3}
    merged = {name: value for event in events for name, value in event["values"].items()}
    assert merged == values


def test_step_auto_increments_and_follows_explicit_steps(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.log({"a": 1})
    run.log({"a": 1})
    run.log({"a": 1}, step=10)
    run.log({"a": 1})
    assert [event["step"] for event in publisher.kinds("metrics")] == [0, 1, 10, 11]
    assert run.step == 11


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_bad_step_warns_and_uses_the_next_step(publisher: FakePublisher, step: Any) -> None:
    run = start(publisher)
    run.log({"a": 1}, step=5)
    with pytest.warns(TrainmonWarning, match="step"):
        run.log({"a": 1}, step=step)
    assert [event["step"] for event in publisher.kinds("metrics")] == [5, 6]


def test_bad_epoch_is_left_out(publisher: FakePublisher) -> None:
    run = start(publisher)
    with pytest.warns(TrainmonWarning, match="epoch"):
        run.log({"a": 1}, epoch=math.nan)
    assert "epoch" not in valid(publisher.kinds("metrics")[0])


def test_context_manager_status(publisher: FakePublisher) -> None:
    with start(publisher) as run:
        run.log({"a": 1})
    assert publisher.events[-1]["status"] == "finished"
    with pytest.raises(RuntimeError), start(publisher):
        raise RuntimeError("diverged")
    assert publisher.events[-1]["status"] == "failed"
    with pytest.raises(KeyboardInterrupt), start(publisher):
        raise KeyboardInterrupt
    assert publisher.events[-1]["status"] == "killed"
    with pytest.raises(SystemExit), start(publisher):
        sys.exit(0)
    assert publisher.events[-1]["status"] == "finished"


def test_finish_is_idempotent_and_later_calls_warn_once(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.finish("failed")
    run.finish()
    assert len(publisher.kinds("run_end")) == 1 and publisher.events[-1]["status"] == "failed"
    assert run.finished
    with pytest.warns(TrainmonWarning, match=r"run.log\(\) after finish"):
        run.log({"a": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"a": 1})  # once is enough
    with pytest.warns(TrainmonWarning, match=r"run.log_config\(\) after finish"):
        run.log_config({"a": 1})
    assert publisher.events[-1]["kind"] == "run_end" and publisher.kinds("metrics") == []


def test_unknown_finish_status_warns(publisher: FakePublisher) -> None:
    run = start(publisher)
    with pytest.warns(TrainmonWarning, match="status"):
        run.finish("exploded")
    assert publisher.events[-1]["status"] == "finished"


def test_heartbeats_carry_the_current_step(publisher: FakePublisher) -> None:
    run = start(publisher, heartbeat_s=0.05)
    run.log({"a": 1}, step=41)
    deadline = time.monotonic() + 5
    while not any(event.get("step") == 41 for event in publisher.kinds("heartbeat")):
        assert time.monotonic() < deadline, "no heartbeat with step 41"
        time.sleep(0.01)
    run.finish()
    beats = publisher.kinds("heartbeat")
    for event in beats:
        assert valid(event)["world_size"] == 1
    count = len(beats)
    time.sleep(0.15)
    assert len(publisher.kinds("heartbeat")) == count  # stopped by finish
    assert not any(thread.name.startswith("trainmon-heartbeat") and thread.is_alive()
                   for thread in threading.enumerate())


def test_heartbeat_before_any_step_has_no_step(publisher: FakePublisher) -> None:
    run = start(publisher, heartbeat_s=0.02)
    deadline = time.monotonic() + 5
    while not publisher.kinds("heartbeat"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    run.finish()
    assert "step" not in valid(publisher.kinds("heartbeat")[0])


class FakeParameter:
    def __init__(self, count: int, trainable: bool) -> None:
        self.count, self.requires_grad = count, trainable

    def numel(self) -> int:
        return self.count


class FakeModule:
    """torch.nn.Module-like: parameters(), named_modules(), a printed architecture."""

    def parameters(self) -> Iterator[FakeParameter]:
        return iter([FakeParameter(100, True), FakeParameter(20, False), FakeParameter(3, True)])

    def named_modules(self) -> Iterator[tuple[str, Any]]:
        return iter([("", self), ("encoder", object()), ("head", object())])

    def __str__(self) -> str:
        return "FakeModule(\n  (encoder): Linear()\n" + "  (layer): Block()\n" * 5000 + ")"


def test_log_model_from_a_module_like_object(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.log_model(FakeModule(), framework="torch")
    model = valid(publisher.kinds("run_meta")[0])["model"]
    assert (model["parameters"], model["trainable_parameters"], model["modules"]) == (123, 103, 3)
    assert model["class"].endswith("FakeModule") and model["framework"] == "torch"
    assert model["summary"].startswith("FakeModule(") and len(model["summary"]) == sdk.MAX_SUMMARY_CHARS
    assert model["summary_truncated_from"] > sdk.MAX_SUMMARY_CHARS


def test_log_model_explicit_and_keras_like(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.log_model(summary="resnet50", parameters=25_557_032)
    run.log_model(SimpleNamespace(count_params=lambda: 42))
    first, second = (valid(event)["model"] for event in publisher.kinds("run_meta"))
    assert first == {"summary": "resnet50", "parameters": 25_557_032}
    assert second["parameters"] == 42
    with pytest.warns(TrainmonWarning, match="parameters"):
        run.log_model(parameters=-3)


@dataclass
class TrainConfig:
    lr: float = 0.1
    name: str = "x"


def test_config_of_any_common_shape_becomes_plain_json(publisher: FakePublisher) -> None:
    import argparse
    import enum
    from pathlib import Path

    class Mode(enum.IntEnum):
        FAST = 1

    run = start(publisher, config=argparse.Namespace(lr=0.1, path=Path("/data"), mode=Mode.FAST,
                                                     bad=math.nan, nested={1: (1, 2)}, obj=object))
    run.log_config(TrainConfig(), extra=True)
    config = valid(publisher.events[0])["config"]
    assert config == {"lr": 0.1, "path": "/data", "mode": 1, "bad": "nan", "nested": {"1": [1, 2]},
                      "obj": "<class 'object'>"}
    assert valid(publisher.kinds("run_meta")[0])["config"] == {"lr": 0.1, "name": "x", "extra": True}
    with pytest.warns(TrainmonWarning, match="config must be"):
        run.log_config("lr=0.1")


def test_oversized_config_is_replaced_by_a_note(publisher: FakePublisher) -> None:
    with pytest.warns(TrainmonWarning, match="bytes"):
        start(publisher, config={"blob": "x" * 2_000_000})
    event = valid(publisher.events[0])
    assert "_dropped" in event["config"]


def test_log_dataset_validation(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.log_dataset("imagenet", 2012, rows=1_281_167)
    assert valid(publisher.kinds("run_meta")[0])["datasets"] == [
        {"rows": 1_281_167, "name": "imagenet", "version": "2012"}]
    with pytest.warns(TrainmonWarning, match="name and version"):
        run.log_dataset("", "v1")


def test_bad_init_arguments_warn_and_go_on(publisher: FakePublisher) -> None:
    with pytest.warns(TrainmonWarning):
        run = trainmon.init(None, tags=5, heartbeat_s=-1, rank="x", publisher=publisher)
    assert run.project == "default" and "tags" not in publisher.events[0]
    run.log({"a": 1})
    assert publisher.kinds("metrics")


def test_warnings_as_errors_never_raise_into_training(publisher: FakePublisher) -> None:
    run = start(publisher)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"flag": True, "ok": 1.0})
    assert publisher.kinds("metrics")[0]["values"] == {"ok": 1.0}


def test_a_failing_publisher_never_raises_into_training() -> None:
    class Broken(FakePublisher):
        def publish(self, event: dict[str, Any]) -> bool:
            raise RuntimeError("boom")

    with pytest.warns(TrainmonWarning, match="internal error in run_start"):
        run = start(Broken())
    with pytest.warns(TrainmonWarning, match="internal error in log"):
        run.log({"a": 1.0})
    run.log({"a": 1.0})
    with pytest.warns(TrainmonWarning, match="internal error in finish"):
        run.finish()
    assert list((Path(os.environ["TRAINMON_REGISTRY_DIR"])).iterdir()) == []  # the rest of finish ran


def test_publisher_that_cannot_start_gives_a_working_no_op_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise ImportError("No module named 'confluent_kafka'")

    monkeypatch.setattr(sdk, "_default_publisher", refuse)
    with pytest.warns(TrainmonWarning, match="monitoring is off"):
        run = trainmon.init("llm", heartbeat_s=60)
    run.log({"loss": 1.0})
    assert run.step == 0
    run.finish()


def test_default_publisher_gets_settings_spool_dir_and_client_id(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    made: list[tuple[Any, dict[str, Any]]] = []

    class Recording(FakePublisher):
        def __init__(self, settings: Any, **kwargs: Any) -> None:
            super().__init__()
            made.append((settings, kwargs))

    monkeypatch.setitem(sys.modules, "trainmon.agent.publisher", SimpleNamespace(Publisher=Recording))
    monkeypatch.setenv("TRAINMON_SPOOL_DIR", str(tmp_path / "spool"))
    from trainmon.settings import Settings

    settings = Settings(kafka_topic_prefix="x.")
    run = trainmon.init("My Proj", settings=settings, run_id="run/1", rank=2, world_size=4, heartbeat_s=60)
    run.finish()
    used, kwargs = made[0]
    assert used is settings
    assert kwargs["spool_dir"] == tmp_path / "spool" / "My-Proj-run-1-rank2"
    assert kwargs["client_id"] == "trainmon-sdk-run-1-rank2"
    run = trainmon.init("p", run_id="r", spool_dir=tmp_path / "other", heartbeat_s=60)
    run.finish()
    assert made[1][1]["spool_dir"] == tmp_path / "other" / "p-r-rank0"


def test_owned_publisher_is_closed_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    class Hanging(FakePublisher):
        def close(self, timeout_s: float = 5.0) -> None:
            time.sleep(30)

    monkeypatch.setattr(sdk, "_default_publisher", lambda *args: Hanging())
    run = trainmon.init("llm", heartbeat_s=60)
    began = time.monotonic()
    run.finish(timeout_s=0.1)
    assert time.monotonic() - began < 3


def test_facade_exports() -> None:
    assert trainmon.Run is sdk.Run
    assert callable(trainmon.classification_metrics)
    with pytest.raises(AttributeError):
        trainmon.nothing_here  # noqa: B018


# --- producer identity, dropped count, metadata from rank 0 -------------------------------------


def test_every_event_carries_the_runs_producer_and_consecutive_seqs(publisher: FakePublisher) -> None:
    run = start(publisher, heartbeat_s=0.05)
    run.log({"loss": 1.0})
    run.log_config({"batch": 32})
    with pytest.warns(TrainmonWarning, match="several events"):
        run.log({"x": 1.0} | {f"v{i}": 1.0 for i in range(sdk.MAX_VALUES + 1)})  # split into two events
    time.sleep(0.2)
    run.finish()
    events = publisher.events
    assert {e["kind"] for e in events} >= {"run_start", "metrics", "run_meta", "heartbeat", "run_end"}
    assert {e["producer"] for e in events} == {run.producer} and len(run.producer) == 32
    assert [e["seq"] for e in events] == list(range(len(events)))
    for event in events:
        assert valid(event)["seq"] == event["seq"]
    other = start(FakePublisher())
    assert other.producer != run.producer


def test_seq_order_is_publish_order_with_several_threads(publisher: FakePublisher) -> None:
    run = start(publisher)

    def work() -> None:
        for step in range(2000):
            run.log({"loss": 1.0}, step=step)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [e["seq"] for e in publisher.events]
    assert seqs == list(range(len(seqs))) and len(seqs) == 8001


def test_the_real_publisher_numbers_events_itself(publisher: FakePublisher) -> None:
    publisher.assigns_seq = True
    run = start(publisher)
    run.log({"loss": 1.0})
    assert all("seq" not in e and e["producer"] == run.producer for e in publisher.events)


def test_heartbeats_carry_the_publishers_dropped_count(publisher: FakePublisher) -> None:
    publisher.dropped = 7
    run = start(publisher, heartbeat_s=0.05)
    time.sleep(0.2)
    run.finish()
    beats = publisher.kinds("heartbeat")
    assert beats and all(valid(beat)["dropped"] == 7 for beat in beats)


def test_run_metadata_is_sent_from_rank_zero_only_unless_asked(publisher: FakePublisher) -> None:
    run = start(publisher, rank=3, world_size=512, run_id="big-job")
    run.log_config({"batch": 32})
    run.log_dataset("c4", "2024-01")
    run.log_model(summary="tiny", parameters=10)
    assert publisher.kinds("run_meta") == []
    run.log_dataset("c4", "2024-01", shard=3, all_ranks=True)
    run.log_model(summary="tiny", all_ranks=True)
    run.log_config({"local_batch": 4}, all_ranks=True)
    metas = publisher.kinds("run_meta")
    assert [valid(m)["rank"] for m in metas] == [3, 3, 3]
    assert metas[0]["datasets"] == [{"shard": 3, "name": "c4", "version": "2024-01"}]
    assert "all_ranks" not in metas[2]["config"]

    zero = FakePublisher()
    first = start(zero, rank=0, world_size=512, run_id="big-job-2")
    first.log_dataset("c4", "2024-01")
    assert len(zero.kinds("run_meta")) == 1


def test_the_spool_root_is_the_nodes_shared_root_when_it_exists(tmp_path, monkeypatch):
    shared = tmp_path / "spool"
    monkeypatch.setattr(sdk, "SHARED_SPOOL_ROOT", shared)
    assert sdk.spool_root({}) == Path.home() / ".cache" / "trainmon" / "spool"
    shared.mkdir()
    assert sdk.spool_root({}) == shared
    assert sdk.spool_root({"TRAINMON_SPOOL_DIR": str(tmp_path / "mine")}) == tmp_path / "mine"
