"""The cluster simulator: deterministic for a seed, every event contract-valid, healthy curves that
the shipped rules leave alone, and each named fault changing the right figures and tripping the
shipped rule it names (fed through the real rule engine, in simulated time)."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter
from typing import Any, Iterable

import pytest

from trainmon.agent.simulator import FAULTS, FaultSpec, SimConfig, SimulateError, Simulation, describe_faults, published
from trainmon.stream_processors.alerts import AlertBook
from trainmon.stream_processors.config import load_pipeline
from trainmon.stream_processors.engine import Engine
from trainmon.stream_processors.incidents import IncidentBook
from trainmon.stream_processors.processing import run_hardware
from trainmon.stream_processors.rules import build_rule
from trainmon import cli
from trainmon.contract import decode, encode

T0 = 1_764_230_400.0  # 2025-11-27 08:00 UTC
SMALL = dict(nodes=2, gpus=2, runs=2)  # one node per run, 2 ranks each


def timeline(**options: Any) -> list[tuple[float, dict]]:
    """(time published, event) of a whole simulation: what a consumer reads, and when."""
    faults = tuple(FaultSpec.parse(f) for f in options.pop("faults", ()))
    return list(published(SimConfig(**{**SMALL, **options}, faults=faults), T0))


def simulate(**options: Any) -> list[dict]:
    return [event for _at, event in timeline(**options)]


def of(events: list[dict], kind: str, **match: Any) -> list[dict]:
    return [e for e in events if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


def gpu_figures(events: list[dict], host: str, index: int, after: float = 0.0,
                before: float = math.inf) -> list[dict]:
    return [g["figures"] for e in of(events, "system", host=host) if T0 + after <= e["time"] < T0 + before
            for g in e["gpus"] if g["index"] == index]


# --- shape, determinism, contract ----------------------------------------------------------------------


def test_same_seed_same_events_other_seed_other_curves() -> None:
    assert simulate(duration=5, seed=7) == simulate(duration=5, seed=7)
    losses = [[e["values"]["loss"] for e in of(simulate(duration=5, seed=s), "metrics")] for s in (7, 8)]
    assert losses[0] != losses[1]


def test_every_event_passes_the_contract_with_every_fault_injected() -> None:
    events = simulate(nodes=3, gpus=4, runs=3, duration=40, metrics_per_event=50,
                      faults=[f"{name}:{5 + i}" for i, name in enumerate(FAULTS)])
    for event in events:
        wire = encode(event)
        assert encode(decode(wire)) == wire  # bytes compare: NaN travels as "NaN"
    assert any(math.isnan(e["values"]["loss"]) for e in of(events, "metrics"))


def test_counts_follow_the_schedule() -> None:
    events = simulate(duration=10, step_interval=0.1, heartbeat=2, interval=0.5, val_every=20)
    kinds = Counter(e["kind"] for e in events)
    ranks = 4
    assert kinds["run_start"] == kinds["run_end"] == ranks
    assert kinds["metrics"] == ranks * 100  # steps 0..99, one event per rank
    assert kinds["heartbeat"] == ranks * 4  # at 2, 4, 6, 8 s
    assert kinds["system"] == 2 * 19  # per node at 0.5 .. 9.5 s
    assert [e["status"] for e in of(events, "run_end")] == ["killed"] * ranks
    validations = [e for e in of(events, "metrics") if "val_loss" in e["values"]]
    assert {e["rank"] for e in validations} == {0} and [e["step"] for e in validations][:2] == [20, 20]
    assert {e["world_size"] for e in of(events, "run_start")} == {2}
    times = [e["time"] for e in events]
    assert times == sorted(times) and times[0] == T0


def test_runs_with_steps_finish_and_the_simulation_ends() -> None:
    events = simulate(steps=30)
    assert [e["status"] for e in of(events, "run_end")] == ["finished"] * 4
    assert {e["step"] for e in of(events, "run_end")} == {29}
    assert max(e["step"] for e in of(events, "metrics")) == 29


def test_run_start_carries_the_reproducibility_record() -> None:
    start = of(simulate(duration=1), "run_start")[0]
    for field in ("config", "datasets", "model", "code", "environment", "tags", "name", "user"):
        assert start[field], field
    assert start["config"]["optimizer"]["lr"] > 0 and start["datasets"][0]["version"]
    assert start["local_rank"] == 0 and start["world_size"] == 2


def test_placement_spans_nodes_and_leaves_spare_gpus_idle() -> None:
    events = simulate(nodes=4, gpus=4, runs=2, world_size=5, duration=3)
    second = of(events, "run_start")[-1]["run"]
    hosts = Counter(e["host"] for e in of(events, "run_start", run=second))
    assert hosts == {"sim-node-02": 3, "sim-node-03": 2}  # run 1 took node 1 and one GPU of node 2
    assert [e["local_rank"] for e in of(events, "run_start", run=second)] == [0, 1, 2, 0, 1]
    assert all("runs" not in e for e in of(events, "system", host="sim-node-04"))
    utils = [[g["figures"]["util_percent"] for g in e["gpus"]] for e in of(events, "system", host="sim-node-03")]
    assert all(u[0] > 80 and u[1] > 80 and u[2] == u[3] == 0 for u in utils)


def test_healthy_curves_look_like_training() -> None:
    events = simulate(duration=60)
    rank0 = [e["values"] for e in of(events, "metrics", rank=0, run=events[0]["run"])]
    early, late = rank0[:50], rank0[-50:]
    assert statistics.fmean(v["loss"] for v in late) < 0.7 * statistics.fmean(v["loss"] for v in early)
    assert statistics.fmean(v["accuracy"] for v in late) > statistics.fmean(v["accuracy"] for v in early) + 0.1
    lrs = [v["lr"] for v in rank0]
    peak = lrs.index(max(lrs))
    assert 0 < peak <= 500 and lrs[-1] < lrs[peak]  # warm-up, then decay
    val = [v["val_loss"] for v in rank0 if "val_loss" in v]
    assert all(b < a for a, b in zip(val, val[1:]))  # validation never rises by chance
    busy = [g["figures"] for e in of(events, "system") for g in e["gpus"]]
    assert all(88 <= f["util_percent"] <= 100 and f["throttle_reasons"] == 0 and f["ecc_uncorrected"] == 0
               and f["temperature_c"] < 85 and f["mem_used_bytes"] < 0.95 * f["mem_total_bytes"] for f in busy)
    assert all(e["runs"] and len(e["processes"]) == 2 for e in of(events, "system"))


def test_wide_events_carry_the_per_layer_values() -> None:
    metrics = of(simulate(duration=1, metrics_per_event=100), "metrics")
    assert all(len(e["values"]) >= 106 for e in metrics)
    assert "grad_norm/layer_099" in metrics[0]["values"]


# --- faults: the figures they change ---------------------------------------------------------------------


def test_nan_makes_the_target_runs_loss_non_finite_from_its_time() -> None:
    events = simulate(duration=20, faults=["nan@run-2:10"])
    for e in of(events, "metrics"):
        bad = e["run"].endswith("run-2") and e["time"] >= T0 + 10
        assert math.isnan(e["values"]["loss"]) == bad


def test_plateau_stops_the_loss_improving() -> None:
    events = simulate(duration=80, faults=["plateau@run-1:10"])
    run = of(events, "run_start")[0]["run"]
    loss = [e["values"]["loss"] for e in of(events, "metrics", run=run, rank=0)]
    at = 200  # the step at 10 s
    stuck = [statistics.fmean(loss[i:i + 200]) for i in range(at + 50, len(loss) - 200, 200)]
    assert max(stuck) / min(stuck) < 1.01


def test_overfitting_raises_validation_while_training_falls() -> None:
    events = simulate(duration=40, faults=["overfitting:10"])
    run = of(events, "run_start")[0]["run"]
    rank0 = [e for e in of(events, "metrics", run=run, rank=0) if e["time"] >= T0 + 10]
    val = [e["values"]["val_loss"] for e in rank0 if "val_loss" in e["values"]]
    assert len(val) >= 5 and all(b > a for a, b in zip(val, val[1:]))
    assert statistics.fmean(e["values"]["loss"] for e in rank0[-100:]) < statistics.fmean(e["values"]["loss"] for e in rank0[:100])


def test_stall_freezes_steps_but_not_heartbeats_or_gpus() -> None:
    events = simulate(duration=30, faults=["stall@run-1:10"])
    run = of(events, "run_start")[0]["run"]
    steps = [e["step"] for e in of(events, "metrics", run=run)]
    assert max(steps) == 200 - 1  # the last step before 10 s
    beats = [e for e in of(events, "heartbeat", run=run) if e["time"] > T0 + 10]
    assert beats and {e["step"] for e in beats} == {199}
    assert all(f["util_percent"] == 100 for f in gpu_figures(events, "sim-node-01", 0, after=11))
    other = [e for e in of(events, "metrics") if e["run"] != run]
    assert max(e["step"] for e in other) > 500


def test_dead_node_goes_silent_and_its_run_hangs_elsewhere() -> None:
    events = simulate(nodes=2, gpus=2, runs=1, duration=30, faults=["dead_node@node-2:10"])
    late = [e for e in events if e["time"] > T0 + 10 and e["kind"] != "run_end"]
    assert late and not [e for e in late if e.get("host") == "sim-node-02"]
    assert not [e for e in late if e["kind"] == "metrics"]  # the surviving ranks wait on the dead ones
    assert [e["rank"] for e in late if e["kind"] == "heartbeat"][:2] == [0, 1]
    assert sorted(e["rank"] for e in of(events, "run_end")) == [0, 1]


def test_each_rank_names_its_pid_and_its_node_lists_it_as_the_daemon_does() -> None:
    events = simulate(duration=5)
    pids = {(e["host"], e["run"], e["pid"]) for e in of(events, "run_start")}
    assert len({pid for _, _, pid in pids}) == 4
    for sample in of(events, "system"):
        listed = {(sample["host"], p["run"], p["pid"]) for p in sample["processes"]}
        assert listed == {p for p in pids if p[0] == sample["host"]}
        assert {p["pid"] for g in sample["gpus"] for p in g["processes"]} == {pid for _, _, pid in listed}


def test_a_dead_ranks_process_leaves_its_nodes_lists_and_a_dead_node_sends_no_sample() -> None:
    events = simulate(duration=20, faults=["dead_rank@run-1/1:10", "dead_node@node-2:10"])
    dead = of(events, "run_start", rank=1)[0]
    for sample in of(events, "system", host="sim-node-01"):
        gone = sample["time"] >= T0 + 10  # injected before that instant's sample
        assert sample["runs"] == [dead["run"]]  # rank 0 of the run lives on there
        assert (dead["pid"] in {p["pid"] for p in sample["processes"]}) is not gone
        assert ("processes" in sample["gpus"][1]) is not gone
    assert not [e for e in of(events, "system", host="sim-node-02") if e["time"] > T0 + 10]


def test_straggler_doubles_one_ranks_step_time() -> None:
    events = simulate(nodes=1, gpus=4, runs=1, duration=20, faults=["straggler@run-1/2:5"])
    late = [e for e in of(events, "metrics") if e["time"] > T0 + 5]
    by_rank = {r: statistics.fmean(e["values"]["step_time_s"] for e in late if e["rank"] == r) for r in range(4)}
    assert 1.9 < by_rank[2] / by_rank[0] < 2.1 and 0.95 < by_rank[1] / by_rank[0] < 1.05


@pytest.mark.parametrize("fault, check", [
    ("hot_gpu", lambda f: f["temperature_c"] >= 90),
    ("throttled_gpu", lambda f: f["throttle_hw_slowdown"] == 1 and f["throttle_reasons"] & 0x08 and f["sm_clock_mhz"] < 1300),
    ("memory_pressure", lambda f: f["mem_used_bytes"] > 0.97 * f["mem_total_bytes"]),
    ("idle_gpu", lambda f: f["util_percent"] <= 5),
])
def test_gpu_faults_change_only_their_gpu(fault: str, check: Any) -> None:
    events = simulate(duration=20, faults=[f"{fault}@node-2/1:10"])
    assert all(check(f) for f in gpu_figures(events, "sim-node-02", 1, after=10))
    assert not any(check(f) for f in gpu_figures(events, "sim-node-02", 1, before=10))
    assert not any(check(f) for f in gpu_figures(events, "sim-node-02", 0) + gpu_figures(events, "sim-node-01", 1))
    assert all(e["runs"] for e in of(events, "system"))


def test_memory_pressure_fills_host_memory_too() -> None:
    events = simulate(duration=20, faults=["memory_pressure@node-1:10"])
    host = [e["figures"] for e in of(events, "system", host="sim-node-01") if e["time"] >= T0 + 10]
    assert all(f["mem_used_percent"] > 95 and f["mem_used_bytes"] + f["mem_available_bytes"] == f["mem_total_bytes"]
               for f in host)


# --- faults: the shipped rules they trip -------------------------------------------------------------------


def alerts(stream: Iterable[dict | tuple[float, dict]]) -> list[dict]:
    """Every alert event (firing and resolved) when the events go through the shipped pipeline's
    engine, in the order given. An item is an event or (time published, event): the engine's `now`
    for it is the time it is published at (the processors' read time), or its own time; the engine is
    ticked each second on that same clock. System samples also feed the run_hardware summaries the
    processors derive for the stall rule."""
    engine = Engine([build_rule(spec) for spec in load_pipeline().rules], AlertBook(repeat_interval_s=3600))
    made: list[dict] = []
    tick = T0 + 1
    for item in stream:
        now, event = item if isinstance(item, tuple) else (item["time"], item)
        while tick <= now:
            made += engine.on_tick(tick)
            tick += 1
        derived = run_hardware(event) if event["kind"] == "system" else []
        for each in (event, *derived):
            made += engine.on_event(each, now)
    return made


def firing(stream: Iterable[dict | tuple[float, dict]]) -> list[dict]:
    return [alert for alert in alerts(stream) if alert["state"] == "firing"]


def pages(made: list[dict]) -> list[dict]:
    """The latest firing notification of each incident when the alerts go through the shipped
    incident book as they are made (its clock: the alerts' times, ticked each second)."""
    spec = load_pipeline().incidents
    assert spec is not None
    book, out = IncidentBook(spec), []
    tick = T0 + 1
    for alert in made:
        while tick <= alert["time"]:
            out += book.tick(tick)
            tick += 1
        out += book.add(alert, alert["time"])
    out += book.tick(tick + spec.group_wait_s)
    return list({n["incident"]: n for n in out if n["state"] == "firing"}.values())


def alerts_of(stream: Iterable[dict | tuple[float, dict]]) -> set[str]:
    """The rules that fired (firing())."""
    return {alert["rule"] for alert in firing(stream)}


FAULT_RULES = {  # the shipped rules each fault trips, and no others
    "nan": {"loss_non_finite"}, "plateau": {"loss_plateau"}, "overfitting": {"overfitting"},
    "stall": {"run_stalled"}, "straggler": {"straggler"}, "dead_node": {"node_silent", "rank_heartbeat_lost"},
    "dead_rank": {"rank_heartbeat_lost", "run_stalled", "gpu_idle"}, "hot_gpu": {"gpu_temperature_high"},
    "throttled_gpu": {"gpu_throttled"}, "memory_pressure": {"gpu_memory_high", "host_memory_high"},
    "idle_gpu": {"gpu_idle"},
}


@pytest.mark.parametrize("fault, seconds", [
    ("nan", 15), ("plateau", 90), ("overfitting", 50), ("stall", 45), ("straggler", 60), ("dead_node", 25),
    ("dead_rank", 70), ("hot_gpu", 30), ("throttled_gpu", 30), ("memory_pressure", 30), ("idle_gpu", 70),
])
def test_each_fault_trips_its_shipped_rule_and_nothing_else(fault: str, seconds: int) -> None:
    slow = fault in ("stall", "idle_gpu")  # 5 minutes of steps: fewer of them keeps the test quick
    events = timeline(nodes=2, gpus=4, runs=2, duration=seconds, step_interval=0.25 if slow else 0.05,
                      faults=[fault])
    made = alerts(events)
    assert {a["rule"] for a in made if a["state"] == "firing"} == FAULT_RULES[fault]
    # one page per root cause: GPU and host memory filling are two resources, two pages
    assert len(pages(made)) == (2 if fault == "memory_pressure" else 1), pages(made)


def test_a_dead_node_stalls_the_run_it_shared_with_another_node_and_is_one_page() -> None:
    events = timeline(nodes=2, gpus=4, runs=1, duration=45, step_interval=0.25, faults=["dead_node"])
    made = alerts(events)
    assert {a["rule"] for a in made if a["state"] == "firing"} == {"node_silent", "rank_heartbeat_lost", "run_stalled"}
    (page,) = pages(made)
    assert page["rule"] == "node_silent"
    assert {m["rule"] for m in page["members"]} == {"node_silent", "rank_heartbeat_lost", "run_stalled"}


def test_a_healthy_cluster_trips_no_shipped_rule_in_twenty_minutes() -> None:
    assert alerts_of(timeline(nodes=2, gpus=4, runs=2, duration=1200, step_interval=0.1)) == set()


# --- fault specs, options and the command ---------------------------------------------------------------------


def test_fault_spec_forms() -> None:
    assert FaultSpec.parse("nan") == FaultSpec("nan", None, 10.0)
    assert FaultSpec.parse("hot_gpu@node-3/1:90") == FaultSpec("hot_gpu", "node-3/1", 90.0)
    assert FaultSpec.parse("stall@sim-20251127-080000-run-2") == FaultSpec("stall", "sim-20251127-080000-run-2", 10.0)
    for bad in ("NaN", "nan@", "nan:soon", "nan:-1", "nan@a:1:2"):
        with pytest.raises(SimulateError):
            FaultSpec.parse(bad)


@pytest.mark.parametrize("fault, message", [
    ("bogus", "unknown fault 'bogus'"),
    ("nan@run-3", "no run 'run-3'"),
    ("hot_gpu@node-9", "no node 'node-9'"),
    ("nan@run-1/0", "takes no /INDEX"),
    ("hot_gpu@node-1/2", "GPU 2 out of range 0..1"),
    ("straggler@run-1/x", "must be a rank number"),
])
def test_bad_faults_are_refused_before_anything_is_sent(fault: str, message: str) -> None:
    with pytest.raises(SimulateError, match=message):
        Simulation(None, SimConfig(**SMALL, faults=(FaultSpec.parse(fault),)), sink=ListSink())


def test_untargeted_faults_are_spread_over_runs_and_busy_nodes() -> None:
    simulation = Simulation(None, SimConfig(nodes=3, gpus=2, runs=2, world_size=2, faults=tuple(
        FaultSpec.parse(f) for f in ("nan", "plateau", "hot_gpu", "idle_gpu"))), sink=ListSink())
    where = [f.describe().split(" on ")[1].split(" ")[0] for f in simulation.faults]
    assert where[0].endswith("run-1") and where[1].endswith("run-2")
    assert where[2:] == ["sim-node-02", "sim-node-01"]  # node 3 runs nothing


@pytest.mark.parametrize("options, message", [
    (dict(runs=9), "need more GPUs"),
    (dict(gpus=65), "at most 64 GPUs"),
    (dict(step_interval=0.0), "--step-interval"),
    (dict(metrics_per_event=5000), "--metrics-per-event"),
    (dict(max_rate=-1.0), "--max-rate"),
    (dict(project=""), "--project"),
])
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(SimulateError, match=message):
        SimConfig(**{**SMALL, **options})


def test_list_faults_names_each_fault_and_its_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--list-faults"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == describe_faults()
    for name in FAULTS:
        assert f"\n{name} " in out
    for rule in ("loss_non_finite", "loss_plateau", "overfitting", "run_stalled", "straggler", "node_silent",
                 "gpu_temperature_high", "gpu_throttled", "gpu_memory_high", "gpu_idle"):
        assert rule in out


def test_cli_refuses_an_unknown_fault(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--fault", "meltdown"]) == 2
    assert "unknown fault 'meltdown'" in capsys.readouterr().err


# --- the real-time driver, against an in-memory sink ---------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def publish(self, event: dict) -> bool:
        self.events.append(event)
        return True

    def close(self, timeout_s: float = 0.0) -> None:
        pass


def test_real_time_run_paces_steps_and_ends_runs_killed() -> None:
    sink = ListSink()
    simulation = Simulation(None, SimConfig(**SMALL, duration=1.0, step_interval=0.05, interval=0.25), sink=sink)
    started = time.time()
    tally = simulation.run(threading.Event())
    kinds = Counter(e["kind"] for e in sink.events)
    assert tally.events == len(sink.events) and tally.refused == 0
    assert 15 * 4 <= kinds["metrics"] <= 20 * 4 and 3 * 2 <= kinds["system"] <= 4 * 2
    assert [e["status"] for e in of(sink.events, "run_end")] == ["killed"] * 4
    assert all(started - 0.01 <= e["time"] <= time.time() for e in sink.events)  # wall-clock event times
    assert "metric values" in simulation.summary()


def test_the_simulation_records_when_it_injected_each_fault() -> None:
    sink = ListSink()
    simulation = Simulation(None, SimConfig(**SMALL, duration=1.0, step_interval=0.05, faults=(
        FaultSpec.parse("nan@run-1:0.5"),)), sink=sink)
    started = time.time()
    simulation.run(threading.Event())
    (planned,) = simulation.faults
    at = simulation.injected[planned.describe()]
    assert started + 0.45 <= at <= started + 0.8
    nan = [e["time"] for e in of(sink.events, "metrics") if not math.isfinite(e["values"]["loss"])]
    assert nan and min(nan) >= at  # what it injected shows only after that time


def test_max_rate_caps_values_per_second() -> None:
    sink = ListSink()
    simulation = Simulation(None, SimConfig(**SMALL, duration=1.0, max_rate=20_000), sink=sink)
    tally = simulation.run(threading.Event())
    assert 15_000 <= tally.values <= 21_000


def test_stop_event_ends_the_run_early() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    sink = ListSink()
    started = time.monotonic()
    Simulation(None, SimConfig(**SMALL, step_interval=0.05), sink=sink).run(stop)
    assert time.monotonic() - started < 2.0
    assert len(of(sink.events, "run_end")) == 4
