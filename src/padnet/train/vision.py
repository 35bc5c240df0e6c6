"""The ``image_classification`` task: torchvision-style models on Fashion-MNIST, ImageFolder, a CSV of
path,label, or digits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import models
from ..data import DataConfig, build_datasets, check_image_files, find_fashion_mnist
from ..errors import shorten
from .config import MAX_WIDTH, RunConfig
from .tasks import TaskParts, register_task


@dataclass
class ModelConfig:
    """The ``model`` section: ``padnet.models.build`` arguments."""

    name: str = "small_resnet"  # small_resnet, resnet18, resnet34, resnet50 or mobilenet_v2 (padnet.models)
    width: int = 16  # small_resnet: channels of the first stage (doubling per stage)
    layers: list[int] = field(default_factory=lambda: [1, 1, 1])  # small_resnet: blocks per stage
    small_input: bool | None = None  # None: decided by the dataset (True for 28x28 / 8x8 images)

    def problems(self) -> list[str]:
        out = []
        if self.name not in models.MODELS:
            out.append(f"model.name={self.name!r} is not supported; allowed: {', '.join(models.MODELS)}")
        if self.width < 1:
            out.append(f"model.width={self.width!r} must be an integer >= 1")
        elif self.width > MAX_WIDTH:
            out.append(f"model.width={self.width!r} must be an integer <= {MAX_WIDTH}")
        if not self.layers or any(n < 1 for n in self.layers):
            out.append(f"model.layers={shorten(self.layers)} must be a non-empty list of integers >= 1")
        elif len(self.layers) > 8 or any(n > 64 for n in self.layers):
            out.append(f"model.layers={shorten(self.layers)} must have at most 8 stages of at most 64 blocks each")
        return out


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
            "train_examples": len(train),
            "eval_examples": len(test),
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
