"""The processors' run_hardware summaries carry each run's pids on the node (heartbeat_lost finds a dead
process by them), and the re-keyed topic refuses a forged `pids` like any other field."""

from __future__ import annotations

import json

import pytest

from trainmon.stream_processors.processing import _internal, run_hardware
from tests.unit.alert_streams import T0, gpu, system
from trainmon.contract import ContractError, Reason


def sample(processes: list[dict] | None) -> dict:
    event = system(T0, runs=["r1", "r2"], gpus=[gpu(0, util_percent=90.0), gpu(1, util_percent=100.0)])
    return {**event, "processes": processes} if processes is not None else event


def test_each_runs_summary_lists_its_own_pids_on_the_node() -> None:
    processes = [{"pid": 11, "run": "r1", "figures": {}}, {"pid": 12, "run": "r1", "figures": {}},
                 {"pid": 13, "run": None, "figures": {}}]  # a pid the daemon was given without a run
    summaries = {s["run"]: s for s in run_hardware(sample(processes))}
    assert summaries["r1"]["pids"] == [11, 12] and summaries["r2"]["pids"] == []  # r2's processes are gone
    assert summaries["r1"]["gpu_util_percent"] == 95.0 and summaries["r1"]["gpus"] == 2


def test_a_sample_without_a_process_list_says_nothing_of_pids() -> None:
    assert all("pids" not in s for s in run_hardware(sample(None)))


def internal(**fields: object) -> dict:
    summary = {"v": 1, "kind": "run_hardware", "run": "r1", "host": "node-1", "time": T0, "gpu_util_percent": 97.0,
               "gpus": 8, **fields}
    return _internal(json.dumps(summary).encode(), "run_hardware")


def test_the_re_keyed_summary_round_trips_with_and_without_pids() -> None:
    summary = run_hardware(sample([{"pid": 2**32 - 1, "run": "r1", "figures": {}}]))[0]
    assert _internal(json.dumps(summary).encode(), "run_hardware")["pids"] == [2**32 - 1]
    assert "pids" not in internal()


@pytest.mark.parametrize("pids, reason", [
    ("11", Reason.WRONG_TYPE), ([11, "12"], Reason.WRONG_TYPE), ([True], Reason.WRONG_TYPE), ([1.5], Reason.WRONG_TYPE),
    ([-1], Reason.INVALID_VALUE), ([2**32], Reason.INVALID_VALUE), (list(range(1025)), Reason.INVALID_VALUE),
])
def test_forged_pids_are_refused(pids: object, reason: Reason) -> None:
    with pytest.raises(ContractError) as caught:
        internal(pids=pids)
    assert caught.value.reason is reason and caught.value.field == "pids"
