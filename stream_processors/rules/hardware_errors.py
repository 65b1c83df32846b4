"""hardware_errors: GPU ECC errors accumulating, clocks throttled, or a GPU that stopped answering.

Each check is its own alert per GPU (subject host, gpu, check), so a thermal throttle clearing does
not hide an ECC error on the same GPU. Severity is per rule, so the shipped file splits the checks
into a critical rule (uncorrected ECC, lost GPU) and a warning one (corrected ECC, throttling).

| check | active while |
|---|---|
| `ecc_uncorrected` | the volatile uncorrected ECC count rose at all within `window_s` |
| `ecc_corrected` | the corrected ECC count rose by more than `corrected_threshold` within `window_s` |
| `throttle_thermal`, `throttle_power`, `throttle_hw_slowdown` | that figure is 1 (clocks held down), and until it has been 0 for `clear_s` |
| `error` | the GPU entry carries an `error` (NVML lost it: fallen off the bus, reset required) |

| selector | default | meaning |
|---|---|---|
| `checks` | all of the above | a name or list of checks |

| param | default | meaning |
|---|---|---|
| `window_s` | `600` | how long an ECC rise keeps the check active |
| `corrected_threshold` | `100` | corrected errors within `window_s` that are tolerated |
| `clear_s` | `0` | how long a throttle flag must stay 0 before its check clears (hysteresis) |

`clear_s` is what lets a short `for` work on throttling, which NVML reports sample by sample: a GPU
throttling on and off every few seconds is held down the whole time, and without it each 0 sample
would clear the pending check before its `for` ran out.

A counter that goes down (driver reload) starts over. Values: `value` (the figure; 1 for
`error`) and, for ECC checks, `increase` (within the window).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params

_COUNTERS = ("ecc_uncorrected", "ecc_corrected")
_FLAGS = ("throttle_thermal", "throttle_power", "throttle_hw_slowdown")
CHECKS = _COUNTERS + _FLAGS + ("error",)


@dataclass
class _Gpu:
    counts: dict[str, float] = field(default_factory=dict)  # last value of each ECC counter
    rises: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)  # (time, increase)
    active: set[str] = field(default_factory=set)
    flagged: dict[str, float] = field(default_factory=dict)  # throttle flag -> event time last seen set

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Snapshots from before `flagged` restore without it."""
        self.__dict__.update({"flagged": {}, **state})


class HardwareErrors(Rule):
    kind: ClassVar[str] = "hardware_errors"
    consumes: ClassVar[frozenset[str]] = frozenset({"system"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        selector = Params(spec.selector, "selector.")
        self.checks = selector.names("checks", options=CHECKS) or CHECKS
        selector.done()
        params = Params(spec.params)
        self.window_s = params.duration("window_s", 600.0)
        self.clear_s = params.duration("clear_s", 0.0, positive=False)
        self.tolerated = {"ecc_uncorrected": 0.0, "ecc_corrected": params.number("corrected_threshold", 100.0,
                                                                                   minimum=0.0)}
        params.done()
        self._gpus: dict[tuple[str, int], _Gpu] = {}

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        host, at = event["host"], event["time"]
        out: list[Condition] = []
        for entry in event.get("gpus") or ():
            gpu = self._gpus.get((host, entry["index"]))
            if gpu is None:
                gpu = self._gpus[(host, entry["index"])] = _Gpu()
            for check in self.checks:
                values = self._judge(gpu, check, entry, at)
                if values is not None:
                    gpu.active.add(check)
                    out.append(Condition(self._subject(host, entry, check), True, at, values))
                elif check in gpu.active:
                    gpu.active.discard(check)
                    out.append(Condition(self._subject(host, entry, check), False, at))
        return out

    def _judge(self, gpu: _Gpu, check: str, entry: Mapping[str, Any], at: float) -> dict[str, float] | None:
        """The alert's values if `check` is active on this GPU now, else None."""
        if check == "error":
            return {"value": 1} if entry.get("error") else None
        value = entry["figures"].get(check)
        if check in _FLAGS:
            if value == 1:
                gpu.flagged[check] = at
                return {"value": 1}
            set_at = gpu.flagged.get(check)
            held = check in gpu.active and set_at is not None and at - set_at < self.clear_s
            return {"value": 1} if held else None
        rises = gpu.rises.setdefault(check, deque())
        last = gpu.counts.get(check)
        if value is not None:
            if last is not None and value > last:
                rises.append((at, value - last))
            gpu.counts[check] = value
        while rises and rises[0][0] < at - self.window_s:
            rises.popleft()
        increase = sum(rise for _, rise in rises)
        if increase > self.tolerated[check]:
            return {"value": gpu.counts[check], "increase": increase}
        return None

    @staticmethod
    def _subject(host: str, entry: Mapping[str, Any], check: str) -> dict[str, str]:
        return {"host": host, "gpu": str(entry["index"]), "check": check}
