"""The simulator's hazards (agent/simulator/hazards.py): each one visibly happens in the events, every
event stays contract-valid and deterministic, a healthy cluster living through them trips no shipped
rule, and every fault still trips exactly its rule with all of them on. The rule engine's `now` for an
event is the time it is published at (late or from a skewed clock), as in the processors."""

from __future__ import annotations

import math
import statistics
import threading
from bisect import bisect_left
from collections import Counter
from typing import Any

import pytest

from trainmon.agent.simulator import FAULTS, HAZARDS, SimConfig, SimulateError, Simulation, describe_hazards, generate
from trainmon.agent.simulator.cluster import Cluster
from trainmon.agent.simulator.hazards import CHECKPOINT_S, EVAL_S, GIL_S, LATE_S, RESUME_S, SKEW_S
from tests.unit.test_simulate import FAULT_RULES, SMALL, T0, ListSink, firing, of, simulate, timeline
from trainmon import cli
from trainmon.contract import decode, encode

ALL = ("all",)
CLUSTER = dict(nodes=2, gpus=4, runs=2)  # a run of 4 ranks on each node, as the fault tests
SPANNING = dict(nodes=3, gpus=4, runs=2)  # runs of 6 ranks: node 2 holds ranks of both


def wire(event: dict) -> bytes:
    return encode(event)


def run_ids(events: list[dict]) -> list[str]:
    """run-1, run-2 ... (in publication order a late node's come last)."""
    return sorted({e["run"] for e in of(events, "run_start")}, key=lambda run: int(run.rsplit("-", 1)[1]))


def gpu_utils(events: list[dict], host: str, gpus: set[int], start: float, end: float) -> list[int]:
    return [g["figures"]["util_percent"] for e in of(events, "system", host=host) if start <= e["time"] <= end
            for g in e["gpus"] if g["index"] in gpus]


def pauses(events: list[dict], run: str, phase: str) -> list[tuple[float, float]]:
    """(start, end) of each of the run's declared pauses of `phase`, from rank 0's heartbeats."""
    beats = [(e["time"], e.get("phase")) for e in of(events, "heartbeat", run=run, rank=0)]
    out, began = [], None
    for at, declared in beats:
        if declared == phase and began is None:
            began = at
        elif declared != phase and began is not None:
            out.append((began, at))
            began = None
    return out


# --- names, options, determinism, contract ---------------------------------------------------------------


def test_hazard_names_are_checked_and_put_in_order() -> None:
    assert SimConfig(**SMALL).hazards == ()
    assert SimConfig(**SMALL, hazards=ALL).hazards == tuple(HAZARDS)
    assert SimConfig(**SMALL, hazards=("skewed_clock", "eval", "eval")).hazards == ("eval", "skewed_clock")
    with pytest.raises(SimulateError, match="unknown hazard 'hiccup'; known: checkpoint, eval, .*skewed_clock"):
        SimConfig(**SMALL, hazards=("eval", "hiccup"))
    with pytest.raises(SimulateError, match="a tuple of names"):
        SimConfig(**SMALL, hazards="eval")  # type: ignore[arg-type]


def test_list_hazards_names_each_hazard_and_its_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--list-hazards"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == describe_hazards()
    for hazard in HAZARDS.values():
        assert f"\n{hazard.name} " in out and hazard.tests in out


