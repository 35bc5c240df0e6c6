"""scikit-learn's bundled 8x8 digits (1,797 images, no download): a dataset for tiny, fast runs."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

TEST_FRACTION = 0.2


class Digits(Dataset):
    """1x8x8 float images in [0, 1] (normalised to mean 0 / std 1 of the whole set), labels 0..9.

    The train/test split is a fixed permutation drawn with ``split_seed``, so it never depends on the
    run's seed: every run of a sweep sees the same test set.
    """

    classes = tuple(str(i) for i in range(10))

    def __init__(self, train: bool = True, split_seed: int = 0):
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
        images = (images - images.mean()) / images.std()
        targets = torch.tensor(bunch.target, dtype=torch.int64)
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(split_seed))
        n_test = int(round(len(targets) * TEST_FRACTION))
        keep = order[n_test:] if train else order[:n_test]
        self.images = images[keep].unsqueeze(1)
        self.targets = targets[keep]
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], int(self.targets[index])
