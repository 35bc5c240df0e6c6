"""Conv layers in the modes beside a plain forward: gradients through the deployed (and frozen) forms under
every strategy, the channel-granular partition under the autotuner, and an empty batch through every
layer form and strategy (issue 26)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import padnet
from padnet.layers import DynamicConv2d, PADConv2d
from padnet.layers.conv_strategy import (
    CONV_STRATEGIES,
    clear_conv_strategy_picks,
    conv_strategy_picks,
    heuristic_strategy,
    load_conv_strategy_picks,
    set_conv_strategy,
)
from padnet.layers.dynamic_conv import DynamicConvCompute
from tests.helpers import assert_close_f64, random_pad_form

MODES = ("heuristic", "autotune") + CONV_STRATEGIES


@pytest.fixture(autouse=True)
def _fresh_picks():
    clear_conv_strategy_picks()
    yield
    clear_conv_strategy_picks()


def dynamic_layers(model):
    return [m for m in model.modules() if isinstance(m, DynamicConvCompute)]


def small_net(granularity, seed=0):
    """Three PAD convs on a tiny map, where the heuristic picks the mixtures (4x4 -> ``mixture``, the
    strided 1x1's 2x2 -> ``mixture_unfold``): 3x3 with softmax routing and a bias, 3x3 with sigmoid
    routing, then a 1x1 (so ``bmm`` too) with softmax routing."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        PADConv2d(3, 6, 3, padding=1, bias=True, granularity=granularity, reduction=1),
        nn.ReLU(),
        PADConv2d(6, 6, 3, padding=1, routing="sigmoid", granularity=granularity, reduction=1),
        nn.ReLU(),
        PADConv2d(6, 4, 1, stride=2, granularity=granularity, reduction=1),
    )
    for layer in dynamic_layers(net):
        with torch.no_grad():
            nn.init.normal_(layer.attention.fc2.weight)
            if layer.bias is not None:
                nn.init.normal_(layer.bias)
    return net


def pin(model, mode, x):
    """``mode`` for every dynamic layer that can compute it (False when none can); the others keep the
    global rule."""
    pinned = False
    for layer in dynamic_layers(model):
        if mode in ("heuristic", "autotune") or mode in layer.strategy_candidates(x):
            layer.strategy = mode
            pinned = True
    return pinned


def input_and_parameter_grads(model, x, upstream):
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * upstream).sum().backward()
    params = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out, x.grad, params


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode,granularity", [(m, g) for m in MODES for g in ("element", "channel")
                                              if m != "whole" or g == "channel"])
def test_deployed_model_gradients_equal_the_training_forms_under_every_strategy(mode, granularity, training):
    training_form = random_pad_form(small_net(granularity), "masked", 0.4, 0.3)
    deployed = random_pad_form(copy.deepcopy(training_form), "deployed", 0.4, 0.3)
    x = torch.randn(2, 3, 4, 4)
    assert pin(deployed, mode, x)
    training_form.train(training)
    deployed.train(training)
    upstream = torch.randn(2, 4, 2, 2)
    expected, expected_dx, expected_params = input_and_parameter_grads(training_form, x, upstream)
    out, dx, params = input_and_parameter_grads(deployed, x, upstream)
    assert_close_f64(out, expected)
    assert_close_f64(dx, expected_dx)
    if training:
        # The deployed form trains its attention (its entries are frozen buffers-as-parameters).
        assert params and set(params) <= set(expected_params)
        for name, grad in params.items():
            assert_close_f64(grad, expected_params[name], msg=name)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("mode", ["heuristic", "mixture", "mixture_unfold"])
def test_saliency_through_a_frozen_training_form_under_the_mixtures(mode):
    """The same workspace hazard without a deployed layer: a frozen model (no parameter requires grad) in
    eval mode, asked for an input gradient."""
    net = random_pad_form(small_net("element"), "compacted", 0.4, 0.3)
    reference = copy.deepcopy(net)
    net.requires_grad_(False)
    x = torch.randn(2, 3, 4, 4)
    pin(net, mode, x)
    upstream = torch.randn(2, 4, 2, 2)
    _, expected_dx, _ = input_and_parameter_grads(reference, x, upstream)
    _, dx, _ = input_and_parameter_grads(net, x, upstream)
    assert_close_f64(dx, expected_dx)


def test_channel_partition_under_the_autotuner():
    set_conv_strategy("autotune")
    torch.manual_seed(0)
    model = nn.Sequential(PADConv2d(3, 16, 3, padding=1, granularity="channel"), nn.ReLU(),
                          PADConv2d(16, 20, 3, padding=1, granularity="channel"),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 4))

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    batches = [(torch.randn(8, 3, 10, 10), torch.randint(0, 4, (8,)))] * 3
    padnet.partition(model, batches, loss_fn, 0.25, rounds=2)
    rows = [layer.dynamic_units() for layer in dynamic_layers(model)]
    assert 0 < sum(int(r.sum()) for r in rows) < sum(r.numel() for r in rows)
    # ... and at batch 1, where the rule itself picks whole kernels on the row path
    set_conv_strategy("heuristic")
    padnet.partition(copy.deepcopy(model), [(batches[0][0][:1], batches[0][1][:1])], loss_fn, 0.25, rounds=1)


