"""ImageNet-style class folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Training images get torchvision's ImageNet recipe (RandomResizedCrop + flip), evaluation images a
resize to ``image_size * 256 / 224`` and a center crop; both are normalised with the ImageNet mean/std.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLITS = {True: "train", False: "val"}


def image_folder(root: str | Path, train: bool, image_size: int = 224):
    from torchvision import datasets, transforms

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
        return datasets.ImageFolder(str(split), transform=transform, loader=load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise FileNotFoundError(f"{split}: {err}") from err


class ImageFileError(DataError):
    """An image file that cannot be decoded; the message names the file."""


def load_image(path: str):
    """torchvision's default loader (PIL, RGB), with errors that name the file: PIL's own message for a
    truncated JPEG ("image file is truncated") does not."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)  # PIL's convert("RGB") decodes the whole file
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageFileError(f"{path}: cannot read this image ({type(err).__name__}: {err}); "
                             "replace or delete the file") from err
