"""What alerts ask of a multi-rank trainer, recorded per rank and agreed on by all (Lightning, transformers).

Each rank follows the alerts itself and reads them at its own step, and a hardware alert (about a
host, naming no run) reaches only the ranks of that host: acting at delivery would stop one rank
alone (the others then hang in their next collective) or change one replica's learning rate (the
replicas drift apart). So the `on_alert` callbacks here only record, and every `sync_every` steps
the framework callback has every rank OR the flags together (`agree`) and act alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import trainmon
from trainmon.agent.alert_actions import HARDWARE_RULES, SPIKE_RULES, STOP_RULES

# [stop, hardware, spike] -> each OR-ed over all ranks (a collective: every rank calls it at the same step)
Reduce = Callable[[list[bool]], list[bool]]
# What `alert_actions.scale_lr`'s callback is given after an agreement: the spike's alert may have
# reached another rank only, so there is no alert of this rank to pass
AGREED_SPIKE: dict[str, Any] = {"state": "firing", "rule": "a loss spike on some rank"}


@dataclass(frozen=True)
class Decision:
    """What every rank does now, the same on all of them."""

    stop: bool  # end training (after the save, if any)
    save: bool  # a hardware error somewhere: every rank takes part in one checkpoint save
    scale_lr: bool  # a loss spike (only with an lr_factor): every rank scales its learning rate alike


class AlertFlags:
    """The flags of one framework callback: the stop rules request the run's stop, a hardware rule
    asks for a checkpoint and a stop, and (only when `lr_factor` is given) a spike rule asks for the
    learning rate times `lr_factor`. Rule names default to the shipped pipeline's."""

    def __init__(self, *, stop_rules: Iterable[str] = STOP_RULES, hardware_rules: Iterable[str] = HARDWARE_RULES,
                 spike_rules: Iterable[str] = SPIKE_RULES, lr_factor: float | None = None,
                 sync_every: int = 50) -> None:
        if lr_factor is not None and not 0.0 < lr_factor:
            raise ValueError(f"lr_factor must be > 0, got {lr_factor!r}")
        if not (isinstance(sync_every, int) and sync_every >= 1):
            raise ValueError(f"sync_every must be an int >= 1, got {sync_every!r}")
        self.stop_rules, self.hardware_rules = tuple(stop_rules), tuple(hardware_rules)
        self.spike_rules = tuple(spike_rules)
        self.lr_factor, self.sync_every = lr_factor, sync_every
        self.run: trainmon.Run | None = None
        self._hardware = self._spike = False  # seen on this rank since the last agreement

    def follow(self, run: trainmon.Run) -> None:
        """Register with `run` (once per run). Call it in the training thread: the SDK delivers
        alerts in the thread of the first `on_alert` call."""
        if run is self.run:
            return
        self.run = run
        run.on_alert(run.request_stop, rules=self.stop_rules)
        run.on_alert(self._record_hardware, rules=self.hardware_rules)
        if self.lr_factor is not None:  # opt-in: a spike is not always the learning rate's fault
            run.on_alert(self._record_spike, rules=self.spike_rules)

    def due(self, step: int) -> bool:
        """Whether `step` is an agreement step (the same answer on every rank at the same step)."""
        return step % self.sync_every == 0

    def agree(self, reduce: Reduce) -> Decision:
        """Every rank's flags OR-ed with `reduce`; the save and the scaling are then taken as done."""
        if self.run is None:
            return Decision(False, False, False)
        stop, save, spike = reduce([self.run.stop_requested, self._hardware, self._spike])
        self._hardware = self._spike = False
        return Decision(stop=stop or save, save=save, scale_lr=spike)

    def _record_hardware(self, alert: dict[str, Any]) -> None:
        self._hardware = True

    def _record_spike(self, alert: dict[str, Any]) -> None:
        self._spike = True
