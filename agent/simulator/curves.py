"""Training curves of a simulated run: what healthy loss, validation loss, accuracy and learning rate
look like, cheap enough to evaluate for every rank at every step.

The healthy curves are shaped so the shipped rules stay quiet on them for a long time (that is what
makes an injected fault the only thing that fires):
- the loss keeps improving across the last 40 % of the run by more than the plateau rule's 2 %
  beyond its noise (a power-law tail under the early exponential drop, a low floor, 1 % noise):
  the shipped loss_plateau stayed silent over 120-minute healthy runs (144,000 steps);
- validation noise is a fraction of the validation curve's own slope, so validation does not rise
  6 noise widths above its recent lowest two points in a row by chance (the overfitting rule).
Faults swap a run's curve for one of the wrappers at the end (Plateau, Overfitting).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

NOISE_TABLE = 1 << 16
LOSS_NOISE = 0.01  # relative per-batch noise of the training loss
VAL_NOISE_OF_SLOPE = 0.2  # validation noise, as a fraction of its drop over one validation interval
CHANCE, TOP_ACCURACY = 0.1, 0.93  # a 10-class problem: accuracy starts at chance
PLATEAU_DRIFT = 2e-6  # per step: a stuck loss creeps up 0.2 % per 1,000 steps, so noise makes no new best
OVERFIT_RISE = 2e-4  # per step: validation loss rises 2 % per 100 steps...
OVERFIT_FALL = 3e-4  # ...while training loss, memorising, falls 3 % per 100 steps (well beyond its noise)


class Noise:
    """Standard-normal draws from a seeded, precomputed table: a list index per draw instead of a
    random.gauss call, which is most of what lets one core generate 200,000+ values per second."""

    def __init__(self, rng: random.Random, size: int = NOISE_TABLE) -> None:
        self.table = [rng.gauss(0.0, 1.0) for _ in range(size)]
        self._mask = size - 1
        self._cursor = 0

    def __call__(self) -> float:
        self._cursor = cursor = (self._cursor + 1) & self._mask
        return self.table[cursor]

    def clip(self, limit: float) -> None:
        """No draw beyond +-limit from now on: noise that stays noise, never a spike by chance."""
        self.table = [max(-limit, min(limit, x)) for x in self.table]

    def rows(self, count: int, width: int, scale: float) -> list[list[float]]:
        """`count` rows of `width` factors 1 + scale * noise: per-layer jitter drawn a row at a time."""
        return [[1.0 + scale * self() for _ in range(width)] for _ in range(count)]


class Curve(Protocol):
    """Expected (noise-free) training and validation loss at a step."""

    def loss(self, step: int) -> float: ...

    def val_loss(self, step: int) -> float: ...


@dataclass(frozen=True, slots=True)
class Healthy:
    """loss = floor + fast * exp(-step / tau_fast) + slow / sqrt(1 + step / tau_slow); validation sits
    a little above it."""

    floor: float
    fast: float
    tau_fast: float
    slow: float
    tau_slow: float
    val_gap: float

    def loss(self, step: int) -> float:
        return self.floor + self.fast * math.exp(-step / self.tau_fast) + self.slow / math.sqrt(1.0 + step / self.tau_slow)

    def val_loss(self, step: int) -> float:
        return 1.04 * self.loss(step) + self.val_gap

    @property
    def start(self) -> float:
        return self.floor + self.fast + self.slow


@dataclass(frozen=True, slots=True)
class Plateau:
    """Training stopped improving at `from_step`: the loss holds its level (creeping up slightly) and
    validation barely moves (still down, so it cannot look like overfitting)."""

    level: float
    val_level: float
    from_step: int

    @classmethod
    def of(cls, curve: Curve, from_step: int) -> Plateau:
        return cls(curve.loss(from_step), curve.val_loss(from_step), from_step)

    def loss(self, step: int) -> float:
        return self.level * (1.0 + PLATEAU_DRIFT * max(0, step - self.from_step))

    def val_loss(self, step: int) -> float:
        return self.val_level * (1.0 - PLATEAU_DRIFT * max(0, step - self.from_step))


@dataclass(frozen=True, slots=True)
class Overfitting:
    """From `from_step` the training loss falls faster (memorising) while validation loss rises."""

    base: Curve
    val_level: float
    from_step: int

    @classmethod
    def of(cls, curve: Curve, from_step: int) -> Overfitting:
        return cls(curve, curve.val_loss(from_step), from_step)

    def loss(self, step: int) -> float:
        return self.base.loss(step) * math.exp(-OVERFIT_FALL * max(0, step - self.from_step))

    def val_loss(self, step: int) -> float:
        return self.val_level * (1.0 + OVERFIT_RISE * max(0, step - self.from_step))


def val_noise_scale(curve: Curve, step: int, every: int) -> float:
    """Standard deviation of a validation point: a fraction of the curve's move over one interval."""
    return VAL_NOISE_OF_SLOPE * abs(curve.val_loss(max(0, step - every)) - curve.val_loss(step))


def accuracy(loss: float, start: float, floor: float) -> float:
    """Accuracy that tracks a loss: chance at the start loss, TOP_ACCURACY at the floor."""
    progress = (start - loss) / (start - floor)
    return CHANCE + (TOP_ACCURACY - CHANCE) * min(1.0, max(0.0, progress))


@dataclass(frozen=True, slots=True)
class LearningRate:
    """Linear warm-up to `peak`, then cosine decay to `peak * final_ratio` at `horizon`, flat after."""

    peak: float
    warmup: int
    horizon: int
    final_ratio: float = 0.05

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        done = min(1.0, (step - self.warmup) / max(1, self.horizon - self.warmup))
        low = self.peak * self.final_ratio
        return low + 0.5 * (self.peak - low) * (1.0 + math.cos(math.pi * done))
