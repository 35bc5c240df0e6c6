"""The ``image_classification`` task: torchvision-style models on Fashion-MNIST, ImageFolder, a CSV of
path,label, or digits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from .. import models
from ..data import DataConfig, build_datasets, check_image_files, find_fashion_mnist
from ..validation import one_of
from .config import MAX_WIDTH, RunConfig
from .evaluation import dataset_size
from .tasks import TaskParts, register_task


@dataclass
class ModelConfig:
    """The ``model`` section: ``padnet.models.build`` arguments."""

    name: Annotated[str, one_of(models.MODELS)] = "small_resnet"  # a model of padnet.models
    width: Annotated[int, Field(ge=1, le=MAX_WIDTH)] = 16  # small_resnet: the first stage's channels (doubling)
    # small_resnet: blocks per stage
    layers: Annotated[list[Annotated[int, Field(ge=1, le=64)]], Field(min_length=1, max_length=8)] = field(
        default_factory=lambda: [1, 1, 1])
    small_input: bool | None = None  # None: decided by the dataset (True for 28x28 / 8x8 images)


def loss_fn(model, batch):
    images, targets = batch
    return F.cross_entropy(model(images), targets)


@torch.no_grad()
def evaluate(model, batches) -> dict[str, float]:
    correct = total = 0
    loss_sum = 0.0
    for images, targets in batches:
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(1) == targets).sum())
        total += int(targets.numel())
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def build(config: RunConfig) -> TaskParts:
    data = config.section("data", DataConfig)
    train, test, info = build_datasets(data)
    m = config.section("model", ModelConfig)
    kwargs = {"width": m.width, "layers": list(m.layers)} if m.name == "small_resnet" else {}
    small = info.small_input if m.small_input is None else m.small_input
    model = models.build(m.name, info.num_classes, info.in_channels, small_input=small, **kwargs)
    return TaskParts(
        model=model,
        train_dataset=train,
        eval_dataset=test,
        loss_fn=loss_fn,
        evaluate=evaluate,
        main_metric="accuracy",
        info={
            "dataset": data.name,
            "data_source": info.source,
            "num_classes": info.num_classes,
            "train_examples": dataset_size(train),
            "eval_examples": dataset_size(test),
            "image_size": info.image_size,
            "label_names": info.label_names,
            "preprocessing": info.preprocessing,
            "augment": data.augment_preset(),
        },
        predict=None if info.preprocessing is None else {
            "task": config.task, "problem": "classification", "label_names": info.label_names,
            "input": info.preprocessing},
    )


def check(config: RunConfig) -> list[str]:
    """Pre-flight: the data must be there before any work starts."""
    data = config.section("data", DataConfig)
    if data.name == "fashion_mnist" and not data.download:
        try:
            find_fashion_mnist(data.root)
        except FileNotFoundError as err:
            return [f"data.root={data.root!r}: {err}"]
    if data.name == "image_csv":
        missing = [f"data.{key}={path!r}: no such file (a CSV with path,label columns)"
                   for key in ("train_file", "eval_file") if (path := getattr(data, key)) and not Path(path).is_file()]
        if missing:
            return missing
    if data.name == "imagefolder" and data.root:
        missing = [s for s in ("train", "val") if not (Path(data.root) / s).is_dir()]
        if missing:
            return [f"data.root={data.root!r}: missing {', '.join(missing)}/ "
                    f"(expected {data.root}/train/<class>/<image> and {data.root}/val/<class>/<image>)"]
    return check_image_files(data)


register_task("image_classification", build, sections={"data": DataConfig, "model": ModelConfig}, check=check)
