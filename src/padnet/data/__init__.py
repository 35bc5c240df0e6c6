"""Datasets for the vision pipeline, one module per source, and ``build_datasets(config)``.

- ``fashion_mnist``: Fashion-MNIST from the original IDX files (auto-detected, a given dir, or
  torchvision's download when online).
- ``folder``: ImageNet-style class folders (``root/train/<class>/...``, ``root/val/<class>/...``),
  or CSVs of ``path,label`` (``image_csv``); their transforms are configurable (``transforms``).
- ``digits``: scikit-learn's bundled 8x8 digits, for tiny runs and tests.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import pydantic
import torch
from pydantic import Field
from torch.utils.data import Dataset, Subset

from ..errors import DataError, UsageError
from .digits import Digits
from .fashion_mnist import (
    CLASSES as FASHION_MNIST_CLASSES,
    MEAN as FMNIST_MEAN,
    STD as FMNIST_STD,
    FashionMNIST,
    find_fashion_mnist,
)
from .idx import IDXError, read_idx, write_idx
from .transforms import (
    AUGMENT,
    Normalize,
    dataset_stats,
    describe,
    eval_transform,
    image_record,
    imagenet_stats,
    resize_for,
    train_transform,
)

DatasetName = Literal["fashion_mnist", "imagefolder", "image_csv", "digits"]
DATASETS = get_args(DatasetName)
FILE_DATASETS = ("imagefolder", "image_csv")  # images in files: every transform key applies
SubsetSize = Annotated[int, Field(ge=1)] | None  # examples in a fixed random subset; null: all (every task's)


# A pydantic dataclass: a DataConfig built by hand for ``build_datasets`` is held to the bounds its fields
# declare, as a run config's ``data:`` section is.
@pydantic.dataclasses.dataclass
class DataConfig:
    """The ``data`` section of a run config."""

    name: DatasetName = "fashion_mnist"  # fashion_mnist, digits, imagefolder (class folders) or image_csv (path,label)
    root: str | None = None  # None: auto-detect (Fashion-MNIST); required for imagefolder
    download: bool = False  # Fashion-MNIST only: let torchvision download it when not found
    train_subset: SubsetSize = None  # use this many training images (a fixed seeded subset)
    test_subset: SubsetSize = None  # evaluate on this many test images (None: all)
    # draws the subsets and the digits split; independent of the run seed
    subset_seed: Annotated[int, Field(ge=0, le=2**32 - 2)] = 0
    # Training augmentation: none, flip, crop_flip or randaugment (padnet.data.transforms.AUGMENT);
    # null: the dataset's default (imagefolder/image_csv: crop_flip, the ImageNet recipe, or none when
    # orientation_sensitive; others: none). Fashion-MNIST knows none and crop_flip (true/false: the older
    # spelling of crop_flip/none).
    augment: bool | str | None = None
    # imagefolder / image_csv: images a mirror changes (digits, text, documents): no flip by default, and
    # an augment that flips is refused
    orientation_sensitive: bool = False
    image_size: Annotated[int, Field(ge=8, le=2048)] = 224  # imagefolder / image_csv: the crop size
    # imagefolder / image_csv: the shorter side is resized to this before the center crop; null: the
    # ImageNet ratio (image_size * 256 / 224), or image_size itself when the first training images already
    # are image_size x image_size (a crop of an enlarged copy would cut their border)
    resize: int | None = None
    channels: Literal[1, 3] = 3  # imagefolder / image_csv: 1 (greyscale) or 3 (RGB)
    normalize: Normalize = "imagenet"  # imagenet, dataset (the training set's mean/std), given (mean and std), none
    mean: list[float] | None = None  # normalize=given: one per channel
    std: list[float] | None = None  # normalize=given: one per channel, > 0
    train_file: str | None = None  # image_csv: CSV with path,label columns (paths relative to the file)
    eval_file: str | None = None  # image_csv: the evaluation CSV
    # image_csv: rows may name images outside the CSV's folder (absolute paths, '..', links that lead out)
    allow_outside_paths: bool = False

    def augment_preset(self) -> str:
        """``augment`` as one of ``AUGMENT`` (the dataset's default for null, the older booleans mapped)."""
        if self.augment is None:
            return "crop_flip" if self.name in FILE_DATASETS and not self.orientation_sensitive else "none"
        if isinstance(self.augment, bool):
            return "crop_flip" if self.augment else "none"
        return self.augment

    def problems(self) -> list[str]:
        out = []
        if self.name == "imagefolder" and not self.root:
            out.append("data.root=None: the imagefolder dataset needs data.root=DIR (holding train/ and val/)")
        if self.name == "image_csv":
            out += [f"data.{key}=None: the image_csv dataset needs data.{key}=FILE (a CSV with path,label columns)"
                    for key in ("train_file", "eval_file") if not getattr(self, key)]
        out += self._transform_problems()
        return out


    def _transform_problems(self) -> list[str]:
        out = []
        allowed = AUGMENT if self.name in FILE_DATASETS else ("none", "crop_flip") if self.name == "fashion_mnist" \
            else ("none",)
        if self.augment_preset() not in allowed:
            out.append(f"data.augment={self.augment!r} is not supported for data.name={self.name!r}; allowed: "
                       f"{', '.join(allowed)} (or null: the dataset's default)")
        if self.orientation_sensitive and self.augment_preset() in ("flip", "crop_flip"):
            out.append(f"data.augment={self.augment!r} flips images horizontally, but data.orientation_sensitive="
                       "true (a mirror changes them); use none or randaugment")
        if self.resize is not None and not self.image_size <= self.resize <= 4096:
            out.append(f"data.resize={self.resize!r} must be an integer from data.image_size={self.image_size} to "
                       "4096, or null (automatic)")
        given = self.mean is not None or self.std is not None
        if self.normalize == "given" and not (self.mean and self.std
                                              and len(self.mean) == len(self.std) == self.channels
                                              and all(s > 0 for s in self.std)):
            out.append(f"data.normalize=given needs data.mean and data.std, {self.channels} number(s) each (one per "
                       f"channel, std > 0); got mean={self.mean!r}, std={self.std!r}")
        elif given and self.normalize != "given":
            out.append(f"data.mean/data.std are set but data.normalize={self.normalize!r}; set data.normalize=given "
                       "to use them, or remove them")
        fixed = self.name not in FILE_DATASETS
        changed = [k for k, v in (("channels", self.channels != 3), ("normalize", self.normalize != "imagenet"),
                                  ("resize", self.resize is not None),
                                  ("orientation_sensitive", self.orientation_sensitive),
                                  ("train_file", self.train_file), ("eval_file", self.eval_file)) if v]
        if fixed and changed:
            out.append(f"data.{changed[0]} applies to image files only (data.name: {', '.join(FILE_DATASETS)}); "
                       f"{self.name} has a fixed format")
        return out


@dataclass
class DataInfo:
    num_classes: int
    in_channels: int
    image_size: int
    small_input: bool  # True for 28x28 / 32x32 / 8x8 inputs: the model adapts its stem
    source: str  # where the data came from, for the run record
    label_names: list[str] | None = None  # class id -> name (class folders, CSV labels)
    preprocessing: dict | None = None  # what prediction on new image files needs (padnet.data.transforms)


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None:
        return dataset
    assert isinstance(dataset, Sized)  # torch's Dataset declares no __len__; every dataset built here has one
    if size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[:size].tolist()))


