"""threshold: one figure compared to a value; the rule's `for` says how long it must hold.

The source is a training metric (metrics events) or a system figure, of the host or of each GPU
(system events). `ratio_of` divides by a second figure of the same source first, so "GPU memory
above 95 %" is `figure: mem_used_bytes, scope: gpu` with `ratio_of: mem_total_bytes, value: 0.95`.

| selector | default | meaning |
|---|---|---|
| `metric` | - | a training metric name (subject: project, run, rank, metric) |
| `rank` | all ranks | with `metric`: only this rank |
| `figure` | - | a system figure name (give `metric` or `figure`, not both) |
| `scope` | `gpu` | with `figure`: `gpu` (subject: host, gpu) or `host` (subject: host) |

| param | default | meaning |
|---|---|---|
| `op` | `>` | one of `>`, `>=`, `<`, `<=` |
| `value` | required | the threshold |
| `ratio_of` | none | compare figure / this figure (skipped while it is missing or 0) |
| `clear` | `value` | once the condition holds, it holds until the figure is back past this (hysteresis) |

`clear` is what lets the hardware rules use a short `for` without flapping: a GPU at 85-86 °C fires
once (`value: 85`) and resolves once it is back at 80 (`clear: 80`), not on every sample that dips
below 85. It must lie on the clearing side of `value` (below it for `>`/`>=`, above it for `<`/`<=`).

Values on the alert: `value` (the compared figure or ratio) and `threshold`.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


class Threshold(Rule):
    kind: ClassVar[str] = "threshold"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics", "system"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        selector = Params(spec.selector, "selector.")
        metric = selector.name("metric", None)
        self.rank = selector.count("rank", None)
        figure = selector.name("figure", None)
        self.per_gpu = selector.choice("scope", "gpu", ("gpu", "host")) == "gpu"
        selector.done()
        if (metric is None) == (figure is None):
            raise ValueError("selector.metric: give exactly one of selector.metric or selector.figure")
        self.training = metric is not None
        self.name: str = metric or figure  # type: ignore[assignment]
        params = Params(spec.params)
        self.op = _OPS[params.choice("op", ">", tuple(_OPS))]
        self.value = params.number("value", None)
        self.ratio_of = params.name("ratio_of", None)
        self.clear = params.number("clear", self.value)
        params.done()
        if self.op(self.clear, self.value) and self.clear != self.value:
            raise ValueError(f"clear: {self.clear:g} is on the firing side of value {self.value:g}; "
                             "it must be where the figure goes back to")
        # Narrowed per instance so the engine routes only the selected source's events here.
        self.consumes = frozenset({"metrics" if self.training else "system"})  # type: ignore[misc]
        self._active: set[tuple[str, ...]] = set()

    def _figure(self, figures: Mapping[str, float]) -> float | None:
        """The compared figure (or ratio), None when it is not in this event."""
        x = figures.get(self.name)
        if x is None or self.ratio_of is None:
            return x
        total = figures.get(self.ratio_of)
        return x / total if total else None

    def _verdict(self, key: tuple[str, ...], subject: dict[str, str], x: float | None, at: float,
                 out: list[Condition]) -> None:
        if x is not None and self.op(x, self.clear if key in self._active else self.value):
            self._active.add(key)
            out.append(Condition(subject, True, at, {"value": x, "threshold": self.value}))
        elif key in self._active:
            self._active.discard(key)
            out.append(Condition(subject, False, at))

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        if self.training:
            return self._on_metrics(event)
        out: list[Condition] = []
        host, at = event["host"], event["time"]
        if not self.per_gpu:
            self._verdict((host,), {"host": host}, self._figure(event["figures"]), at, out)
            return out
        for gpu in event.get("gpus") or ():
            index = str(gpu["index"])
            self._verdict((host, index), {"host": host, "gpu": index}, self._figure(gpu["figures"]), at, out)
        return out

    def _on_metrics(self, event: Mapping[str, Any]) -> Iterable[Condition]:
        values = event["values"]
        if self.name not in values or (self.rank is not None and event["rank"] != self.rank):
            return ()
        key = (event["run"], str(event["rank"]))
        x = self._figure(values)
        if key not in self._active and (x is None or not self.op(x, self.value)):  # (value: not active)
            return ()  # the common case: within bounds and not alerting, nothing built
        out: list[Condition] = []
        subject = {"project": event["project"], "run": key[0], "rank": key[1], "metric": self.name}
        self._verdict(key, subject, x, event["time"], out)
        return out

    def forget(self, run: str) -> None:
        if self.training:
            self._active = {key for key in self._active if key[0] != run}
