"""Issue 13's goals, judged from the JSON files one `bench/run_all.py --show` run wrote.

The issue asks for every figure from one run on one machine; this turns that run's files into one
verdict per goal (figure, limit, met) and the figures that say how fast the machine was meanwhile,
since on a shared 2-core VM the CPU-bound goals move with the hour (docs/benchmarks.md, "Where the
performance goals stand").
"""

from __future__ import annotations

import json
import operator
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.idle import GOAL_PCT  # noqa: E402
from bench.pipeline import GOALS as PIPELINE_GOALS  # noqa: E402
from bench.queries import GOAL_COLD_MS, GOAL_WARM_MS, REFERENCE  # noqa: E402

GPU_VALUE_BYTES_GOAL = 1.5  # issue 13: at most Prometheus's published 1-2 bytes per sample
OPS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">=": operator.ge,
                                                   "==": operator.eq}

Figures = Mapping[str, Any]  # one benchmark's JSON


def worst_view(figures: Figures, phase: str) -> tuple[float, str]:
    """The slowest p50 of `phase` (cold or warm) over the views with a goal, and that view's name."""
    suffix = f"_{phase}_p50_ms"
    views = {key[:-len(suffix)]: value for key, value in figures.items()
             if key.endswith(suffix) and not key.startswith("goal_")}
    timed = {view: value for view, value in views.items() if view not in REFERENCE and value is not None}
    if not timed:
        raise KeyError(f"no view's {phase} p50")
    view = max(timed, key=timed.__getitem__)
    return timed[view], view


@dataclass(frozen=True)
class Goal:
    """`name` (its unit in the name, as in every figure) read from benchmark `bench`'s JSON by `read`,
    which returns the figure and a note (e.g. which view was the slowest)."""

    name: str
    bench: str
    read: Callable[[Figures], tuple[float, str]]
    op: str
    limit: float
    what: str


def at(*path: str) -> Callable[[Figures], tuple[float, str]]:
    """The figure at `path` in the JSON (e.g. "figures", "gpu_value_bytes")."""
    def read(figures: Figures) -> tuple[float, str]:
        value: Any = figures
        for part in path:
            value = value[part]
        return float(value), ""
    return read


def lost_or_doubled(figures: Figures) -> tuple[float, str]:
    """The run furthest from exact; a pipeline.json from before that figure (2026-12-08) has the median only."""
    if "saturated_values_lost_or_doubled_worst" in figures:
        return float(figures["saturated_values_lost_or_doubled_worst"]), ""
    return float(figures["saturated_values_lost_or_doubled"]), "the median of the runs: an older pipeline.json"


def slowest(phase: str) -> Callable[[Figures], tuple[float, str]]:
    """The slowest view's p50 of `phase`, with the view's name as the note."""
    return lambda figures: worst_view(figures, phase)


GOALS = [
    Goal("idle_clickhouse_plus_worker_cpu_pct", "idle", at("figures", "clickhouse_plus_worker_cpu_pct"), "<", GOAL_PCT,
         "at rest, ClickHouse + worker, % of one core"),
    Goal("pipeline_values_per_s", "pipeline", at("values_per_s_later_runs_median"), *PIPELINE_GOALS["values_per_s"],
         "pipeline values/s (median of the runs after the first)"),
    Goal("pipeline_alert_p99_ms", "pipeline", at("alert_p99_ms"), *PIPELINE_GOALS["alert_p99_ms"],
         "pipeline alert p99 (median of the runs)"),
    Goal("pipeline_visible_p99_ms", "pipeline", at("visible_p99_ms"), *PIPELINE_GOALS["visible_p99_ms"],
         "pipeline visible p99 (median of the runs)"),
    Goal("pipeline_values_lost_or_doubled", "pipeline", lost_or_doubled, "==", 0,
         "values lost or doubled under saturation (worst run)"),
    Goal("storage_gpu_value_bytes", "storage", at("figures", "gpu_value_bytes"), "<=", GPU_VALUE_BYTES_GOAL,
         "bytes on disk per GPU value, after merges"),
    Goal("queries_slowest_cold_p50_ms", "queries", slowest("cold"), "<", GOAL_COLD_MS,
         "20 M points: slowest view, cold p50"),
    Goal("queries_slowest_warm_p50_ms", "queries", slowest("warm"), "<", GOAL_WARM_MS,
         "20 M points: slowest view, warm p50"),
    Goal("queries_1e9_slowest_cold_p50_ms", "queries_1e9", slowest("cold"), "<", GOAL_COLD_MS,
         "1e9 points: slowest view, cold p50"),
    Goal("queries_1e9_slowest_warm_p50_ms", "queries_1e9", slowest("warm"), "<", GOAL_WARM_MS,
         "1e9 points: slowest view, warm p50"),
]