def test_cli_passes_hazards_and_refuses_unknown_ones(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import trainmon.agent.daemon
    import trainmon.agent.simulator.runner

    seen: list[SimConfig] = []
    monkeypatch.setattr(trainmon.agent.simulator.runner, "serve", lambda settings, config, **_: seen.append(config))
    monkeypatch.setattr(trainmon.agent.daemon, "configure_logging", lambda *a, **k: None)
    assert cli.main(["simulate", "--hazard", "resume", "--hazard", "checkpoint"]) == 0
    assert cli.main(["simulate", "--hazard", "all"]) == 0
    assert [config.hazards for config in seen] == [("checkpoint", "resume"), tuple(HAZARDS)]
    assert cli.main(["simulate", "--hazard", "hiccup"]) == 2
    assert "unknown hazard 'hiccup'" in capsys.readouterr().err


def test_same_seed_same_events_and_generate_gives_what_published_does() -> None:
    first = timeline(duration=60, hazards=ALL, seed=3)
    assert first == timeline(duration=60, hazards=ALL, seed=3)
    assert [e for _, e in first] == list(generate(SimConfig(**SMALL, duration=60, hazards=ALL, seed=3), T0))
    assert [e for _, e in first] != simulate(duration=60, hazards=ALL, seed=4)
    assert [at for at, _ in first] == sorted(at for at, _ in first)  # published in time order


def test_every_event_passes_the_contract_with_all_hazards_and_faults() -> None:
    events = simulate(nodes=3, gpus=4, runs=3, duration=90, metrics_per_event=20, hazards=ALL,
                      faults=[f"{name}:{5 + 3 * i}" for i, name in enumerate(FAULTS)])
    for event in events:
        assert encode(decode(wire(event))) == wire(event)
    assert {e.get("phase") for e in of(events, "heartbeat")} == {None, "eval"}  # hung or dead before a save


def test_without_hazards_events_are_published_at_their_time_and_declare_no_phase() -> None:
    items = timeline(duration=30)
    assert all(at == event["time"] for at, event in items)
    assert not [e for _, e in items if e.get("phase")] and len(of([e for _, e in items], "run_start")) == 4


# --- each hazard, in the events --------------------------------------------------------------------------


def test_checkpoint_pauses_steps_declares_its_phase_starves_heartbeats_and_idles_gpus() -> None:
    events = simulate(duration=100, hazards=("checkpoint",))
    for index, run in enumerate(run_ids(events)):
        host = f"sim-node-0{index + 1}"
        saves = pauses(events, run, "checkpoint")
        assert len(saves) >= 2, run
        steps = [e for e in of(events, "metrics", run=run, rank=0)]
        every = {e["step"] for e in of(events, "heartbeat", run=run, phase="checkpoint")}
        assert len(every) == len(saves) and all(540 <= s // k <= 660 for k, s in enumerate(sorted(every), 1))
        for start, end in saves:
            assert CHECKPOINT_S[0] - 0.1 <= end - start <= CHECKPOINT_S[1] + 0.1
            assert not [e for e in steps if start < e["time"] < end]  # the step stands still
            beats = sorted({e["time"] for e in of(events, "heartbeat", run=run) if start <= e["time"] < end})
            assert beats[0] == start and beats[1] - start >= GIL_S[0] - 1e-9  # announced at once, then starved
            back = [e for e in of(events, "heartbeat", run=run) if e["time"] == end]
            assert back and all("phase" not in e for e in back)  # and a heartbeat back in training at once
            assert all(5 <= u <= 15 for u in gpu_utils(events, host, {0, 1}, start + 0.01, end - 0.01))
        assert all(u >= 88 for u in gpu_utils(events, host, {0, 1}, 0, saves[0][0]))


def test_eval_pauses_with_busy_gpus_and_logs_validation_at_its_end() -> None:
    events = simulate(duration=60, hazards=("eval",))
    for index, run in enumerate(run_ids(events)):
        evals = pauses(events, run, "eval")
        assert len(evals) >= 3
        metrics = of(events, "metrics", run=run)
        validations = [e for e in metrics if "val_loss" in e["values"]]
        assert all(set(e["values"]) == {"val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1"}
                   and e["rank"] == 0 for e in validations)  # on their own, not with a training step's values
        for k, (start, end) in enumerate(evals, 1):
            assert EVAL_S[0] - 0.1 <= end - start <= EVAL_S[1] + 0.1
            assert not [e for e in metrics if start < e["time"] < end]
            assert [(e["time"], e["step"]) for e in validations if start <= e["time"] <= end] == [(end, 100 * k)]
            utils = gpu_utils(events, f"sim-node-0{index + 1}", {0, 1}, start + 0.01, end - 0.01)
            assert utils and all(86 <= u <= 94 for u in utils)  # busy all along


def test_warmup_spikes_hit_a_few_of_the_first_40_steps_of_every_run() -> None:
    config = SimConfig(**SMALL, duration=10, hazards=("warmup_spikes",))
    curves = {run.id: run.curve for run in Cluster(config, T0).runs}
    events = list(generate(config, T0))
    for run, curve in curves.items():
        rank1 = of(events, "metrics", run=run, rank=1)
        ratios = {e["step"]: e["values"]["loss"] / curve.loss(e["step"]) for e in rank1}
        spiked = sorted(step for step, ratio in ratios.items() if ratio > 1.5)
        assert 2 <= len(spiked) <= 4 and spiked[-1] < 40, (run, spiked)
        assert all(2.5 < ratios[step] < 11 for step in spiked)
        grads = {e["step"]: e["values"]["grad_norm"] for e in rank1}
        assert all(grads[step] > 2 * statistics.median(grads.values()) for step in spiked)
        high = {e["step"] for e in of(events, "metrics", run=run) if e["values"]["loss"] > 1.5 * curve.loss(e["step"])}
        assert high == set(spiked)  # on every rank, at the same steps


def residuals(hazards: tuple[str, ...]) -> tuple[list[float], list[float], list[float]]:
    """Relative deviations of every logged loss and grad_norm from the run's noise-free curves."""
    config = SimConfig(**SMALL, duration=30, hazards=hazards)
    runs = {run.id: run for run in Cluster(config, T0).runs}
    loss, grad, grads = [], [], []
    for e in of(list(generate(config, T0)), "metrics"):
        run, step = runs[e["run"]], e["step"]
        loss.append(e["values"]["loss"] / run.curve.loss(step) - 1)
        grads.append(e["values"]["grad_norm"])
        grad.append(grads[-1] / (run.grad_norm * (0.4 + 0.6 * math.exp(-step / run.healthy.tau_fast))) - 1)
    return loss, grad, grads


def test_noisy_loss_is_four_times_noisier_but_never_spikes() -> None:
    quiet_loss, quiet_grad, _ = residuals(())
    loss, grad, grads = residuals(("noisy_loss",))
    assert 3.5 < statistics.stdev(loss) / statistics.stdev(quiet_loss) < 4.5
    assert 2.7 < statistics.stdev(grad) / statistics.stdev(quiet_grad) < 3.3
    for deviations in (loss, grad):
        sigma = 1.4826 * statistics.median(abs(x - statistics.median(deviations)) for x in deviations)
        assert max(abs(x) for x in deviations) < 4 * sigma
    assert min(grads) > 0


def test_resume_restarts_each_run_once_from_an_earlier_step() -> None:
    events = simulate(duration=60, hazards=("resume",))
    for run in run_ids(events):
        starts = of(events, "run_start", run=run)
        restart = starts[2]["time"]
        assert len(starts) == 4 and {e["time"] for e in starts[2:]} == {restart} and 20 <= restart - T0 <= 40
        assert sorted(e["rank"] for e in starts[2:]) == [0, 1]
        before = [e for e in events if e.get("run") == run and e["time"] < restart]
        after = [e for e in of(events, "metrics", run=run) if e["time"] > restart]
        silence = restart - before[-1]["time"]
        assert RESUME_S[0] - 0.06 <= silence <= RESUME_S[1] + 0.06 and silence <= 3.0
        last = max(e["step"] for e in before if e["kind"] == "metrics")
        assert 150 <= last - after[0]["step"] + 1 <= 250 and after[0]["time"] <= restart + 0.05
        beat = next(e for e in of(events, "heartbeat", run=run) if e["time"] > restart)
        assert after[0]["step"] <= beat["step"] < last  # heartbeats carry the step it went back to


def test_late_delivery_publishes_one_nodes_events_late_and_out_of_order() -> None:
    items = timeline(duration=30, hazards=("late_delivery",))
    lateness = {}
    for at, event in items:
        lateness.setdefault(event["host"], []).append(at - event["time"])
    late = [host for host, delays in lateness.items() if max(delays) > 0]
    assert len(late) == 1
    assert all(LATE_S[0] <= d <= LATE_S[1] for d in lateness[late[0]])
    times = [e["time"] for _, e in items if e["host"] == late[0]]
    assert any(b < a for a, b in zip(times, times[1:]))  # out of order
    # the same events as on time, only published later
    assert sorted(map(wire, (e for _, e in items))) == sorted(map(wire, simulate(duration=30)))


def test_skewed_clock_stamps_one_nodes_events_90_s_behind() -> None:
    items = timeline(duration=30, hazards=("skewed_clock",))
    offsets = Counter((event["host"], round(event["time"] - at, 6)) for at, event in items)
    assert {offset for _, offset in offsets} == {0.0, SKEW_S} and len({host for host, _ in offsets}) == 2
    skewed = next(host for host, offset in offsets if offset == SKEW_S)
    assert {e["kind"] for _, e in items if e["host"] == skewed} == {"run_start", "metrics", "heartbeat", "system",
                                                                    "run_end"}
    plain = simulate(duration=30)
    for (at, event), original in zip(items, plain):
        assert event == ({**original, "time": original["time"] + SKEW_S} if event["host"] == skewed else original)


def test_a_real_time_run_with_all_hazards_sends_everything() -> None:
    sink = ListSink()
    simulation = Simulation(None, SimConfig(**SMALL, duration=1.0, hazards=ALL), sink=sink)
    tally = simulation.run(threading.Event())
    assert tally.events == len(sink.events) and tally.refused == 0
    assert sorted(e["rank"] for e in of(sink.events, "run_end")) == [0, 0, 1, 1]  # the late node's too
    assert len(simulation.hazards) == len(HAZARDS)
    for event in sink.events:
        decode(wire(event))


# --- the shipped rules ---------------------------------------------------------------------------------------

def describe(alerts: list[dict]) -> list[tuple[str, float, dict, dict]]:
    """Enough of each alert to say what fired (shown when an assertion fails)."""
    return [(a["rule"], round(a["time"] - T0, 1),
             {k: v for k, v in a["labels"].items() if k not in ("alertname", "project")},
             {k: round(v, 3) for k, v in (a.get("values") or {}).items()}) for a in alerts]


@pytest.mark.parametrize("hazard", list(HAZARDS))
def test_a_healthy_cluster_living_through_one_hazard_trips_no_shipped_rule_in_twenty_minutes(hazard: str) -> None:
    alerts = firing(timeline(**CLUSTER, duration=1200, step_interval=0.1, hazards=(hazard,)))
    assert describe(alerts) == []


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("layout", [CLUSTER, SPANNING], ids=["run-per-node", "spanning-runs"])
def test_a_healthy_cluster_with_all_hazards_trips_no_shipped_rule_in_twenty_minutes(layout: dict, seed: int) -> None:
    """Seed 4 has an evaluation in the first 10 s. Before stalled took a rank's phase only from its newest
    heartbeat, late_delivery's out-of-order heartbeats recorded ~0 s pauses, the learned eval limit
    shrank to ~1 s and the next real evaluation paged run_stalled (up to 51 times in 20 minutes)."""
    alerts = firing(timeline(**layout, duration=1200, step_interval=0.1, hazards=ALL, seed=seed))
    assert describe(alerts) == []


def training_moment(after: float, run: int, **options: Any) -> float:
    """The first time from `after` (seconds since the start) at which run `run` (its index) has been
    stepping for a second and goes on for 2 more, in the same simulation without faults: a fault
    injected then lands in training. Rank 0's own clock (a skewed one's offset: its run_start's)."""
    events = simulate(**options)
    name = run_ids(events)[run]
    offset = of(events, "run_start", run=name, rank=0)[0]["time"] - T0
    times = sorted(e["time"] - T0 - offset for e in of(events, "metrics", run=name, rank=0) if "loss" in e["values"])
    step = options["step_interval"]
    t = after
    while t < options["duration"]:
        if _stepping(times, t - 1, t + 2, 2 * step):
            return round(t, 2)
        t += step
    raise AssertionError(f"{name} never trains from {after} s on")


def _stepping(times: list[float], start: float, end: float, gap: float) -> bool:
    i = bisect_left(times, start)
    inside = times[i:bisect_left(times, end)]
    return bool(inside) and inside[0] - start <= gap and end - inside[-1] <= gap and \
        all(b - a <= gap for a, b in zip(inside, inside[1:]))


# Seconds after the fault, for seed 0. With the hazards some rules take far longer than without
# (test_simulate.py): 1,000 steps of loss_plateau take ~170 s of 100 steps and a 12 s evaluation, and
# noisy_loss makes chance new bests; overfitting waits for evaluations to end.
@pytest.mark.parametrize("fault, seconds", [
    ("nan", 15), ("plateau", 300), ("overfitting", 150), ("stall", 50), ("straggler", 60), ("dead_node", 25),
    ("dead_rank", 70), ("hot_gpu", 30), ("throttled_gpu", 30), ("memory_pressure", 30), ("idle_gpu", 70),
])
def test_each_fault_trips_its_shipped_rule_and_nothing_else_with_all_hazards(fault: str, seconds: int) -> None:
    """Injected while its run trains: one injected in a declared pause is judged by the pause limits
    (a rank that dies during an evaluation leaves its phase declared: run_stalled waits for the pause
    limit; its heartbeat timeout is the rule's paused_timeout_s, 20 s, unless its node no longer lists
    its process: test_a_rank_dead_in_an_evaluation_is_found_once_its_node_no_longer_lists_it)."""
    options = dict(CLUSTER, step_interval=0.25 if fault in ("stall", "idle_gpu") else 0.05, hazards=ALL)
    hit = 0 if FAULTS[fault].target == "run" else 1  # run-1; a node fault's node (the last) runs run-2
    at = training_moment(10.0, hit, duration=seconds + 30, **options)
    alerts = firing(timeline(duration=at + seconds, faults=[f"{fault}:{at}"], **options))
    assert {a["rule"] for a in alerts} == FAULT_RULES[fault], describe(alerts)


def test_a_rank_dead_in_an_evaluation_is_found_once_its_node_no_longer_lists_it() -> None:
    """Its heartbeats declared `eval` (20 s of silence allowed), but the other ranks of its run on the
    node keep the run listed, and the dead rank's pid is gone from the samples: 2 s, as in training."""
    options = dict(CLUSTER, duration=60, hazards=("eval",))
    events = simulate(**options)
    start, end = pauses(events, run_ids(events)[0], "eval")[0]
    at = round(start - T0 + 1.0, 2)  # one second into run-1's first evaluation
    alerts = firing(timeline(**{**options, "duration": at + 25}, faults=[f"dead_rank:{at}"]))
    lost = [a for a in alerts if a["rule"] == "rank_heartbeat_lost"]
    assert [(a["labels"]["rank"], a["values"]["process_gone"]) for a in lost] == [("3", 1.0)], describe(alerts)
    assert lost[0]["time"] - (T0 + at) <= 3.0 < end - lost[0]["time"]  # found while the evaluation lasts


def test_a_resumed_rank_is_a_new_process_and_its_node_lists_the_new_pid() -> None:
    events = simulate(duration=60, hazards=("resume",))
    for run in run_ids(events):
        starts = of(events, "run_start", run=run)
        before, after = ({e["rank"]: e["pid"] for e in part} for part in (starts[:2], starts[2:]))
        assert before.keys() == after.keys() == {0, 1} and not set(before.values()) & set(after.values())
        for pids, window in ((before, lambda t: t < starts[2]["time"] - 3), (after, lambda t: t > starts[2]["time"])):
            listed = [{p["pid"] for p in e["processes"] if p["run"] == run} for e in of(events, "system")
                      if window(e["time"]) and run in e["runs"]]
            assert listed and all(seen == set(pids.values()) for seen in listed)