def build_datasets(config: DataConfig) -> tuple[Dataset, Dataset, DataInfo]:
    """(train, test, info) for a ``DataConfig``; errors say where data was looked for and how to get it."""
    problems = config.problems()
    if problems:
        raise UsageError("; ".join(problems))
    train: Dataset
    test: Dataset
    if config.name == "fashion_mnist":
        train = FashionMNIST(config.root, train=True, download=config.download,
                             augment=config.augment_preset() == "crop_flip")
        test = FashionMNIST(train.root, train=False)
        info = DataInfo(10, 1, 28, True, str(train.root), list(FASHION_MNIST_CLASSES),
                        image_record(1, 28, [FMNIST_MEAN], [FMNIST_STD]) | {"resize": 28})
    elif config.name == "digits":
        train, test = Digits(True, config.subset_seed), Digits(False, config.subset_seed)
        info = DataInfo(10, 1, 8, True, "sklearn.datasets.load_digits")
    else:
        train, test, info = _file_datasets(config)
    train = _subset(train, config.train_subset, config.subset_seed)
    test = _subset(test, config.test_subset, config.subset_seed + 1)
    return train, test, info


def _image_files(config: DataConfig, train: bool, transform, class_to_idx=None):
    from .folder import ImageCSV, image_folder

    source = config.root if config.name == "imagefolder" else config.train_file if train else config.eval_file
    if source is None:  # refused by DataConfig.problems(), which a DataConfig built by hand has not been through
        raise UsageError("; ".join(config.problems()))
    if config.name == "imagefolder":
        return image_folder(source, train, config.image_size, transform)
    return ImageCSV(source, transform, class_to_idx, allow_outside=config.allow_outside_paths)


