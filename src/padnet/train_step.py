"""One optimizer step, the same for the trainer's epochs, its partition warm-up and
``padnet.partition(..., warmup_steps=N)``.

It lives outside ``padnet.train`` because ``padnet.partition`` uses it and the trainer's package imports
the partition; it needs only the layers, the temperature and ``padnet.distributed``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .errors import NonFiniteLossError
from .layers import aux_loss
from .layers.protocol import DynamicConvCompute, MoECompute
from .temperature import set_temperature

# A run's ``precision`` as the dtype ``torch.autocast`` computes in (None: no autocast).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s and ``DistributedDataParallel``'s wrappers (the model itself
    when not wrapped)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, DistributedDataParallel) else model


def ddp_of(model: nn.Module) -> DistributedDataParallel | None:
    """The ``DistributedDataParallel`` wrapper of ``model`` (under ``torch.compile``'s, if any); None if none."""
    model = getattr(model, "_orig_mod", model)
    return model if isinstance(model, DistributedDataParallel) else None


def autocast(device_type: str, precision: str):
    """``torch.autocast`` on ``device_type`` for a run's ``precision`` (fp32: a context that does nothing)."""
    dtype = AUTOCAST_DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


@dataclass
class StepRecipe:
    """What one optimizer step does besides the forward and backward pass."""

    loss_fn: Callable  # the task's loss_fn(model, batch)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped after the optimizer, if any
    grad_clip: float | None = None  # gradient-norm clipping, if any
    has_moe: bool = False  # add the MoE layers' load-balancing loss
    has_dyconv: bool = False  # set the DY-Conv softmax temperature before the forward
    precision: str = "fp32"  # the forward and the loss under torch.autocast (AUTOCAST_DTYPES)
    device_type: str = "cpu"  # where autocast applies
    scaler: torch.amp.GradScaler | None = None  # float16: the loss is scaled before the backward

    @classmethod
    def for_model(cls, model: nn.Module, loss_fn: Callable, optimizer, **kwargs) -> StepRecipe:
        """The recipe for ``model``: the MoE loss and the temperature only where its layers use them."""
        return cls(loss_fn, optimizer, has_moe=any(isinstance(m, MoECompute) for m in model.modules()),
                   has_dyconv=any(isinstance(m, DynamicConvCompute) for m in model.modules()), **kwargs)


def train_step(model: nn.Module, micro_batches: Sequence, recipe: StepRecipe, temperature: float,
               where: Callable[[], str]) -> torch.Tensor:
    """One optimizer step on ``micro_batches`` (each already on the model's device, their gradients
    accumulated: N micro-batches of B examples step as one batch of N x B does, up to BatchNorm's
    statistics, which each micro-batch computes over its own B); returns the step's loss, the mean over
    micro-batches and processes.

    Gradients are averaged over processes by DistributedDataParallel when ``model`` is wrapped in it (only
    at the last micro-batch's backward: ``no_sync`` before), by hand otherwise (the partition warm-up,
    before the wrapper exists; a no-op in one process).

    Args:
        model: the model to train, in train mode (possibly ``torch.compile``d).
        micro_batches: the batches of this step, as the task's ``loss_fn`` takes them.
        recipe: the loss, optimizer, scheduler, clipping and precision of this kind of step.
        temperature: the DY-Conv softmax temperature of this step.
        where: names the step in the error raised when the loss is not finite (built only then).

    Raises ``NonFiniteLossError`` before any weight changes when a loss is nan or inf in any process.
    """
    if recipe.has_dyconv:
        set_temperature(model, temperature)
    recipe.optimizer.zero_grad(set_to_none=True)
    ddp, count, losses = ddp_of(model), len(micro_batches), []
    for i, batch in enumerate(micro_batches):
        with ddp.no_sync() if ddp is not None and i < count - 1 else contextlib.nullcontext():
            with autocast(recipe.device_type, recipe.precision):
                loss = recipe.loss_fn(model, batch)
                if recipe.has_moe:
                    loss = loss + aux_loss(unwrap(model))
            # The mean over ranks (the loss itself in one process): non-finite on every rank when it is on
            # any, so all ranks stop at this step instead of waiting for each other.
            losses.append(distributed.mean(loss.detach()))
            if not torch.isfinite(losses[-1]):
                ranks = over_ranks(distributed.world_size())
                raise NonFiniteLossError(f"non-finite loss ({float(losses[-1])}{ranks}) {where()}")
            loss = loss / count
            (loss if recipe.scaler is None else recipe.scaler.scale(loss)).backward()
    parameters = list(unwrap(model).parameters())
    if ddp is None:
        distributed.average_gradients(parameters)
    if recipe.grad_clip:
        if recipe.scaler is not None:
            recipe.scaler.unscale_(recipe.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, recipe.grad_clip)
    if recipe.scaler is None:
        recipe.optimizer.step()
    else:  # skips the step when the scaled gradients overflowed, and adapts the scale
        recipe.scaler.step(recipe.optimizer)
        recipe.scaler.update()
    if recipe.scheduler is not None:
        recipe.scheduler.step()
    return torch.stack(losses).mean()


def over_ranks(world: int) -> str:
    return f", mean over {world} processes" if world > 1 else ""
