"""Evaluation for the trainer, holding no run state (torchvision references style): ``evaluate``, the
eval loader, the progress bar, and moving batches to the run's device. The training step itself is
``padnet.train_step`` (shared by the epoch loop and the partition warm-ups).
"""

from __future__ import annotations

import math
from collections.abc import Sized

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import NonFiniteLossError
from ..summary import summary
from ..train_step import unwrap
from .config import RunConfig
from .tasks import TaskParts


# --------------------------------------------------------------------------------------- data
def to_device(batch, device, memory_format: torch.memory_format | None = None):
    """Move tensors, and tensors inside dicts/lists/tuples, to ``device``; with ``memory_format``
    (``torch.channels_last``) the 4-d floating ones (image batches) take that memory format."""
    if isinstance(batch, torch.Tensor):
        if memory_format is not None and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=memory_format)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)({k: to_device(v, device, memory_format) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device, memory_format) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if hasattr(batch, "to") and callable(batch.to):  # e.g. transformers.BatchEncoding
        return batch.to(device)
    return batch


class DeviceLoader:
    """A loader whose batches arrive on ``device`` (image batches in ``memory_format``, if given)."""

    def __init__(self, loader, device, memory_format: torch.memory_format | None = None):
        self.loader, self.device, self.memory_format = loader, device, memory_format

    def __iter__(self):
        for batch in self.loader:
            yield to_device(batch, self.device, self.memory_format)

    def __len__(self):
        return len(self.loader)


def dataset_size(dataset: Dataset) -> int:
    """The number of examples of a task's dataset. torch's ``Dataset`` declares no ``__len__``, but the
    trainer's datasets are map-style (its samplers draw indices), so they have one; a ``TypeError`` otherwise."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"a task's datasets must be map-style, with a length: {type(dataset).__name__} has none")
    return len(dataset)


def eval_loader(config: RunConfig, parts: TaskParts) -> DataLoader:
    """The task's eval set in order, in batches of ``eval_batch_size``."""
    generator = torch.Generator().manual_seed(0)  # keeps eval from drawing on the global RNG
    return DataLoader(parts.eval_dataset, batch_size=config.eval_batch_size, shuffle=False,
                      collate_fn=parts.collate_fn, num_workers=config.num_workers, generator=generator)


# --------------------------------------------------------------------------------------- train
def progress(iterable, enabled: bool, desc: str):
    """``iterable`` under a tqdm bar when ``enabled``."""
    if not enabled:
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
    metrics = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
               for k, v in metrics.items()}
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
