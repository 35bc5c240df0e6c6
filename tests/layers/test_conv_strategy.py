"""Every conv strategy computes the same function as ``padnet.reference`` (outputs and gradients), and the
choice between them (rule, autotuner, pins, saved picks) behaves as documented."""

import copy

import pytest
import torch
import torch.nn.functional as F

from padnet.layers import DeployedPADConv2d, DynamicConv2d, PADConv2d, conv_strategy
from padnet.layers.conv_strategy import (
    CONV_STRATEGIES,
    applicable_strategies,
    clear_conv_strategy_picks,
    conv_strategy_picks,
    heuristic_strategy,
    load_conv_strategy_picks,
    set_conv_strategy,
)
from padnet.layers.dynamic_conv import apply_kernel_mixture
from padnet.reference import DenseMaskPADConv2d
from tests.helpers import assert_close_f64, random_mask

# (C_in, C_out, kernel, stride, padding, dilation, groups, H): plain, strided, 1x1 (bmm), grouped, dilated,
# a tiny map (the mixtures' home ground)
GEOMETRIES = [
    (6, 8, 3, 1, 1, 1, 1, 7),
    (6, 8, 3, 2, 1, 1, 1, 8),
    (8, 6, 1, 1, 0, 1, 1, 5),
    (8, 8, 3, 1, 1, 1, 4, 6),
    (6, 4, 3, 1, 2, 2, 1, 6),
    (8, 8, 3, 1, 1, 1, 1, 2),
]


@pytest.fixture(autouse=True)
def _fresh_strategy_state():
    clear_conv_strategy_picks()
    previous = conv_strategy.get_conv_strategy()
    yield
    set_conv_strategy(previous)
    clear_conv_strategy_picks()


def make_pad(geometry, routing, bias, compacted, seed=0):
    c_in, c_out, k, stride, padding, dilation, groups, _ = geometry
    torch.manual_seed(seed)
    pad = PADConv2d(c_in, c_out, k, stride, padding, dilation, groups, bias=bias, routing=routing)
    with torch.no_grad():
        pad.phi.fill_(0.4)  # lambda_s != lambda_d != 1
        torch.nn.init.normal_(pad.attention.fc2.weight)
        if bias:
            torch.nn.init.normal_(pad.bias)
    pad.set_mask(random_mask(pad.kernel_shape, 0.3, seed=seed + 1))
    pad.temperature = 2.0
    oracle = DenseMaskPADConv2d(pad)
    if compacted:
        pad.compact()
    return pad, oracle


def grads(module, x):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.pow(2).sum().backward()
    return out, x.grad


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
@pytest.mark.parametrize("compacted", [False, True])
def test_pad_every_strategy_matches_the_reference_outputs_and_gradients(geometry, routing, compacted):
    bias = geometry[0] == 6
    pad, oracle = make_pad(geometry, routing, bias, compacted)
    x = torch.randn(3, geometry[0], geometry[7], geometry[7] + 1)
    expected, expected_dx = grads(oracle, x)
    ref = oracle.layer
    idx = pad.dynamic_index
    strategies = applicable_strategies(pad.kernel_size, pad.padding, pad.dilation, pad.groups)
    assert set(strategies) >= {"mixture", "grouped", "loop"}
    for strategy in strategies:
        pad.strategy = strategy
        out, dx = grads(pad, x)
        assert_close_f64(out, expected, msg=strategy)
        assert_close_f64(dx, expected_dx, msg=strategy)
        dynamic_grad = pad.dynamic_values.grad if compacted else pad.weight.grad[:, idx]
        assert_close_f64(dynamic_grad, ref.weight.grad[:, idx], msg=strategy)
        static_at = ~pad.mask
        assert_close_f64(pad.static_weight.grad[static_at], ref.static_weight.grad[static_at], msg=strategy)
        assert_close_f64(pad.phi.grad, ref.phi.grad, msg=strategy)
        assert_close_f64(pad.attention.fc1.weight.grad, ref.attention.fc1.weight.grad, msg=strategy)
        if bias:
            assert_close_f64(pad.bias.grad, ref.bias.grad, msg=strategy)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
