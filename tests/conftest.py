import importlib.util
import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("PADNET_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
FASHION_MNIST = Path(os.environ.get("PADNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # Dynamic convs pick their strategy with the deterministic rule in tests: the autotuner's picks
    # depend on timing (so on the machine's load), and two layers compared to 1e-6 could then round
    # differently. Tests of the autotuner set it explicitly.
    from padnet.layers import conv_strategy

    previous = conv_strategy.get_conv_strategy()
    conv_strategy.set_conv_strategy("heuristic")
    yield
    conv_strategy.set_conv_strategy(previous)


def random_mask(shape, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < ratio


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a fresh module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
