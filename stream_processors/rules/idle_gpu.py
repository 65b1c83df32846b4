"""idle_gpu: a GPU sits nearly unused while its node runs a training job (paid for, doing nothing).

Active for each GPU whose `util_percent` is below `below` in a system sample that lists active runs;
the rule's `for` (default 300 s for this kind) says how long. A sample without runs, or with a
different set of runs, clears it (a new job is a new situation).

| param | default | meaning |
|---|---|---|
| `below` | `10` | utilisation (%) under which a GPU counts as idle |

No selector. Subject: host, gpu, runs (the node's active runs, comma-joined). Values: `value` (the
GPU's utilisation %).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params


class IdleGpu(Rule):
    kind: ClassVar[str] = "idle_gpu"
    consumes: ClassVar[frozenset[str]] = frozenset({"system"})
    default_for_s: ClassVar[float] = 300.0

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        Params(spec.selector, "selector.").done()
        params = Params(spec.params)
        self.below = params.number("below", 10.0, minimum=0.0, maximum=100.0)
        params.done()
        self._active: dict[tuple[str, str], dict[str, str]] = {}  # (host, gpu) -> its active subject

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        host, at = event["host"], event["time"]
        runs = ",".join(sorted(event.get("runs") or ()))
        out: list[Condition] = []
        for gpu in event.get("gpus") or ():
            index = str(gpu["index"])
            key = (host, index)
            util = gpu["figures"].get("util_percent")
            was = self._active.get(key)
            idle = bool(runs) and util is not None and util < self.below
            if was is not None and (not idle or was["runs"] != runs):
                del self._active[key]
                out.append(Condition(was, False, at))
            if idle:
                subject = self._active[key] = {"host": host, "gpu": index, "runs": runs}
                out.append(Condition(subject, True, at, {"value": util}))
        return out
