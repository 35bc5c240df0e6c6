"""One optimizer step, the same for the trainer's epochs, its partition warm-up and
``padnet.partition(..., warmup_steps=N)``.

It lives outside ``padnet.train`` because ``padnet.partition`` uses it and the trainer's package imports
the partition; it needs only the layers, the temperature and ``padnet.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .errors import NonFiniteLossError
from .layers import aux_loss
from .layers.protocol import DynamicConvCompute, MoECompute
from .temperature import set_temperature


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (the model itself when not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class StepRecipe:
    """What one optimizer step does besides the forward and backward pass."""

    loss_fn: Callable  # the task's loss_fn(model, batch)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped after the optimizer, if any
    grad_clip: float | None = None  # gradient-norm clipping, if any
    has_moe: bool = False  # add the MoE layers' load-balancing loss
    has_dyconv: bool = False  # set the DY-Conv softmax temperature before the forward

    @classmethod
    def for_model(cls, model: nn.Module, loss_fn: Callable, optimizer, **kwargs) -> StepRecipe:
        """The recipe for ``model``: the MoE loss and the temperature only where its layers use them."""
        return cls(loss_fn, optimizer, has_moe=any(isinstance(m, MoECompute) for m in model.modules()),
                   has_dyconv=any(isinstance(m, DynamicConvCompute) for m in model.modules()), **kwargs)


def train_step(model: nn.Module, batch, recipe: StepRecipe, temperature: float,
               where: Callable[[], str]) -> torch.Tensor:
    """One optimizer step on ``batch`` (already on the model's device); returns the step's loss, the
    mean over processes.

    Gradients are averaged over processes by DistributedDataParallel when ``model`` is wrapped in it,
    by hand otherwise (the partition warm-up, before the wrapper exists; a no-op in one process).

    Args:
        model: the model to train, in train mode.
        batch: one batch as the task's ``loss_fn`` takes it.
        recipe: the loss, optimizer, scheduler and clipping of this kind of step.
        temperature: the DY-Conv softmax temperature of this step.
        where: names the step in the error raised when the loss is not finite (built only then).

    Raises ``NonFiniteLossError`` before any weight changes when the loss is nan or inf in any process.
    """
    if recipe.has_dyconv:
        set_temperature(model, temperature)
    loss = recipe.loss_fn(model, batch)
    if recipe.has_moe:
        loss = loss + aux_loss(unwrap(model))
    # The mean over ranks (the loss itself in one process): non-finite on every rank when it is on any,
    # so all ranks stop at this step instead of waiting for each other.
    step_loss = distributed.mean(loss.detach())
    if not torch.isfinite(step_loss):
        ranks = over_ranks(distributed.world_size())
        raise NonFiniteLossError(f"non-finite loss ({float(step_loss)}{ranks}) {where()}")
    recipe.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if not isinstance(model, DistributedDataParallel):
        distributed.average_gradients(model.parameters())
    if recipe.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    recipe.optimizer.step()
    if recipe.scheduler is not None:
        recipe.scheduler.step()
    return step_loss


def over_ranks(world: int) -> str:
    return f", mean over {world} processes" if world > 1 else ""