def test_whole_kernels_are_a_candidate_only_where_the_row_path_computes():
    layer = PADConv2d(4, 6, 3, padding=1, granularity="channel")
    layer.set_mask(layer.mask_from_units(torch.tensor([True, False, True, False, False, True])))
    x = torch.randn(2, 4, 5, 5)
    assert "whole" in layer.strategy_candidates(x)
    assert layer.rule_strategy(x[:1]) == "whole"
    layer.relaxed_mask = layer.mask.double().requires_grad_(True)  # scoring: the dense element form
    try:
        assert "whole" not in layer.strategy_candidates(x)
        assert layer.rule_strategy(x[:1]) in layer.strategy_candidates(x)
        layer.strategy = "whole"
        with pytest.raises(ValueError, match="conv strategy 'whole' cannot compute this layer.*allowed here"):
            layer(x)
    finally:
        layer.relaxed_mask = None
        layer.strategy = None
    assert "whole" not in DynamicConv2d(4, 6, 3).strategy_candidates(x)


def test_the_rule_takes_whole_kernels_on_the_row_path_where_it_would_take_grouped_convs():
    layer = PADConv2d(4, 6, 3, padding=1, granularity="channel")
    layer.set_mask(layer.mask_from_units(torch.tensor([True, False, True, False, False, True])))
    large, small = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)  # 256 and 64 output positions
    assert heuristic_strategy(large.shape, (3, 3), (1, 1), (1, 1), (1, 1), 1) == "grouped"
    assert layer.rule_strategy(large) == "whole"
    assert layer.rule_strategy(small) == heuristic_strategy(small.shape, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    element = PADConv2d(4, 6, 3, padding=1)  # no row path: the plain rule
    assert element.rule_strategy(large) == "grouped"


def test_a_stored_pick_the_call_cannot_compute_is_tuned_again():
    set_conv_strategy("autotune")
    layer = PADConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    layer(x)
    (key,) = conv_strategy_picks()
    load_conv_strategy_picks({key: "whole"})  # e.g. a hand-edited checkpoint
    layer(x)
    assert conv_strategy_picks()[key] in layer.strategy_candidates(x)


# ----------------------------------------------------------------------------- an empty batch
def conv_forms():
    """(name, builder) of every conv layer form: DY-Conv, CondConv, PAD (element, channel; masked,
    compacted, deployed), with a bias, on a grouped, strided geometry and a plain 1x1 one."""

    def pad(granularity, form, geometry):
        def build():
            layer = PADConv2d(*geometry, bias=True, granularity=granularity)
            return random_pad_form(nn.Sequential(layer), form, 0.5, 0.2)[0]
        return build

    forms = []
    for geometry in [(4, 6, 3, 2, 1, 1, 2), (4, 6, 1, 1, 0, 1, 1)]:
        tag = "x".join(map(str, geometry))
        forms += [(f"dyconv-{tag}", lambda g=geometry: DynamicConv2d(*g, bias=True)),
                  (f"condconv-{tag}", lambda g=geometry: DynamicConv2d(*g, bias=True, routing="sigmoid"))]
        forms += [(f"pad-{granularity}-{form}-{tag}", pad(granularity, form, geometry))
                  for granularity in ("element", "channel") for form in ("masked", "compacted", "deployed")]
    return forms


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name,build", conv_forms(), ids=[name for name, _ in conv_forms()])
def test_an_empty_batch_gives_the_empty_output_under_every_strategy(name, build):
    layer = build()
    x = torch.randn(0, 4, 7, 7)
    expected_shape = F.conv2d(x, torch.zeros(layer.weight_shape), None, layer.stride, layer.padding,
                              layer.dilation, layer.groups).shape
    for mode in ("heuristic", "autotune") + layer.strategy_candidates(x):
        layer.strategy = mode
        for training in (True, False):
            layer.train(training)
            x = torch.randn(0, 4, 7, 7, requires_grad=True)
            layer.zero_grad(set_to_none=True)
            out = layer(x)
            assert out.shape == expected_shape and out.dtype == torch.float64, (mode, training)
            out.sum().backward()
            assert x.grad is not None and x.grad.shape == x.shape
            for param_name, p in layer.named_parameters():
                if p.requires_grad:  # an empty batch contributes nothing
                    assert p.grad is not None and not p.grad.any(), (mode, param_name)
            with torch.no_grad():  # inference: the workspace path
                assert layer(x).shape == expected_shape


@pytest.mark.slow
@pytest.mark.parametrize("form", ["converted", "deployed"])
def test_an_empty_batch_through_resnet18(form):
    torchvision = pytest.importorskip("torchvision")
    model = padnet.convert(torchvision.models.resnet18(num_classes=10))
    if form == "deployed":
        model = random_pad_form(model, "deployed", 0.3, 0.2)
    model.eval()
    x = torch.randn(0, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (0, 10)
    out.sum().backward()
    assert x.grad.shape == x.shape
    with torch.no_grad():
        assert model(x).shape == (0, 10)
