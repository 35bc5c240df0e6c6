"""Datasets for the vision pipeline, one module per source, and ``build_datasets(config)``.

- ``fashion_mnist``: Fashion-MNIST from the original IDX files (auto-detected, a given dir, or
  torchvision's download when online).
- ``folder``: ImageNet-style class folders (``root/train/<class>/...``, ``root/val/<class>/...``).
- ``digits``: scikit-learn's bundled 8x8 digits, for tiny runs and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError, shorten
from .digits import Digits
from .fashion_mnist import FashionMNIST, find_fashion_mnist
from .idx import IDXError, read_idx, write_idx

DATASETS = ("fashion_mnist", "imagefolder", "digits")


@dataclass
class DataConfig:
    """The ``data`` section of a run config."""

    name: str = "fashion_mnist"
    root: str | None = None  # None: auto-detect (Fashion-MNIST); required for imagefolder
    download: bool = False  # Fashion-MNIST only: let torchvision download it when not found
    train_subset: int | None = None  # use this many training images (a fixed seeded subset)
    test_subset: int | None = None  # evaluate on this many test images (None: all)
    subset_seed: int = 0  # draws the subsets and the digits split; independent of the run seed
    augment: bool = False  # Fashion-MNIST: random crop + flip
    image_size: int = 224  # imagefolder only

    def problems(self) -> list[str]:
        out = []
        if self.name not in DATASETS:
            out.append(f"data.name={shorten(self.name)} is not supported; allowed: {', '.join(DATASETS)}")
        if self.name == "imagefolder" and not self.root:
            out.append("data.root=None: the imagefolder dataset needs data.root=DIR (holding train/ and val/)")
        for key in ("train_subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                out.append(f"data.{key}={value!r} must be >= 1 or null (all)")
        if not 8 <= self.image_size <= 2048:
            out.append(f"data.image_size={self.image_size!r} must be an integer in [8, 2048]")
        if not 0 <= self.subset_seed < 2**32 - 1:
            out.append(f"data.subset_seed={self.subset_seed!r} must be an integer in [0, {2**32 - 2}]")
        return out


@dataclass
class DataInfo:
    num_classes: int
    in_channels: int
    image_size: int
    small_input: bool  # True for 28x28 / 32x32 / 8x8 inputs: the model adapts its stem
    source: str  # where the data came from, for the run record


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[:size].tolist()))


def build_datasets(config: DataConfig) -> tuple[Dataset, Dataset, DataInfo]:
    """(train, test, info) for a ``DataConfig``; errors say where data was looked for and how to get it."""
    problems = config.problems()
    if problems:
        raise ValueError("; ".join(problems))
    if config.name == "fashion_mnist":
        train = FashionMNIST(config.root, train=True, download=config.download, augment=config.augment)
        test = FashionMNIST(train.root, train=False)
        info = DataInfo(10, 1, 28, True, str(train.root))
    elif config.name == "digits":
        train, test = Digits(True, config.subset_seed), Digits(False, config.subset_seed)
        info = DataInfo(10, 1, 8, True, "sklearn.datasets.load_digits")
    else:
        from .folder import image_folder

        train = image_folder(config.root, True, config.image_size)
        test = image_folder(config.root, False, config.image_size)
        if train.classes != test.classes:
            raise DataError(f"{config.root}: train classes {train.classes[:5]}... differ from val classes {test.classes[:5]}...")
        info = DataInfo(len(train.classes), 3, config.image_size, config.image_size <= 64, str(config.root))
    train = _subset(train, config.train_subset, config.subset_seed)
    test = _subset(test, config.test_subset, config.subset_seed + 1)
    return train, test, info


__all__ = [
    "DATASETS",
    "DataConfig",
    "DataInfo",
    "Digits",
    "FashionMNIST",
    "IDXError",
    "build_datasets",
    "find_fashion_mnist",
    "read_idx",
    "write_idx",
]
