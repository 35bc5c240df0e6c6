"""The strategy space as a property: for any conv layer form, geometry, mask, batch size and mode, every
strategy the code may pick for the call (``layer.strategy_candidates(x)``: what the autotuner times and the
rule picks from) computes it exactly, against the float64 oracle, outputs and (training) input gradients."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from padnet.layers import DynamicConv2d, PADConv2d
from padnet.reference import DenseMaskPADConv2d
from tests.helpers import assert_close_f64, random_mask

KINDS = ("dyconv-softmax", "dyconv-sigmoid", "pad-element", "pad-channel", "deployed-element", "deployed-channel")
MASKS = {"static": 0.0, "partial": 0.5, "dynamic": 1.0}
IN_CHANNELS, OUT_CHANNELS = 4, 6


def per_sample_conv(layer: DynamicConv2d, x: torch.Tensor) -> torch.Tensor:
    """DY-Conv / CondConv as the equation: each sample convolved with its own aggregated kernel."""
    alpha = layer.attention_weights(x)
    kernels = (alpha @ layer.weight).reshape(x.shape[0], *layer.weight_shape)
    bias = alpha @ layer.bias if layer.bias is not None else [None] * x.shape[0]
    geometry = (layer.stride, layer.padding, layer.dilation, layer.groups)
    outs = [F.conv2d(x[b : b + 1], kernels[b], bias[b], *geometry) for b in range(x.shape[0])]
    return torch.cat(outs) if outs else F.conv2d(x, torch.zeros(layer.weight_shape), None, *geometry)


def build(kind, kernel, stride, groups, mask, compacted, bias, seed):
    """(layer, oracle): the layer form under test and a function computing the same call in float64."""
    torch.manual_seed(seed)
    routing = kind.split("-")[1] if kind.startswith("dyconv") else ("sigmoid" if seed % 2 else "softmax")
    args = (IN_CHANNELS, OUT_CHANNELS, kernel, stride, kernel // 2, 1, groups)
    if kind.startswith("dyconv"):
        layer = DynamicConv2d(*args, bias=bias, num_kernels=3, routing=routing)
    else:
        layer = PADConv2d(*args, bias=bias, num_kernels=3, routing=routing, granularity=kind.split("-")[1])
        layer.set_mask(layer.mask_from_units(random_mask((layer.num_units,), MASKS[mask], seed=seed)))
        with torch.no_grad():
            layer.phi.normal_()
    with torch.no_grad():
        torch.nn.init.normal_(layer.attention.fc2.weight)
        if layer.bias is not None:
            torch.nn.init.normal_(layer.bias)
    layer.temperature = 1.5
    if kind.startswith("dyconv"):
        return layer, lambda x: per_sample_conv(layer, x)
    reference = DenseMaskPADConv2d(layer)
    if compacted or kind.startswith("deployed"):
        layer.compact()
    if kind.startswith("deployed"):
        layer = layer.to_deployed()

    def oracle(x):
        if x.shape[0] == 0:  # the reference's kernels need a sample; an empty batch's output is a shape
            return F.conv2d(x, torch.zeros(layer.weight_shape), None, layer.stride, layer.padding, layer.dilation,
                            layer.groups)
        return reference(x)

    return layer, oracle


def run(module, x, upstream, training):
    if not training:
        with torch.no_grad():  # inference: the reused workspace path
            return module(x), None
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (out * upstream).sum().backward()
    return out, x.grad


@pytest.mark.usefixtures("float64")
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(KINDS),
    kernel=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    mask=st.sampled_from(sorted(MASKS)),
    compacted=st.booleans(),
    batch=st.sampled_from([0, 1, 3]),
    size=st.sampled_from([2, 5]),
    training=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_candidate_strategy_computes_the_call_exactly(kind, kernel, stride, groups, mask, compacted, batch,
                                                            size, training, bias, seed):
    layer, oracle = build(kind, kernel, stride, groups, mask, compacted, bias, seed)
    layer.train(training)
    x = torch.randn(batch, IN_CHANNELS, size, size + 1)
    candidates = layer.strategy_candidates(x)
    assert layer.rule_strategy(x) in candidates
    upstream = torch.randn(oracle(x).shape)
    expected, expected_dx = run(oracle, x, upstream, training)
    assert expected.shape[:2] == (batch, OUT_CHANNELS)
    for strategy in candidates:
        layer.strategy = strategy
        out, dx = run(layer, x, upstream, training)
        assert out.shape == expected.shape, strategy
        assert_close_f64(out, expected, msg=strategy)
        if training:
            assert_close_f64(dx, expected_dx, msg=strategy)
