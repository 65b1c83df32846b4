"""What the framework tests share: importing a framework (skip, or fail under CI), a publisher
that records the SDK's events, and reading a run back from ClickHouse."""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import pytest

from tests.conftest import IN_CI
from trainmon.settings import Settings


def require(module: str, *, load: bool = True) -> ModuleType | None:
    """Import a framework (or, with load=False, only find it: for one a subprocess will import): a
    missing one skips the test or module, or fails it under CI=true (where `make test-frameworks`
    installed them: missing means the set-up is broken)."""
    try:
        if not load:
            if importlib.util.find_spec(module) is None:
                raise ImportError(f"No module named {module!r}")
            return None
        return importlib.import_module(module)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and {module} cannot be imported ({exc}): `make test-frameworks` installs it",
                        pytrace=False)
        pytest.skip(f"{module} is not installed ({exc}): `make test-frameworks` installs it", allow_module_level=True)


class Recorder:
    """A publisher for `trainmon.init(publisher=...)` that keeps the events, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, event: dict[str, Any]) -> bool:
        self.events.append(event)
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        pass

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["kind"] == kind]

    def points(self, name: str) -> list[tuple[int, float | None, float]]:
        """(step, epoch, value) of every logged value of `name`, in logging order."""
        return [(e["step"], e.get("epoch"), e["values"][name]) for e in self.kinds("metrics") if name in e["values"]]

    def config(self) -> dict[str, Any]:
        """The run's config as the processors merge it: run_start's, then each run_meta's on top."""
        merged: dict[str, Any] = {}
        for event in self.events:
            if event["kind"] in ("run_start", "run_meta"):
                merged.update(event.get("config") or {})
        return merged

    def model(self) -> dict[str, Any]:
        (event,) = [e for e in self.kinds("run_meta") if "model" in e]
        return event["model"]

    def phases(self) -> list[str | None]:
        """The phase of each heartbeat sent when the phase changed (periodic ones repeat it)."""
        changes: list[str | None] = []
        for beat in self.kinds("heartbeat"):
            phase = beat.get("phase")
            if not changes or changes[-1] != phase:
                changes.append(phase)
        return changes


@dataclass
class Sink:
    """Kafka topics read by a `trainmon process` worker writing ClickHouse; what a run left there."""

    settings: Settings
    client: Any  # clickhouse_connect client
    wait_until: Callable[..., Any]

    def points(self, run: str, count: int, timeout_s: float = 60.0) -> list[tuple[str, int, float, float]]:
        """(name, step, epoch, value) rows of the run, once `count` have arrived."""
        def rows() -> list[tuple[str, int, float, float]] | None:
            found = self.client.query("SELECT name, step, epoch, value FROM metric_points FINAL WHERE run = {r:String} "
                                      "ORDER BY name, step", parameters={"r": run}).result_rows
            return [tuple(row) for row in found] if len(found) >= count else None

        return self.wait_until(rows, timeout_s, f"{count} metric points of {run} in ClickHouse")

    def run_row(self, run: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The run's snapshot once it has ended: status, config and model decoded."""
        def row() -> dict[str, Any] | None:
            found = self.client.query("SELECT status, config, model, last_step FROM runs FINAL WHERE run = {r:String}",
                                      parameters={"r": run}).result_rows
            if not found or found[0][0] == "running":
                return None
            status, config, model, last_step = found[0]
            return {"status": status, "config": json.loads(config), "model": json.loads(model), "last_step": last_step}

        return self.wait_until(row, timeout_s, f"the ended run {run} in ClickHouse")
