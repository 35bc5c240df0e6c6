"""The trainer's building blocks that hold no run state (torchvision references style): one training
step (``train_step``, shared by the epoch loop and the partition warm-up), evaluation (``evaluate``),
the eval loader, and moving batches to the run's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..errors import NonFiniteLossError
from ..layers import DynamicConvCompute, MoECompute, aux_loss
from ..summary import summary
from ..temperature import set_temperature
from . import distributed
from .config import RunConfig
from .tasks import TaskParts


# --------------------------------------------------------------------------------------- data
def to_device(batch, device):
    """Move tensors, and tensors inside dicts/lists/tuples, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if hasattr(batch, "to") and callable(batch.to):  # e.g. transformers.BatchEncoding
        return batch.to(device)
    return batch


class DeviceLoader:
    """A loader whose batches arrive on ``device``."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            yield to_device(batch, self.device)

    def __len__(self):
        return len(self.loader)


def eval_loader(config: RunConfig, parts: TaskParts) -> DataLoader:
    """The task's eval set in order, in batches of ``eval_batch_size``."""
    generator = torch.Generator().manual_seed(0)  # keeps eval from drawing on the global RNG
    return DataLoader(parts.eval_dataset, batch_size=config.eval_batch_size, shuffle=False,
                      collate_fn=parts.collate_fn, num_workers=config.num_workers, generator=generator)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (the model itself when not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# --------------------------------------------------------------------------------------- train
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


def train_step(model: nn.Module, batch, recipe: StepRecipe, temperature: float, where: Callable[[], str]) -> torch.Tensor:
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
        raise NonFiniteLossError(f"non-finite loss ({float(step_loss)}{over_ranks(distributed.world_size())}) {where()}")
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


def progress(iterable, enabled: bool, desc: str):
    """``iterable`` under a tqdm bar when ``enabled`` and tqdm is installed."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------- evaluate
def evaluate(model: nn.Module, parts: TaskParts, loader, task: str) -> dict:
    """The task's eval metrics of ``model`` on ``loader`` (no gradients, eval mode; the model is left in
    train mode). Raises ``KeyError`` when the task's ``evaluate`` omits its main metric, and
    ``NonFiniteLossError`` when a metric is nan or inf."""
    model.eval()
    with torch.no_grad():
        metrics = parts.evaluate(model, loader)
    model.train()
    if parts.main_metric not in metrics:
        raise KeyError(f"task {task!r}: evaluate() returned {sorted(metrics)}, without its "
                       f"main_metric {parts.main_metric!r}")
    metrics = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in metrics.items()}
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        # Like a non-finite training loss: stop, keep the last good checkpoint, write no results.
        raise NonFiniteLossError(
            f"non-finite evaluation metrics ({', '.join(f'{k}={metrics[k]}' for k in bad)}): the run stopped "
            "and no checkpoint or results were written for this epoch. Lower optim.lr or set optim.grad_clip "
            "and start a new run_dir."
        )
    return metrics


def deployable_parameters(model: nn.Module) -> int:
    """The parameters the model deploys with (all of them for a model without dynamic layers)."""
    # A model without dynamic layers deploys all its parameters; summary counts them as "other".
    return int(summary(unwrap(model)).deployable_params)
