import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("PADNET_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
FASHION_MNIST = Path(os.environ.get("PADNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def random_mask(shape, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < ratio
