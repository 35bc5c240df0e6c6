"""Temperature annealing for DY-Conv attention (docs/method.md#temperature)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import UsageError
from .layers.dynamic_conv import DynamicConvCompute


def set_temperature(model: nn.Module, tau: float) -> int:
    """Set the softmax temperature of every softmax-routed dynamic conv in ``model``: DY-Conv, PAD and
    deployed PAD layers alike (every form that computes with ``DynamicConvCompute``).

    CondConv layers (sigmoid routing) have no temperature and are left as they are. Returns the
    number of layers set.
    """
    if not tau > 0:
        raise UsageError(f"temperature tau={tau!r} must be > 0")
    count = 0
    for module in model.modules():
        if isinstance(module, DynamicConvCompute) and module.routing == "softmax":
            module.temperature = float(tau)
            count += 1
    return count


@dataclass(frozen=True)
class TemperatureSchedule:
    """Linear annealing from ``start`` to ``end`` over the first ``epochs`` epochs, then ``end``.

    ``schedule(progress)`` takes training progress in epochs, fractional within an epoch:
    tau = start + (end - start) * min(progress / epochs, 1). ``schedule.at_step(step, steps_per_epoch)``
    is the same at optimizer step ``step`` (0-based), so the value changes every step, not only at
    epoch boundaries. With the defaults tau = 30 at step 0 and 1 from epoch 10 on. (The reference code
    starts at 31 = 1 + 30; pass ``start=31`` to match it.)
    """

    start: float = 30.0
    end: float = 1.0
    epochs: float = 10

    def __post_init__(self):
        if not (self.start > 0 and self.end > 0):
            raise UsageError(f"temperatures must be > 0; got start={self.start!r}, end={self.end!r}")
        if not self.epochs >= 0:
            raise UsageError(f"epochs={self.epochs!r} must be >= 0")

    def __call__(self, progress: float) -> float:
        if progress < 0:
            raise UsageError(f"progress={progress!r} must be >= 0 (epochs since the start)")
        if self.epochs == 0 or progress >= self.epochs:
            return float(self.end)
        return float(self.start + (self.end - self.start) * progress / self.epochs)

    def at_step(self, step: int, steps_per_epoch: int) -> float:
        """The temperature at optimizer step ``step`` of a run with ``steps_per_epoch`` steps an epoch."""
        if steps_per_epoch < 1:
            raise UsageError(f"steps_per_epoch={steps_per_epoch!r} must be >= 1")
        return self(step / steps_per_epoch)