def test_dynamic_conv_every_strategy_matches_per_sample_convolution(geometry, routing):
    c_in, c_out, k, stride, padding, dilation, groups, h = geometry
    dyn = DynamicConv2d(c_in, c_out, k, stride, padding, dilation, groups, bias=True, routing=routing)
    with torch.no_grad():
        torch.nn.init.normal_(dyn.attention.fc2.weight)
        torch.nn.init.normal_(dyn.bias)
    x = torch.randn(3, c_in, h, h)
    alpha = dyn.attention_weights(x)
    expected = torch.cat([
        F.conv2d(x[b : b + 1], (alpha[b] @ dyn.weight).reshape(dyn.weight_shape), alpha[b] @ dyn.bias, stride,
                 padding, dilation, groups)
        for b in range(3)
    ])
    results = {}
    for strategy in applicable_strategies(dyn.kernel_size, dyn.padding, dyn.dilation, dyn.groups):
        dyn.strategy = strategy
        out, dx = grads(dyn, x)
        assert_close_f64(out, expected, msg=strategy)
        results[strategy] = (dx, dyn.weight.grad.clone(), dyn.attention.fc2.weight.grad.clone())
    reference = results.pop("loop")
    for strategy, got in results.items():
        for a, b in zip(got, reference):
            assert_close_f64(a, b, msg=strategy)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
def test_deployed_every_strategy_matches_the_training_form(routing):
    for geometry in GEOMETRIES:
        pad, _ = make_pad(geometry, routing, bias=True, compacted=True)
        pad.eval()
        deployed = DeployedPADConv2d.from_pad(pad)
        x = torch.randn(2, geometry[0], geometry[7], geometry[7])
        with torch.no_grad():
            pad.strategy = "loop"
            expected = pad(x)
            for strategy in applicable_strategies(pad.kernel_size, pad.padding, pad.dilation, pad.groups):
                deployed.strategy = strategy
                assert_close_f64(deployed(x), expected, msg=f"{geometry} {strategy}")


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
def test_scoring_gradient_of_the_relaxed_mask_is_the_same_for_every_strategy(routing):
    """The partition's Taylor scores dL/dm must not depend on how the conv is computed."""
    pad, _ = make_pad(GEOMETRIES[0], routing, bias=False, compacted=False)
    x = torch.randn(3, 6, 7, 8)
    scores = {}
    for strategy in ("mixture", "mixture_unfold", "grouped", "unfold", "loop"):
        pad.relaxed_mask = pad.mask.to(torch.float64).requires_grad_(True)
        pad.strategy = strategy
        pad(x).pow(2).sum().backward()
        scores[strategy] = pad.relaxed_mask.grad
        pad.relaxed_mask = None
    for strategy, score in scores.items():
        assert_close_f64(score, scores["loop"], msg=strategy)


@pytest.mark.usefixtures("float64")
def test_channels_last_input_gives_the_same_output_for_every_strategy():
    pad, oracle = make_pad(GEOMETRIES[0], "softmax", bias=True, compacted=True)
    x = torch.randn(3, 6, 7, 7)
    expected = oracle(x)
    x_cl = x.to(memory_format=torch.channels_last)
    for strategy in applicable_strategies(pad.kernel_size, pad.padding, pad.dilation, pad.groups):
        pad.strategy = strategy
        assert_close_f64(pad(x_cl), expected, msg=strategy)


@pytest.mark.usefixtures("float64")
def test_mixture_of_one_kernel_is_a_plain_convolution():
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(6, 4, 3, 3)
    ones = torch.ones(2, 1)
    for strategy in ("mixture", "mixture_unfold"):
        out = apply_kernel_mixture(x, w.reshape(1, -1), ones, None, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, strategy)
        assert_close_f64(out, F.conv2d(x, w, padding=1))
    with pytest.raises(ValueError, match="mixture_unfold.*groups=1"):
        apply_kernel_mixture(x, w.reshape(2, -1), torch.ones(2, 2), None, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2,
                             "mixture_unfold")
    with pytest.raises(ValueError, match="strategy='grouped' is not a mixture strategy"):
        apply_kernel_mixture(x, w.reshape(1, -1), ones, None, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, "grouped")


