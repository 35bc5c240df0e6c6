"""ImageNet-style class folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Training images get torchvision's ImageNet recipe (RandomResizedCrop + flip), evaluation images a
resize to ``image_size * 256 / 224`` and a center crop; both are normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLITS = {True: "train", False: "val"}


def image_folder(root: str | Path, train: bool, image_size: int = 224):
    from torchvision import transforms

    root = Path(root)
    split = root / SPLITS[train]
    if not split.is_dir():
        raise FileNotFoundError(
            f"ImageFolder split directory {split} not found; expected {root}/train/<class>/<image> and "
            f"{root}/val/<class>/<image> (one sub-directory per class, the same classes in both)"
        )
    if train:
        transform = transforms.Compose([
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])
    else:
        transform = transforms.Compose([
            transforms.Resize(int(round(image_size * 256 / 224))),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])
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
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=False) and _visible(e.name))
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
