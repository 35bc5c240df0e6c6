"""Task registry: how a task (image classification, GLUE, ...) plugs into padnet's trainer.

A task is registered once, by name, with a builder and the config sections it reads::

    from padnet.train.tasks import TaskParts, register_task

    @dataclass
    class GlueConfig:                      # becomes the ``glue:`` section of a run config
        task_name: str = "sst2"            # the comment is the key's sentence in ``padnet config --explain``
        model: str = "bert-base-uncased"
        max_length: Annotated[int, Field(ge=8)] = 128   # bounds and choices (``Literal``) as pydantic reads them
        def problems(self) -> list[str]:   # optional: rules across keys, each problem a line
            return []

    def build_glue(config) -> TaskParts:   # config: padnet.train.config.RunConfig
        glue = config.section("glue", GlueConfig)
        ...
        return TaskParts(model=..., train_dataset=..., eval_dataset=..., loss_fn=..., evaluate=...,
                         main_metric="accuracy", collate_fn=...)

    register_task("glue", build_glue, sections={"glue": GlueConfig}, check=None)

Then a YAML with ``task: glue``, a ``glue:`` section and ``dynamic: {mode: pad, kind: moe}`` runs with
``padnet train``. ``get_task(name)`` imports the module listed in ``TASK_MODULES`` on first use (padnet's
own tasks) or loads the installed entry point of that name (group ``padnet.tasks``); a module of your
own is named with ``imports: [my_module]`` in the config or ``--import path/to/my_module.py`` (``padnet.plugins``).

The contract, what the trainer does with ``TaskParts``:

- ``model``: an ``nn.Module`` in its *static* form. The trainer converts it (``padnet.convert.convert``
  with ``config.dynamic``: ``kind="conv"`` or ``"moe"``), partitions it (``mode: pad``), compacts it,
  moves it to the device. The task never converts.
- ``train_dataset`` / ``eval_dataset``: map-style datasets. The trainer builds the ``DataLoader``s itself
  (``collate_fn`` is passed through) because it owns the data order: a generator seeded per epoch
  (bit-identical resume) and, later, a ``DistributedSampler`` (``Trainer.train_sampler`` is the hook).
- ``loss_fn(model, batch) -> scalar tensor``: the task loss of one batch, with the batch already moved
  to the model's device (tensors, and tensors inside dicts/lists/tuples, are moved). The trainer adds
  ``padnet.aux_loss(model)`` when the model has MoE layers; the task must not. The same function
  scores the partition (in eval mode).
- ``evaluate(model, batches) -> dict[str, float]``: metrics over an iterable of batches (already on the
  device; the model is already in eval mode under ``torch.no_grad``). It must contain ``main_metric``.
- ``info``: a JSON-able dict recorded in ``results.json`` (dataset sizes, label names, ...).
- ``predict``: what ``padnet predict`` needs (task, label names, input preprocessing), JSON-able;
  ``padnet export`` writes it into the model file (``padnet.predict``). None: the model cannot predict
  on new inputs from its file alone.
- ``check(config) -> list[str]`` (at registration): pre-flight checks run during config validation,
  before any work starts, e.g. "is the data there"; each string names the key, the value and the fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..errors import UsageError
from ..plugins import load_entry_point, task_entry_points

# name -> module whose import registers it (imported lazily, on first use of the name).
TASK_MODULES = {
    "image_classification": "padnet.train.vision",
    "glue": "padnet.text",
    "text_classification": "padnet.text",
}


@dataclass
class TaskParts:
    model: nn.Module
    train_dataset: Dataset
    eval_dataset: Dataset
    loss_fn: Callable[[nn.Module, Any], Any]
    evaluate: Callable[[nn.Module, Iterable], dict[str, float]]
    main_metric: str = "accuracy"
    collate_fn: Callable | None = None
    info: dict = field(default_factory=dict)
    # What prediction on new inputs needs, written into the exported model file (``padnet predict``):
    # {"task": ..., "problem": "classification" or "regression", "label_names": [...], "input": {...}}
    # where "input" is a preprocessing record (``padnet.data.transforms``) or {"kind": "text", ...}.
    predict: dict | None = None


@dataclass(frozen=True)
class Task:
    name: str
    builder: Callable[[Any], TaskParts]
    sections: dict[str, type] = field(default_factory=dict)
    check: Callable[[Any], list[str]] | None = None


_REGISTRY: dict[str, Task] = {}


def register_task(name: str, builder: Callable[[Any], TaskParts], sections: dict[str, type] | None = None,
                  check: Callable[[Any], list[str]] | None = None) -> Task:
    """Register (or replace) a task. ``sections`` maps config section names to dataclasses."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"task name {name!r} must be a non-empty string")
    reserved = {"dynamic", "partition", "optim", "ema", "sections"}
    clash = reserved & set(sections or {})
    if clash:
        raise UsageError(f"task {name!r}: section names {sorted(clash)} are reserved for the trainer")
    task = Task(name, builder, dict(sections or {}), check)
    _REGISTRY[name] = task
    return task


def get_task(name: str) -> Task:
    if not isinstance(name, str):
        raise TypeError(f"task={name!r} must be a string; known tasks: {', '.join(known_tasks())}")
    if name not in _REGISTRY and name not in TASK_MODULES:
        load_entry_point(name)  # an installed plug-in (entry point group padnet.tasks), if there is one
    if name not in _REGISTRY and name in TASK_MODULES:
        try:
            importlib.import_module(TASK_MODULES[name])
        except ImportError as err:
            raise KeyError(f"task={name!r}: its module {TASK_MODULES[name]} cannot be imported ({err})") from err
    if name not in _REGISTRY:
        raise KeyError(f"task={name!r} is not supported; known tasks: {', '.join(known_tasks())} (a task of your "
                       "own: imports: [my_module] in the config, --import path/to/my_module.py, or an entry point "
                       "in the group padnet.tasks)")
    return _REGISTRY[name]


def known_tasks() -> list[str]:
    return sorted(set(_REGISTRY) | set(TASK_MODULES) | set(task_entry_points()))
