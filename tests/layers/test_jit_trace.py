"""torch.jit.trace of converted convs serves every batch size: under tracing each layer computes with a
strategy whose graph does not hold the batch size; a layer pinned to one that does is refused, naming
torch.export."""

import warnings

import pytest
import torch
from torch import nn

import padnet
from padnet.layers import conv_strategy, pad_layers
from tests.helpers import assert_close_f64, random_mask


def small_net():
    """Convs the rule computes every way: 16x16 maps (grouped, batch-baked), a depthwise conv, a 1x1
    conv (bmm), 4x4 maps (mixture) and 2x2 maps (mixture_unfold)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(4),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(),
    )


def traced_model(routing, form):
    torch.manual_seed(0)
    model = padnet.convert(small_net(), routing=routing)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
    if form == "deployed":
        padnet.deploy(model)
    return model.eval()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("routing, form", [("softmax", "training"), ("sigmoid", "training"), ("softmax", "deployed")])
def test_traced_model_is_right_at_other_batch_sizes(routing, form):
    model = traced_model(routing, form)
    assert conv_strategy.heuristic_strategy((2, 8, 16, 16), (3, 3), (1, 1), (1, 1), (1, 1), 1) == "grouped"
    # (tests run the rule; the autotuner's mode traces with the rule's picks too)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, torch.randn(2, 3, 16, 16))
        for batch in (2, 5, 1):
            x = torch.randn(batch, 3, 16, 16)
            assert_close_f64(traced(x), model(x))


@pytest.mark.parametrize("pinned", ["grouped", "loop"])
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_tracing_a_batch_baked_strategy_points_at_torch_export(pinned):
    layer = padnet.PADConv2d(8, 8, 3, padding=1).eval()
    layer.strategy = pinned
    with pytest.raises(ValueError, match=f"'{pinned}' puts the batch size into the graph.*torch.export.export"):
        torch.jit.trace(layer, torch.randn(2, 8, 6, 6))


@pytest.mark.usefixtures("float64")
def test_torch_export_serves_other_batch_sizes():
    layer = padnet.PADConv2d(8, 8, 3, padding=1).eval()
    layer.set_mask(random_mask(layer.kernel_shape, 0.3))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(nn.Sequential(layer), (torch.randn(2, 8, 6, 6),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, 8, 6, 6)
    with torch.no_grad():
        assert_close_f64(program.module()(x), layer(x))
