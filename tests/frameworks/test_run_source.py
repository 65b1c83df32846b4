"""Whose run an integration logs to, and which rank it is."""

from __future__ import annotations

import sys
import types

import pytest

from tests.frameworks.helpers import Recorder
from trainmon.agent.integrations.run_source import RunSource


def fake_distributed(rank: int, world_size: int) -> types.ModuleType:
    module = types.ModuleType("torch.distributed")
    module.is_available = lambda: True
    module.is_initialized = lambda: True
    module.get_rank = lambda: rank
    module.get_world_size = lambda: world_size
    return module


def test_rank_and_world_size_come_from_torch_distributed_once_it_is_set_up(
        recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's launcher sets LOCAL_RANK and WORLD_SIZE, not RANK: the environment alone says rank 0."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setitem(sys.modules, "torch.distributed", fake_distributed(rank=3, world_size=4))
    run = RunSource(project="frameworks", run_id="ddp", publisher=recorder, heartbeat_s=60).get()
    assert (run.rank, run.world_size) == (3, 4)


def test_what_the_user_passes_wins(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.distributed", fake_distributed(rank=3, world_size=4))
    run = RunSource(project="frameworks", run_id="ddp", rank=1, world_size=2, publisher=recorder, heartbeat_s=60).get()
    assert (run.rank, run.world_size) == (1, 2)


def test_without_torch_distributed_the_environment_decides(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch.distributed", raising=False)
    run = RunSource(project="frameworks", publisher=recorder, heartbeat_s=60).get()
    assert (run.rank, run.world_size) == (0, 1)
    assert RunSource(run).get() is run, "a given run is used as it is"
