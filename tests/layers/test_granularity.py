"""Channel-granular PAD (docs/method.md#granularity): the structured forward equals the element-mask oracle for both
layer kinds and every form, the identities hold, the partition ranks whole rows, files round-trip."""

import pytest
import torch
import torch.nn.functional as F

import padnet
from padnet.convert import convert
from padnet.cost import cost
from padnet.layers import DynamicConv2d, MoELinear, PADConv2d, PADMoELinear, pad_layers
from padnet.reference import DenseMaskPADConv2d, per_expert_pad_moe
from tests.helpers import assert_close_f64
from tests.test_deploy import TinyEncoder


def row_mask(layer, ratio, seed=0):
    """An exact-ratio channel mask of ``layer``'s kernel shape."""
    rows = layer.kernel_shape[0]
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    units = torch.zeros(rows, dtype=torch.bool)
    units[order[: round(ratio * rows)]] = True
    return layer.mask_from_units(units)


def channel_conv(strategy=None, **kw):
    args = {**dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, granularity="channel"), **kw}
    torch.manual_seed(0)
    layer = PADConv2d(**args)
    layer.strategy = strategy  # None: the autotuner's pick
    if layer.bias is not None:
        torch.nn.init.normal_(layer.bias)
    with torch.no_grad():
        layer.phi.fill_(-0.3)
    return layer


def grads(out, tensors):
    return torch.autograd.grad(out.pow(2).sum(), tensors, allow_unused=True)


CONV_CASES = [
    dict(),
    dict(bias=True, strategy="mixture"),
    dict(strategy="unfold", stride=2),
    dict(strategy="mixture_unfold"),
    dict(kernel_size=1, padding=0, strategy="bmm"),
    dict(groups=2, bias=True),
    dict(groups=2, strategy="mixture", routing="sigmoid", num_kernels=2),
    dict(routing="sigmoid", num_kernels=2, bias=True),
    dict(strategy="whole", bias=True),  # whole per-sample kernels built from the rows
    dict(strategy="whole", groups=2, routing="sigmoid"),
]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kw", CONV_CASES)
@pytest.mark.parametrize("ratio", [0.0, 0.375, 1.0])
def test_channel_conv_equals_the_dense_mask_oracle_with_gradients(kw, ratio):
    pad = channel_conv(**kw)
    pad.set_mask(row_mask(pad, ratio))
    oracle = DenseMaskPADConv2d(pad)
    x = torch.randn(3, 4, 9, 9, requires_grad=True)
    got, expected = pad(x), oracle(x)
    assert_close_f64(got, expected)
    mine = [x, pad.weight, pad.static_weight, pad.phi, pad.attention.fc1.weight]
    theirs = [x, oracle.layer.weight, oracle.layer.static_weight, oracle.layer.phi, oracle.layer.attention.fc1.weight]
    # Every parameter gets a gradient, zero where it has no effect (DDP without find_unused_parameters).
    for a, b in zip(grads(got, mine), grads(expected, theirs)):
        assert_close_f64(a, b)
    pad.compact()
    assert_close_f64(pad(x), expected)
    deployed = pad.to_deployed().eval()
    with torch.no_grad():
        assert_close_f64(deployed(x), pad.eval()(x))
    # The deployed layer stores (1 - kappa) rows static, K kappa rows dynamic and the row index.
    dynamic_rows = round(ratio * 8)
    state = deployed.state_dict()
    assert state["static_values"].numel() == (8 - dynamic_rows) * pad.row_numel
    assert state["dynamic_values"].shape == (pad.num_kernels, dynamic_rows * pad.row_numel)
    assert state["dynamic_rows"].dtype == torch.int32 and state["dynamic_rows"].numel() == dynamic_rows
    assert "dynamic_index" not in state
    assert deployed.static_kernel.numel() == (8 - dynamic_rows) * pad.row_numel  # held compact in memory


@pytest.mark.usefixtures("float64")
def test_channel_identities_kappa_one_is_dy_conv_and_kappa_zero_a_static_conv():
    pad = channel_conv(bias=True)
    with torch.no_grad():
        pad.phi.zero_()
    pad.lambda_mode = "none"
    dyn = DynamicConv2d(4, 8, 3, padding=1, bias=True)
    dyn.load_state_dict(pad.state_dict(), strict=False)
    x = torch.randn(2, 4, 6, 6)
    assert_close_f64(pad(x), dyn(x))
    pad.set_mask(row_mask(pad, 0.0))
    lambda_s, _ = pad.scales
    bias = pad.attention_weights(x) @ pad.bias
    static = F.conv2d(x, lambda_s * pad.static_weight, None, padding=1) + bias[:, :, None, None]
    assert_close_f64(pad(x), static)


