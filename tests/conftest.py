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


def random_pad_form(model, form, ratio, phi):
    """A converted PAD ``model`` "partitioned" by hand (layer i: ``random_mask(..., ratio, seed=i)`` and
    phi), then compacted (form "compacted") or compacted and deployed (form "deployed"); in eval mode."""
    import padnet
    from padnet.convert import pad_layers

    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, ratio, seed=i))
        with torch.no_grad():
            layer.phi.fill_(phi)
    if form in ("compacted", "deployed"):
        padnet.compact(model)
    if form == "deployed":
        padnet.deploy(model)
    return model.eval()


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a fresh module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
