"""Expected pauses: `run.phase` / `run.pause` tell the processors, through heartbeats, that a frozen
step is expected (evaluation, checkpoint save, data-loader restart), with a fake publisher."""

from __future__ import annotations

import itertools
import time
import warnings
from typing import Any

import pytest

import trainmon
from trainmon.agent import sdk
from trainmon import TrainmonWarning
from tests.unit.test_sdk import FakePublisher, isolated, publisher  # noqa: F401 (fixtures)
from trainmon.contract import validate


def beats(publisher: FakePublisher) -> list[dict[str, Any]]:
    """The heartbeats so far, each checked against the contract."""
    return [validate(dict(event)) for event in publisher.kinds("heartbeat")]


def start(publisher: FakePublisher, heartbeat_s: float = 60.0) -> sdk.Run:
    """A run whose periodic heartbeats do not come during the test unless asked for."""
    return trainmon.init("llm", publisher=publisher, heartbeat_s=heartbeat_s)


def phases(publisher: FakePublisher) -> list[str | None]:
    return [beat.get("phase") for beat in beats(publisher)]


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_phase_is_sent_at_once_in_a_valid_heartbeat(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.log({"loss": 1.0}, step=5)
    handle = run.phase("eval")
    assert isinstance(handle, sdk.Phase) and run.current_phase == "eval"
    [beat] = beats(publisher)  # no waiting for the heartbeat thread
    assert (beat["phase"], beat["step"], beat["world_size"], beat["run"]) == ("eval", 5, 1, run.id)
    run.phase("eval")  # no change: nothing new to tell
    assert len(beats(publisher)) == 1
    run.phase("train")  # training again: a heartbeat without the field
    assert run.current_phase is None and "phase" not in beats(publisher)[-1]
    run.phase("data")
    run.phase(None)
    assert phases(publisher) == ["eval", None, "data", None]


def test_periodic_heartbeats_carry_the_phase_while_it_lasts(publisher: FakePublisher) -> None:
    run = start(publisher, heartbeat_s=0.01)
    wait_for(lambda: len(beats(publisher)) >= 2, "no periodic heartbeat")
    run.phase("checkpoint")
    changed = len(beats(publisher))
    wait_for(lambda: len(beats(publisher)) >= changed + 2, "no periodic heartbeat in the phase")
    run.phase(None)
    ended = len(beats(publisher))
    wait_for(lambda: len(beats(publisher)) >= ended + 3, "no periodic heartbeat after the phase")
    run.finish()
    seen = phases(publisher)
    # training, then the phase, then training again: never a beat with an older phase queued late
    assert [phase for phase, _ in itertools.groupby(seen)] == [None, "checkpoint", None]
    assert seen.count("checkpoint") >= 3


def test_the_context_manager_restores_the_previous_phase(publisher: FakePublisher) -> None:
    run = start(publisher)
    with run.pause("checkpoint") as outer:
        assert isinstance(outer, sdk.Phase) and run.current_phase == "checkpoint"
        with run.phase("eval"):
            assert run.current_phase == "eval"
        assert run.current_phase == "checkpoint"
    assert run.current_phase is None
    assert phases(publisher) == ["checkpoint", "eval", "checkpoint", None]
    assert "phase" not in beats(publisher)[-1]  # back to training: the field is absent


def test_a_lasting_phase_survives_a_nested_pause_and_an_exception_unwinds(publisher: FakePublisher) -> None:
    run = start(publisher)
    run.phase("eval")  # no `with`: stays until changed
    with pytest.raises(RuntimeError, match="disk full"):
        with run.pause("checkpoint"):
            raise RuntimeError("disk full")  # the block's own exception goes on, unchanged
    assert run.current_phase == "eval"
    with run.pause():
        assert run.current_phase == "pause"
    with run.phase("eval"):  # already eval: no heartbeat on entry or exit
        pass
    assert phases(publisher) == ["eval", "checkpoint", "eval", "pause", "eval"]


@pytest.mark.parametrize("name", ["Eval", "eval loop", "", "x" * 33, "évaluation", "ckpt/1", 3, b"eval"])
def test_a_bad_name_warns_once_and_changes_nothing(publisher: FakePublisher, name: Any) -> None:
    run = start(publisher)
    run.phase("data")
    with pytest.warns(TrainmonWarning, match=r"run\.phase\(.*\) ignored: "):
        handle = run.phase(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.phase(name)  # once is enough
        with handle:  # nothing to undo on exit either
            pass
    assert run.current_phase == "data" and phases(publisher) == ["data"]


def test_the_longest_name_and_every_allowed_character_pass(publisher: FakePublisher) -> None:
    run = start(publisher)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.phase("x" * 32)
        run.pause("data-loader_restart2")
    assert phases(publisher) == ["x" * 32, "data-loader_restart2"]


def test_after_finish_it_is_ignored(publisher: FakePublisher) -> None:
    run = start(publisher)
    with run.pause("checkpoint"):
        run.finish()  # the run ends inside the block: its exit sends nothing and says nothing
    assert publisher.events[-1]["kind"] == "run_end"
    with pytest.warns(TrainmonWarning, match=r"run\.pause\(\) after finish"):
        with run.pause("checkpoint"):
            pass
    with pytest.warns(TrainmonWarning, match=r"run\.phase\(\) after finish"):
        run.phase("eval")
    assert publisher.events[-1]["kind"] == "run_end" and phases(publisher) == ["checkpoint"]


def test_a_failing_publisher_never_raises_into_training() -> None:
    class Broken(FakePublisher):
        def publish(self, event: dict[str, Any]) -> bool:
            if event["kind"] == "heartbeat":
                raise OSError("queue exploded")
            return super().publish(event)

    run = start(Broken())
    with pytest.warns(TrainmonWarning, match="internal error in phase"):
        with run.phase("eval"):
            pass
    assert run.current_phase is None


def test_an_array_as_name_is_a_bad_name_not_an_internal_error(publisher: FakePublisher) -> None:
    np = pytest.importorskip("numpy")
    run = start(publisher)
    with pytest.warns(TrainmonWarning, match=r"ignored: expected string, got ndarray"):
        run.phase(np.array(["eval"]))
    assert run.current_phase is None and beats(publisher) == []


# --- checkpoint saves pause by themselves (agent/checkpoint_pauses.py) -------------------------------
# torch is not a dependency of trainmon (issue 12 brings the framework integrations): a stand-in module
# with torch's save signatures sits at the boundary, in sys.modules as `import torch` leaves it.


@pytest.fixture
def torch_modules(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Stand-ins for torch and torch.distributed.checkpoint whose save records the run's phase then."""
    import sys
    import types

    seen: dict[str, list[Any]] = {"torch": [], "dcp": []}
    torch, dcp = types.ModuleType("torch"), types.ModuleType("torch.distributed.checkpoint")

    def torch_save(obj: Any, f: Any, pickle_module: Any = None) -> None:
        seen["torch"].append([run.current_phase for run in sdk._active])
        if hasattr(f, "write"):
            f.write(b"x")

    def dcp_save(state_dict: Any, *, checkpoint_id: Any = None) -> None:
        seen["dcp"].append([run.current_phase for run in sdk._active])

    torch.save, dcp.save = torch_save, dcp_save
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.distributed.checkpoint", dcp)
    return seen


def test_a_checkpoint_save_to_a_file_is_an_expected_pause(publisher: FakePublisher, torch_modules, tmp_path) -> None:
    import io
    import sys

    run = start(publisher)
    run.phase("eval")
    torch = sys.modules["torch"]
    torch.save({"w": 1}, str(tmp_path / "ckpt.pt"))
    with open(tmp_path / "ckpt2.pt", "wb") as f:
        torch.save({"w": 1}, f)
    torch.save({"w": 1}, io.BytesIO())  # in memory: quick, often per step, not a pause
    sys.modules["torch.distributed.checkpoint"].save({"w": 1}, checkpoint_id=str(tmp_path / "dcp"))
    assert torch_modules == {"torch": [["checkpoint"], ["checkpoint"], ["eval"]], "dcp": [["checkpoint"]]}
    assert phases(publisher) == ["eval", "checkpoint", "eval", "checkpoint", "eval", "checkpoint", "eval"]
    trainmon.init("llm", publisher=publisher, heartbeat_s=60.0)  # a second init does not wrap twice
    torch.save({"w": 1}, str(tmp_path / "ckpt3.pt"))
    assert torch_modules["torch"][-1] == ["checkpoint", "checkpoint"] and len(torch_modules["torch"]) == 4
    run.finish()


def test_auto_pause_can_be_turned_off(publisher: FakePublisher, torch_modules, tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setenv("TRAINMON_AUTO_PAUSE", "0")
    run = start(publisher)
    sys.modules["torch"].save({"w": 1}, str(tmp_path / "ckpt.pt"))
    assert torch_modules["torch"] == [[None]] and phases(publisher) == []
    run.finish()


def test_a_save_after_the_run_finished_or_failing_leaves_training_alone(publisher: FakePublisher, torch_modules,
                                                                        tmp_path) -> None:
    import sys

    run = start(publisher)
    torch = sys.modules["torch"]
    run.finish()
    torch.save({"w": 1}, str(tmp_path / "ckpt.pt"))  # no open run: the save just runs
    assert torch_modules["torch"] == [[]]

    def broken(obj: Any, f: Any) -> None:
        raise OSError("disk full")

    sys.modules["torch"].save = broken
    run = start(publisher)
    with pytest.raises(OSError, match="disk full"):  # the save's own error reaches the caller
        sys.modules["torch"].save({"w": 1}, str(tmp_path / "ckpt.pt"))
    assert run.current_phase is None  # and the pause ended with it
    run.finish()