def _resize(config: DataConfig, train) -> int:
    """``data.resize``, or for null the ImageNet ratio, unless the first images of the listed training set
    ``train`` are already ``image_size`` square: then no resize (their size is read from the file headers)."""
    if config.resize is not None:
        return config.resize
    from PIL import Image

    size = config.image_size
    sizes = set()
    for path, _ in train.samples[:8]:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except OSError:  # a bad file: the data loader's own check reports it when the image is read
            return resize_for(size)
    return size if sizes == {(size, size)} else resize_for(size)


def check_image_files(config: DataConfig) -> list[str]:
    """Pre-flight of image files, reading no more than the listing and one image: both splits can be
    listed (every CSV row names a readable file inside its folder, a folder holds class folders), they
    have the same classes, and the first training image decodes. Problems name the key and the file."""
    if config.name not in FILE_DATASETS:
        return []
    from .folder import load_image

    folder = config.name == "imagefolder"
    train_key, eval_key = ("data.root", "data.root") if folder else ("data.train_file", "data.eval_file")
    try:
        train = _image_files(config, True, None)
        if train.samples:
            load_image(train.samples[0][0])
    except (DataError, FileNotFoundError) as err:
        return [f"{train_key}: {err}"]
    try:
        test = _image_files(config, False, None, getattr(train, "class_to_idx", None))
    except (DataError, FileNotFoundError) as err:
        return [f"{eval_key}: {err}"]
    if train.classes != test.classes:
        return [f"{eval_key}: the evaluation classes {test.classes[:5]} differ from the training classes "
                f"{train.classes[:5]}"]
    return []


def preprocessing_words(config: DataConfig) -> str | None:
    """The image files' preprocessing and augmentation in words, reading no more than the listing and a few
    image headers (``padnet sweep --dry-run``); None for a dataset of a fixed format."""
    if config.name not in FILE_DATASETS:
        return None
    train = _image_files(config, True, None)
    resize = _resize(config, train)
    later = "normalise with the training set's mean/std" if config.normalize == "dataset" else None
    mean, std = ([], []) if later else _normalisation(config, train, resize)
    record = image_record(config.channels, config.image_size, mean, std, resize)
    return describe(record, config.augment_preset(), later)


def _normalisation(config: DataConfig, train, resize: int) -> tuple[list[float], list[float]]:
    """(mean, std) of ``data.normalize``; ``dataset`` reads the listed training images ``train`` once,
    through the evaluation transform (the caller sets the training transform afterwards)."""
    if config.normalize == "imagenet":
        return imagenet_stats(config.channels)
    if config.normalize == "given":
        if config.mean is None or config.std is None:  # refused by DataConfig.problems(), as in _image_files
            raise UsageError("; ".join(config.problems()))
        return list(config.mean), list(config.std)
    if config.normalize == "none":
        return [], []
    train.transform = eval_transform(image_record(config.channels, config.image_size, [], [], resize))
    return dataset_stats(train, config.channels)


def _file_datasets(config: DataConfig) -> tuple[Dataset, Dataset, DataInfo]:
    """Image files (an ImageFolder tree or CSVs of path,label) with the transforms the config asks for."""
    train = _image_files(config, True, None)  # listed once; its transform is set when the record is known
    resize = _resize(config, train)
    record = image_record(config.channels, config.image_size, *_normalisation(config, train, resize), resize)
    train.transform = train_transform(record, config.augment_preset())
    test = _image_files(config, False, eval_transform(record), getattr(train, "class_to_idx", None))
    if train.classes != test.classes:
        which = "val" if config.name == "imagefolder" else "evaluation"
        raise DataError(f"{config.root or config.eval_file}: train classes {train.classes[:5]}... differ from "
                        f"{which} classes {test.classes[:5]}...")
    source = str(config.root) if config.name == "imagefolder" else f"{config.train_file}, {config.eval_file}"
    info = DataInfo(len(train.classes), config.channels, config.image_size, config.image_size <= 64, source,
                    list(train.classes), record)
    return train, test, info


__all__ = [
    "DATASETS",
    "DataConfig",
    "DataInfo",
    "Digits",
    "FashionMNIST",
    "IDXError",
    "build_datasets",
    "check_image_files",
    "find_fashion_mnist",
    "preprocessing_words",
    "read_idx",
    "write_idx",
]