# ----------------------------------------------------------------------------- the choice
def test_heuristic_uses_mixtures_on_small_maps_and_per_sample_kernels_on_large_ones():
    def pick(hw, k=3, stride=1, groups=1):
        return heuristic_strategy((32, 64, hw, hw), (k, k), (stride, stride), (k // 2, k // 2), (1, 1), groups)

    assert pick(2) == "mixture_unfold"  # resnet18 layer4 at 64x64 inputs
    assert pick(4) == "mixture"
    assert pick(4, groups=4) == "mixture"
    assert pick(2, groups=4) == "mixture"  # mixture_unfold needs groups = 1
    assert pick(8) == "unfold"
    assert pick(8, k=1) == "bmm" and pick(4, k=1) == "bmm"
    assert pick(2, k=1) == "mixture_unfold"
    assert pick(16) == "grouped"
    assert pick(8, stride=2) == "mixture"  # 4x4 outputs


def test_autotune_times_once_per_shape_caches_the_pick_and_leaves_no_trace():
    set_conv_strategy("autotune")
    pad, _ = make_pad(GEOMETRIES[0], "softmax", bias=True, compacted=True)
    pad.train()
    x = torch.randn(3, 6, 7, 7, requires_grad=True)
    calls = []
    original = pad.compute

    def counting(*args):
        calls.append(args[-1])
        return original(*args)

    pad.compute = counting
    rng_before = torch.get_rng_state()
    out = pad(x)
    assert torch.equal(torch.get_rng_state(), rng_before)  # timing drew no random numbers
    # no gradient was accumulated by the timing runs (they differentiate with autograd.grad)
    assert all(p.grad is None for p in pad.parameters()) and x.grad is None
    picks = conv_strategy_picks()
    assert len(picks) == 1
    (key, pick), = picks.items()
    assert pick in applicable_strategies(pad.kernel_size, pad.padding, pad.dilation, pad.groups)
    assert "PADConv2d" in key and "x=(3, 6, 7, 7)" in key and "grad=1" in key
    assert len(calls) > 2 and calls[-1] == pick  # timed several candidates, then computed with the pick
    out.sum().backward()
    calls.clear()
    pad(x)
    assert calls == [pick]  # cached: no timing on the second call
    with torch.no_grad():
        pad(x)
    assert len(conv_strategy_picks()) == 2  # forward-only is its own key


def test_saved_picks_are_restored_and_heuristic_and_pinned_modes_never_time():
    pad, _ = make_pad(GEOMETRIES[0], "softmax", bias=False, compacted=True)
    x = torch.randn(3, 6, 7, 7)
    with conv_strategy.conv_strategy("autotune"):
        with torch.no_grad():
            pad(x)
    saved = conv_strategy_picks()
    (key,) = saved
    other = "grouped" if saved[key] != "grouped" else "unfold"
    clear_conv_strategy_picks()
    load_conv_strategy_picks({key: other})
    calls = []
    original = pad.compute
    pad.compute = lambda *args: calls.append(args[-1]) or original(*args)
    with conv_strategy.conv_strategy("autotune"), torch.no_grad():
        pad(x)
    assert calls == [other]  # the stored pick, not a new timing
    calls.clear()
    with conv_strategy.conv_strategy("heuristic"), torch.no_grad():
        pad(x)
    assert calls == [heuristic_strategy(x.shape, pad.kernel_size, pad.stride, pad.padding, pad.dilation, 1)]
    calls.clear()
    with conv_strategy.conv_strategy("loop"), torch.no_grad():
        pad(x)
    assert calls == ["loop"]


def test_bad_modes_and_picks_are_refused_with_what_is_allowed():
    with pytest.raises(ValueError, match="conv_strategy='fast' is not supported; allowed: 'autotune'"):
        set_conv_strategy("fast")
    with pytest.raises(ValueError, match="'bogus'.*allowed strategies"):
        load_conv_strategy_picks({"k": "bogus"})
    dyn = DynamicConv2d(4, 4, 3, padding=1)
    dyn.strategy = "bmm"
    with pytest.raises(ValueError, match="conv strategy 'bmm' cannot compute this layer.*allowed here"):
        dyn(torch.randn(2, 4, 5, 5))
    dyn.strategy = "quick"
    with pytest.raises(ValueError, match="strategy='quick' is not supported"):
        dyn(torch.randn(2, 4, 5, 5))
    assert set(CONV_STRATEGIES) == {"mixture", "mixture_unfold", "grouped", "unfold", "bmm", "loop", "whole"}
    dyn.strategy = "whole"  # channel-granular PAD layers only
    with pytest.raises(ValueError, match="conv strategy 'whole' cannot compute this layer.*allowed here"):
        dyn(torch.randn(2, 4, 5, 5))


def test_strategy_shows_in_the_repr_and_survives_deepcopy():
    dyn = DynamicConv2d(4, 4, 3, padding=1)
    dyn.strategy = "mixture"
    assert "strategy='mixture'" in repr(dyn)
    assert copy.deepcopy(dyn).strategy == "mixture"


@pytest.mark.slow
def test_the_library_default_is_the_autotuner():
    import subprocess
    import sys

    code = "from padnet.layers import conv_strategy; print(conv_strategy.get_conv_strategy())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "autotune"