@pytest.mark.usefixtures("float64")
def test_channels_last_input_gives_channels_last_output():
    pad = channel_conv()
    pad.set_mask(row_mask(pad, 0.5))
    x = torch.randn(2, 4, 6, 6)
    expected = pad(x)
    got = pad(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close_f64(got, expected)


def test_a_mask_that_splits_a_row_is_refused_and_the_granularity_is_final_once_compacted():
    pad = channel_conv()
    mask = torch.ones(pad.kernel_shape, dtype=torch.bool)
    mask[2, 0, 0, 0] = False
    with pytest.raises(ValueError, match=r"granularity='channel'.*rows \[2\]"):
        pad.set_mask(mask)
    with pytest.raises(ValueError, match="granularity='block' is not supported; allowed: 'element', 'channel'"):
        PADConv2d(4, 8, 3, granularity="block")
    element = PADConv2d(4, 8, 3)
    element.set_mask(mask)
    with pytest.raises(ValueError, match="granularity='channel'"):
        element.set_granularity("channel")
    pad.compact()
    with pytest.raises(ValueError, match="compacted"):
        pad.set_granularity("element")


def moe_pair(ratio, bias=True):
    torch.manual_seed(0)
    pad = PADMoELinear(6, 10, num_experts=4, top_k=2, bias=bias, granularity="channel")
    with torch.no_grad():
        torch.nn.init.normal_(pad.router.w_gate)
        pad.phi.fill_(0.4)
    pad.set_mask(row_mask(pad, ratio))
    return pad.eval()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_channel_moe_equals_the_per_expert_form_in_every_form(ratio, bias):
    pad = moe_pair(ratio, bias)
    x = torch.randn(2, 7, 6, requires_grad=True)
    got, expected = pad(x), per_expert_pad_moe(pad, x)
    assert_close_f64(got, expected)
    params = [x, pad.weight, pad.static_weight, pad.phi] + ([pad.bias] if bias else [])
    for a, b in zip(grads(got, params), grads(expected, params)):
        assert_close_f64(a, b)
    pad.compact()
    assert_close_f64(pad(x), expected)
    deployed = pad.to_deployed()
    with torch.no_grad():
        assert_close_f64(deployed(x), expected)
    assert deployed.state_dict()["dynamic_rows"].numel() == round(ratio * 10)


@pytest.mark.usefixtures("float64")
def test_channel_moe_at_kappa_one_is_the_moe():
    moe = MoELinear(6, 10, num_experts=4, top_k=2).eval()
    torch.nn.init.normal_(moe.router.w_gate)
    pad = PADMoELinear(6, 10, num_experts=4, top_k=2, lambda_mode="none", granularity="channel").eval()
    pad.load_state_dict(moe.state_dict(), strict=False)
    x = torch.randn(5, 6)
    assert_close_f64(pad(x), moe(x))


def test_cost_splits_static_and_dynamic_work():
    moe = moe_pair(0.5)
    model = torch.nn.Sequential(moe)
    counted = cost(model, torch.randn(1, 3, 6)).layers[0]
    dense = 6 * 10
    # Per token: router 6 x 4 and the static rows (1 - kappa) N once; top-2 products of the kappa N rows.
    assert counted.static_macs == 3 * (6 * 4 + dense // 2)
    assert counted.dynamic_macs == 3 * 2 * dense // 2 and counted.aggregation_macs == 0
    conv = channel_conv()
    conv.set_mask(row_mask(conv, 0.25))
    counted = cost(torch.nn.Sequential(conv), torch.randn(1, 4, 5, 5)).layers[0]
    attention = sum(m.weight.numel() for m in conv.attention.modules() if isinstance(m, torch.nn.Linear))
    assert counted.static_macs == attention + 25 * 6 * conv.row_numel
    assert counted.dynamic_macs == 25 * 2 * conv.row_numel
    assert counted.aggregation_macs == conv.num_kernels * 2 * conv.row_numel


def scoring_setup(granularity, scope="local"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 6, 1))
    convert(model, include=["1", "2"], granularity=granularity)
    batches = [(torch.randn(4, 3, 8, 8), torch.randn(4, 6, 4, 4)) for _ in range(2)]
    return model, batches


def mse(model, batch):
    return F.mse_loss(model(batch[0]), batch[1])


@pytest.mark.parametrize("scope", ["local", "global"])
def test_partition_keeps_exact_kappa_in_channels_deterministically(scope):
    model, batches = scoring_setup("channel")
    report = padnet.partition(model, batches, mse, 0.5, rounds=2, scope=scope)
    layers = [layer for _, layer in pad_layers(model)]
    dynamic_rows = [int(layer.dynamic_units().sum()) for layer in layers]
    if scope == "local":
        assert dynamic_rows == [4, 3]
    assert sum(dynamic_rows) == 7 and report.unit_ratio == 0.5 and report.granularity == "channel"
    for layer in layers:  # whole rows
        rows = layer.mask.reshape(layer.kernel_shape[0], -1)
        assert bool((rows.all(1) | ~rows.any(1)).all())
    again, _ = scoring_setup("channel")
    padnet.partition(again, batches, mse, 0.5, rounds=2, scope=scope)
    assert all(torch.equal(a.mask, b.mask) for (_, a), (_, b) in zip(pad_layers(model), pad_layers(again)))


def test_channel_score_is_the_absolute_row_sum_of_the_signed_element_terms():
    model, batches = scoring_setup("channel")
    layers = [layer for _, layer in pad_layers(model)]
    relaxed = [layer.mask.float().requires_grad_(True) for layer in layers]
    for layer, m in zip(layers, relaxed):
        layer.relaxed_mask = m
    model.eval()
    signed = [torch.zeros_like(m) for m in relaxed]
    for batch in batches:
        for acc, g in zip(signed, torch.autograd.grad(mse(model, batch), relaxed)):
            acc += g
    for layer in layers:
        layer.relaxed_mask = None
    expected = [s.reshape(s.shape[0], -1).sum(1).abs() for s in signed]
    padnet.partition(model, batches, mse, 0.5, rounds=1, scope="local")
    for layer, score in zip(layers, expected):
        keep = torch.sort(score, descending=True, stable=True).indices[: round(0.5 * score.numel())]
        assert set(layer.dynamic_units().nonzero().squeeze(1).tolist()) == set(keep.tolist())


@pytest.mark.parametrize("scorer", ["random", "magnitude"])
def test_baseline_scorers_rank_channels(scorer):
    model, _ = scoring_setup("element")
    report = padnet.partition(model, None, None, 0.5, rounds=1, scorer=scorer, scope="local", granularity="channel")
    assert report.granularity == "channel" and model.padnet_config["granularity"] == "channel"
    assert [int(layer.dynamic_units().sum()) for _, layer in pad_layers(model)] == [4, 3]


@pytest.mark.parametrize("form", ["training", "compacted", "deployed"])
def test_channel_models_round_trip_through_files(tmp_path, form):
    torch.manual_seed(0)
    model = padnet.build_arch("torchvision.resnet18", num_classes=10)
    convert(model, include=["layer1.*", "layer2.0.*"], granularity="channel")
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(row_mask(layer, 0.3, seed=i))
    if form == "compacted":
        padnet.compact(model)
    if form == "deployed":
        padnet.deploy(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    path = padnet.save(model, tmp_path / "m.safetensors")
    loaded = padnet.load(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert loaded.padnet_config["granularity"] == "channel"
    assert all(layer.granularity == "channel" for layer in loaded.modules() if hasattr(layer, "dynamic_index"))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_channel_moe_model_round_trips_deployed(tmp_path):
    model = convert(TinyEncoder(), dynamic="moe", num_experts=4, granularity="channel")
    for i, (_, layer) in enumerate(pad_layers(model)):
        with torch.no_grad():
            layer.router.w_gate.normal_()
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
        layer.set_mask(row_mask(layer, 0.5, seed=i))
    padnet.deploy(model)
    padnet.save(model, tmp_path / "moe.safetensors")
    loaded = padnet.load(tmp_path / "moe.safetensors", model_factory=TinyEncoder)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x), atol=0, rtol=0)


@pytest.mark.usefixtures("float64")
def test_deployed_channel_batch1_kernel_keeps_its_static_rows_and_follows_their_changes():
    """Inference at batch 1 writes a deployed channel layer's static rows once into a kernel kept for the
    layer (padnet.layers.rows._whole_kernels): the outputs equal the dense-mask oracle's, the kernel is
    reused, and a change to the stored rows (in place, or by load_state_dict) is seen by the next call."""
    import copy as copy_module

    from padnet.layers import assemble
    from padnet.layers.deployed_conv import DeployedPADConv2d
    from padnet.reference import DenseMaskPADConv2d
    from tests.helpers import assert_close_f64

    torch.manual_seed(0)
    pad = PADConv2d(4, 6, 3, padding=1, num_kernels=3, granularity="channel")
    rows = torch.tensor([True, False, False, True, False, False])
    pad.set_mask(rows.reshape(-1, 1, 1, 1).expand(pad.mask.shape).clone())
    layer = DeployedPADConv2d.from_pad(copy_module.deepcopy(pad).eval()).eval()
    oracle = DenseMaskPADConv2d(pad).eval()
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        assert_close_f64(layer(x), oracle(x))
        kept = assemble._local.prefilled[layer][2]
        assert_close_f64(layer(x), oracle(x))
        assert assemble._local.prefilled[layer][2] is kept  # written once, reused
        layer.static_kernel.mul_(2)  # in place: its version changes
        fresh = copy_module.deepcopy(layer)
        assert_close_f64(layer(x), fresh(x))
        for seed in (1, 2, 3):  # reloaded: a new tensor each time (an address may come back, the object not)
            state = copy_module.deepcopy(layer.state_dict())
            state["static_values"] = torch.randn(state["static_values"].shape,
                                                 generator=torch.Generator().manual_seed(seed))
            layer.load_state_dict(state)
            fresh = copy_module.deepcopy(layer)
            assert_close_f64(layer(x), fresh(x))
        assert not torch.equal(layer(x), oracle(x))
    assemble.release_workspace()
