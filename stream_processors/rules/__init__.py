"""The rule kinds, registered in one place: add a module with a Rule subclass, then list it here.

A kind may also declare `default_severity` (else "warning") and `default_for_s` (else 0), which the
pipeline file's `severity` and `for` override.
"""

from __future__ import annotations

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.divergence import Divergence
from trainmon.stream_processors.rules.hardware_errors import HardwareErrors
from trainmon.stream_processors.rules.heartbeat_lost import HeartbeatLost
from trainmon.stream_processors.rules.idle_gpu import IdleGpu
from trainmon.stream_processors.rules.non_finite import NonFinite
from trainmon.stream_processors.rules.plateau import Plateau
from trainmon.stream_processors.rules.spike import Spike
from trainmon.stream_processors.rules.stalled import Stalled
from trainmon.stream_processors.rules.straggler import Straggler
from trainmon.stream_processors.rules.threshold import Threshold

RULE_KINDS: dict[str, type[Rule]] = {
    cls.kind: cls
    for cls in (Threshold, NonFinite, Plateau, Divergence, Spike, Stalled, HeartbeatLost, IdleGpu, Straggler,
                HardwareErrors)
}

__all__ = ["Condition", "RULE_KINDS", "Rule", "RuleSpec", "build_rule"]


def build_rule(spec: RuleSpec) -> Rule:
    """A fresh rule (with empty state) for `spec`; ValueError('<key>: <what>') when spec is invalid."""
    cls = RULE_KINDS.get(spec.kind)
    if cls is None:
        raise ValueError(f"kind: unknown rule kind {spec.kind!r} (known: {', '.join(RULE_KINDS)})")
    return cls(spec)
