"""Fashion-MNIST from its original IDX files (Xiao et al. 2017): 60k train / 10k test 28x28 images.

Where the files are looked for, in order: ``root`` when given (only there), else the directory in
``$PADNET_FASHION_MNIST``, ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``)
and ``./data/FashionMNIST/raw``. Any directory holding ``train-images-idx3-ubyte`` (or ``.gz``) and its
three siblings works, torchvision's ``<root>/FashionMNIST/raw`` layout included. With
``download=True`` and no files found, torchvision downloads them (needs a network).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .idx import IDXError, read_idx

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist", "data/FashionMNIST/raw")
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Mean and std of the 60k training images, in [0, 1] units.
MEAN, STD = 0.2860, 0.3530
HOW_TO_GET = (
    "Get it with `apt-get install -y dataset-fashion-mnist` (installs the IDX files to "
    "/usr/share/datasets/fashion-mnist), or point data.root at a directory holding "
    "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
    "t10k-labels-idx1-ubyte[.gz], or set data.download=true to fetch it with torchvision (needs a network)."
)


def candidate_dirs(root: str | Path | None = None) -> list[Path]:
    if root is not None:
        root = Path(root)
        return [root, root / "FashionMNIST" / "raw"]
    dirs = [Path(os.environ["PADNET_FASHION_MNIST"])] if os.environ.get("PADNET_FASHION_MNIST") else []
    return dirs + [Path(d) for d in DEFAULT_DIRS]


def _find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    """The first directory holding all four IDX files; FileNotFoundError saying where it looked."""
    looked = candidate_dirs(root)
    for directory in looked:
        if all(_find_file(directory, n) for names in FILES.values() for n in names):
            return directory
    raise FileNotFoundError(
        "Fashion-MNIST not found; looked in: " + ", ".join(str(d) for d in looked) + ". " + HOW_TO_GET
    )


def load_arrays(directory: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split, checked for consistency."""
    directory = Path(directory)
    image_name, label_name = FILES[train]
    image_file, label_file = _find_file(directory, image_name), _find_file(directory, label_name)
    if image_file is None or label_file is None:
        missing = image_name if image_file is None else label_name
        raise FileNotFoundError(f"{directory / missing}[.gz] not found. {HOW_TO_GET}")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXError(f"{image_file}: expected uint8 images of shape (N, H, W); got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise IDXError(f"{label_file}: expected a 1-D label vector; got shape {labels.shape}")
    if len(labels) != len(images):
        raise IDXError(f"{label_file}: {len(labels)} labels for {len(images)} images in {image_file}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
    if bad.size:
        i = int(bad[0])
        raise IDXError(
            f"{label_file}: label {int(labels[i])} at index {i} (byte offset {8 + i * labels.itemsize}) is out of "
            f"range; allowed 0..{len(CLASSES) - 1} ({bad.size} bad labels in all)"
        )
    return images, labels.astype(np.int64)


class FashionMNIST(Dataset):
    """Fashion-MNIST as float tensors (1, 28, 28) normalised with the training mean/std, and int labels.

    ``augment=True`` adds a random crop (padding 2) and a horizontal flip, drawn from torch's global
    RNG so a seeded run is repeatable.
    """

    classes = CLASSES

    def __init__(self, root: str | Path | None = None, train: bool = True, download: bool = False,
                 augment: bool = False):
        try:
            directory = find_fashion_mnist(root)
        except FileNotFoundError:
            if not download:
                raise
            directory = _download(root)
        self.root = directory
        self.train = train
        images, labels = load_arrays(directory, train)
        # Normalise once: 60k x 784 floats is 188 MB, so keep uint8 and normalise per batch of items.
        self.images = torch.from_numpy(images)
        self.targets = torch.from_numpy(labels)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index].to(torch.float32).div_(255).sub_(MEAN).div_(STD).unsqueeze(0)
        if self.augment:
            image = random_crop_flip(image, padding=2)
        return image, int(self.targets[index])


def random_crop_flip(image: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop of the zero-padded image back to its size, and a random horizontal flip."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    image = padded[:, top : top + h, left : left + w]
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    return image


def _download(root: str | Path | None) -> Path:
    """torchvision's download (the online path for users with a network)."""
    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    target = Path(root) if root is not None else Path("data")
    try:
        TVFashionMNIST(str(target), train=True, download=True)
        TVFashionMNIST(str(target), train=False, download=True)
    except Exception as err:
        raise FileNotFoundError(f"downloading Fashion-MNIST to {target} failed ({err}). {HOW_TO_GET}") from err
    return target / "FashionMNIST" / "raw"