# Not goals: the data set reached and the machine's speed while the figures were taken.
CONTEXT = {
    "queries_1e9_overlay_points": ("queries_1e9", at("overlay_points")),
    "pipeline_calibration_ms": ("pipeline", at("calibration_ms")),
    "idle_calibration_before_ms": ("idle", at("figures", "calibration_before_ms")),
    "idle_simulator_cpu_pct": ("idle", at("figures", "simulator_cpu_pct")),
}


@dataclass(frozen=True)
class Verdict:
    goal: Goal
    value: float | None  # None: the benchmark wrote no such figure
    note: str

    @property
    def met(self) -> bool:
        return self.value is not None and OPS[self.goal.op](self.value, self.goal.limit)


def judge(runs: Mapping[str, Figures]) -> list[Verdict]:
    """One verdict per goal from each benchmark's figures (by name); a missing file or figure misses."""
    verdicts = []
    for goal in GOALS:
        try:
            value, note = goal.read(runs[goal.bench])
        except (KeyError, TypeError, ValueError) as exc:
            value, note = None, f"no figure in {goal.bench}.json ({type(exc).__name__}: {exc})"
        verdicts.append(Verdict(goal, value, note))
    return verdicts


def context(runs: Mapping[str, Figures]) -> dict[str, float]:
    found = {}
    for name, (bench, read) in CONTEXT.items():
        try:
            found[name] = read(runs[bench])[0]
        except (KeyError, TypeError, ValueError):
            continue
    return found


def load(out: Path, benches: list[str]) -> dict[str, Figures]:
    """The JSON of each of `benches` that the run in `out` wrote (<name>.json)."""
    return {name: json.loads((out / f"{name}.json").read_text()) for name in benches
            if (out / f"{name}.json").exists()}


def figures(verdicts: list[Verdict], found: Mapping[str, float]) -> dict[str, Any]:
    """show.json: each goal's figure and whether it was met, the context, and all of them met or not."""
    result: dict[str, Any] = {"goals_met": all(v.met for v in verdicts)}
    for v in verdicts:
        result[v.goal.name] = v.value
        result[f"{v.goal.name}_met"] = v.met
    result.update(found)
    return result


def table(verdicts: list[Verdict], found: Mapping[str, float]) -> str:
    lines = [f"{'goal':<52} {'figure':>14} {'limit':>12}  verdict"]
    for v in verdicts:
        figure = "-" if v.value is None else f"{v.value:,.2f}"
        verdict = "met" if v.met else "NOT MET"
        lines.append(f"{v.goal.what:<52} {figure:>14} {v.goal.op + ' ' + f'{v.goal.limit:,g}':>12}  {verdict}"
                     + (f"  ({v.note})" if v.note else ""))
    if found:
        lines.append("machine and data: " + ", ".join(f"{k} {v:,.1f}" for k, v in found.items()))
    lines.append(f"all goals {'met' if all(v.met for v in verdicts) else 'NOT met'}")
    return "\n".join(lines)
