"""A run's schedule, derived once (``derive_schedule``) and stored in every checkpoint: how many
optimizer steps an epoch has, and from the step count the learning-rate factor and the DY-Conv
softmax temperature.

Steps per epoch depend on the number of processes: each of W processes reads 1/W of the training set,
so a run of W processes takes W times fewer (larger) steps per epoch, and its learning-rate schedule
and temperature annealing run on those steps. ``padnet eval`` and ``padnet export`` read the schedule
from the checkpoint, so a model rebuilt in one process evaluates with the temperature its run of
several processes ended with.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, UsageError
from ..temperature import TemperatureSchedule
from ..validation import validate
from .config import LrScheduler, RunConfig


class RunSchedule(BaseModel):
    """The step-indexed schedule of one run (steps counted per process, from 0)."""

    model_config = ConfigDict(strict=True, frozen=True, allow_inf_nan=False)

    # optimizer steps per epoch, in each process (each of accumulate_steps micro-batches)
    steps_per_epoch: Annotated[int, Field(ge=1)]
    epochs: Annotated[int, Field(ge=0)]
    warmup_steps: Annotated[int, Field(ge=0)]  # linear learning-rate warm-up
    lr_decay: LrScheduler  # after the warm-up: "cosine" (to 0 at the last step) or "constant"
    temperature_start: Annotated[float, Field(gt=0)]
    temperature_end: Annotated[float, Field(gt=0)]
    temperature_epochs: Annotated[float, Field(ge=0)]
    world_size: Annotated[int, Field(ge=1)] = 1  # the number of processes the steps were counted for
    accumulate_steps: Annotated[int, Field(ge=1)] = 1  # micro-batches per optimizer step

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_factor(self, step: int) -> float:
        """The learning rate at optimizer step ``step`` divided by the base rate."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_decay == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def temperature_at(self, step: int) -> float:
        """The DY-Conv softmax temperature at optimizer step ``step`` (``TemperatureSchedule``)."""
        tau = TemperatureSchedule(self.temperature_start, self.temperature_end, self.temperature_epochs)
        return tau.at_step(step, self.steps_per_epoch)

    def to_dict(self) -> dict:
        """Plain values, as a checkpoint stores them (loadable with ``torch.load(weights_only=True)``)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, raw) -> RunSchedule:
        """The schedule a checkpoint stored. Raises ``UsageError`` naming every bad key."""
        problems: list[str] = []
        schedule = validate(cls, raw, problems, "schedule")
        if problems or schedule is None:
            raise UsageError("; ".join(problems))
        return schedule


def derive_schedule(config: RunConfig, train_examples: int, world: int = 1) -> RunSchedule:
    """The schedule of a run of ``world`` processes on a training set of ``train_examples`` examples.

    Args:
        config: the run's config (``batch_size`` per process, ``epochs``, ``optim``, ``dynamic``).
        train_examples: the size of the whole training set.
        world: the number of processes, each reading ``train_examples // world`` examples per epoch.

    Raises ``ConfigError`` when the batch size leaves an epoch without a single step.
    """
    per_rank = train_examples // world
    accumulate = config.accumulate_steps
    steps_per_epoch = per_rank // config.batch_size // accumulate
    if steps_per_epoch < 1:
        batch = f"batch_size={config.batch_size}" + (f" x accumulate_steps={accumulate}" if accumulate > 1 else "")
        if world > 1:
            raise ConfigError([f"{batch} (per process) is larger than one process's share of the training set "
                               f"({train_examples} examples / {world} processes = {per_rank}); allowed: <= "
                               f"{per_rank}, or fewer processes"])
        raise ConfigError([f"{batch} is larger than the training set ({train_examples} examples); allowed: <= "
                           f"{train_examples}"])
    d = config.dynamic
    return RunSchedule(
        steps_per_epoch=steps_per_epoch, epochs=config.epochs,
        warmup_steps=int(round(config.optim.warmup_epochs * steps_per_epoch)), lr_decay=config.optim.scheduler,
        temperature_start=d.temperature_start, temperature_end=d.temperature_end,
        temperature_epochs=d.temperature_epochs, world_size=world, accumulate_steps=accumulate,
    )
