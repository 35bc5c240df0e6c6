"""ImageNet-style class folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

The transforms come from ``padnet.data.transforms`` (``data.augment``, ``data.channels``,
``data.normalize``); by default training images get torchvision's ImageNet recipe (RandomResizedCrop +
flip), evaluation images a resize to ``image_size * 256 / 224`` and a center crop, both normalised with
the ImageNet mean/std. ``image_csv`` reads a CSV of ``path,label`` rows instead of class folders.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

from ..errors import DataError

SPLITS = {True: "train", False: "val"}


def image_folder(root: str | Path, train: bool, image_size: int = 224, transform=None):
    """The ``train/`` (``train=True``) or ``val/`` split of an ImageFolder tree.

    Args:
        root: the directory holding ``train/<class>/...`` and ``val/<class>/...``.
        train: which split.
        image_size: the crop size of the default transform.
        transform: PIL image -> tensor; default: the ImageNet recipe (``padnet.data.transforms``, RGB,
            ``crop_flip`` for training, resize + center crop for evaluation, ImageNet mean/std).
    """
    from .transforms import eval_transform, image_record, imagenet_stats, train_transform

    root = Path(root)
    split = root / SPLITS[train]
    if not split.is_dir():
        raise FileNotFoundError(
            f"ImageFolder split directory {split} not found; expected {root}/train/<class>/<image> and "
            f"{root}/val/<class>/<image> (one sub-directory per class, the same classes in both)"
        )
    if transform is None:
        record = image_record(3, image_size, *imagenet_stats(3))
        transform = train_transform(record, "crop_flip") if train else eval_transform(record)
    try:
        dataset = _StrictImageFolder(str(split), transform=transform, loader=load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise FileNotFoundError(f"{split}: {err}") from err
    if len(dataset.classes) < 2:
        raise DataError(f"{split}: {len(dataset.classes)} class folder{'s' if len(dataset.classes) != 1 else ''} "
                        f"({', '.join(dataset.classes) or 'none'}); image classification needs at least 2 (one "
                        "sub-directory per class; folders starting with '.' are ignored)")
    return dataset


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _strict_image_folder():
    from torchvision import datasets
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class StrictImageFolder(datasets.ImageFolder):
        """torchvision's ImageFolder without its surprises: hidden folders (``.ipynb_checkpoints``,
        ``.git``) are neither classes nor searched, hidden files are skipped, and symbolic links to
        folders are not followed (a link loop would list the same images again and again)."""

        def find_classes(self, directory):
            classes = sorted(e.name for e in os.scandir(directory)
                             if e.is_dir(follow_symlinks=False) and _visible(e.name))
            if not classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
            return classes, {name: i for i, name in enumerate(classes)}

        @staticmethod
        def make_dataset(directory, class_to_idx=None, extensions=None, is_valid_file=None, allow_empty=False):
            extensions = extensions or IMG_EXTENSIONS
            samples = []
            for name, index in sorted(class_to_idx.items()):
                root = os.path.join(directory, name)
                found = []
                for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                    dirnames[:] = sorted(d for d in dirnames if _visible(d))
                    for filename in sorted(filenames):
                        path = os.path.join(dirpath, filename)
                        if _visible(filename) and has_file_allowed_extension(path, extensions):
                            found.append((path, index))
                if not found and not allow_empty:
                    raise FileNotFoundError(f"Found no valid file for the classes {name}. Supported extensions are: "
                                            f"{', '.join(extensions)}")
                samples += found
            return samples

    return StrictImageFolder


def _StrictImageFolder(*args, **kwargs):  # noqa: N802 - builds the class on first use (torchvision is lazy)
    return _strict_image_folder()(*args, **kwargs)


class ImageFileError(DataError):
    """An image file that cannot be decoded; the message names the file."""


# Images larger than this many pixels are refused before they are decoded (a few KB of PNG can
# declare gigapixels: a decompression bomb). PIL's own guard warns at 89M and refuses at 179M.
MAX_PIXELS = 64 * 1024 * 1024


def load_image(path: str):
    """The image at ``path`` as RGB (PIL), with errors that name the file: PIL's own message for a
    truncated JPEG ("image file is truncated") does not. Images over ``MAX_PIXELS`` are refused before
    decoding."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageFileError(f"{path}: {width}x{height} = {width * height:,} pixels is more than "
                                     f"{MAX_PIXELS:,} (a decompression bomb?); resize or delete the file")
            return image.convert("RGB")  # decodes the whole file
    except ImageFileError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as err:
        raise ImageFileError(f"{path}: cannot read this image ({type(err).__name__}: {err}); "
                             "replace or delete the file") from err


class ImageCSV(torch.utils.data.Dataset):
    """Images listed in a CSV file with a header holding ``path`` and ``label`` columns; paths are relative
    to the CSV's directory. Labels are class names, mapped to ids with ``class_to_idx`` (default: the
    sorted labels of this file).

    A CSV is data, not a licence to read the machine: a row naming a file outside the CSV's folder (an
    absolute path, ``..``, a link that leads out) is refused unless ``allow_outside``, and every row must
    name a regular file (a FIFO would block the loader forever, a device would stream without end)."""

    def __init__(self, csv_path: str | Path, transform=None, class_to_idx: dict[str, int] | None = None,
                 allow_outside: bool = False):
        self.path = Path(csv_path)
        rows = _csv_rows(self.path, ("path", "label"))
        names = sorted({label for _, _, label in rows})
        self.class_to_idx = dict(class_to_idx) if class_to_idx is not None else {n: i for i, n in enumerate(names)}
        self.classes = list(self.class_to_idx)
        self.samples = []
        for line, image, label in rows:
            if label not in self.class_to_idx:
                raise DataError(f"{self.path}:{line}: label {label!r} is not one of the training labels "
                                f"({', '.join(map(repr, self.classes[:20]))})")
            self.samples.append((str(self._checked(line, image, allow_outside)), self.class_to_idx[label]))
        self.transform = transform

    def _checked(self, line: int, image: str, allow_outside: bool) -> Path:
        full = Path(image) if Path(image).is_absolute() else self.path.parent / image
        where = f"{self.path}:{line}: path {image!r}"
        if not allow_outside:
            root = self.path.parent.resolve()
            if Path(image).is_absolute() or not full.resolve().is_relative_to(root):
                raise DataError(f"{where} lies outside the CSV's folder {root}; set data.allow_outside_paths: true "
                                "if the data set means it")
        try:
            mode = full.stat().st_mode  # follows links: what would be read
        except OSError:
            raise DataError(f"{where}: no such file") from None
        if not stat.S_ISREG(mode):
            raise DataError(f"{where} is not a regular file (a folder, FIFO or device)")
        return full

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), target


def _csv_rows(path: Path, columns: tuple[str, str]) -> list[tuple[int, str, str]]:
    """(line number, first column, second column) of each row of a CSV with a header naming ``columns``."""
    import csv

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a CSV with a header line holding {', '.join(columns)})")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}:1: no column {missing[0]!r}; the header has {header or 'nothing (empty file)'}")
        rows = [(reader.line_num, row[columns[0]] or "", row[columns[1]] or "") for row in reader]
    if not rows:
        raise DataError(f"{path}: no rows after the header (an empty file)")
    return rows
