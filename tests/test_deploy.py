"""padnet.deploy: the inference form equals the training form; kernel strategies agree."""

import pytest
import torch
import torchvision
from torch import nn

import padnet
from padnet.convert import convert
from padnet.layers import DeployedPADConv2d, DeployedPADMoELinear, PADConv2d, PADMoELinear, pad_layers
from padnet.layers.protocol import KERNEL_STRATEGIES, apply_per_sample_kernels, choose_kernel_strategy
from tests.helpers import assert_close_f64, random_mask

MODES = ["both", "static", "dynamic", "none"]


# Only the first two stages by default: PAD layers of layer3/layer4 hold millions of entries and make
# each model take ~10 s to build on a small CPU; one test converts the whole network.
FIRST_STAGES = ["layer1.*", "layer2.*"]


def small_resnet(mode="both", kappa=0.3, seed=0, include=FIRST_STAGES):
    torch.manual_seed(seed)
    model = convert(torchvision.models.resnet18(num_classes=10), lambda_mode=mode, include=include)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, kappa, seed=i))
        with torch.no_grad():
            layer.phi.fill_(0.4 + 0.05 * i)  # lambdas away from 1 so folding them matters
            if layer.bias is not None:
                layer.bias.normal_()
    return model.eval()


def check_deploy_matches(model, expected_layers):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        padnet.deploy(model)
        got = model(x)
    assert not any(isinstance(m, PADConv2d) for m in model.modules())
    assert sum(isinstance(m, DeployedPADConv2d) for m in model.modules()) == expected_layers
    assert_close_f64(got, expected)


@pytest.mark.slow
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("mode", MODES)
def test_deployed_resnet18_equals_training_form(mode):
    check_deploy_matches(small_resnet(mode), expected_layers=9)


@pytest.mark.slow
@pytest.mark.usefixtures("float64")
def test_deployed_fully_converted_resnet18_equals_training_form():
    check_deploy_matches(small_resnet("both", include=None), expected_layers=19)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["both", "static", "dynamic"])
def test_folding_the_lambdas_is_needed(mode):
    # Guards the equality tests: the deployed values differ from the raw entries by lambda_s / lambda_d.
    layer = small_resnet(mode).layer1[0].conv1
    lambda_s, lambda_d = (float(v) for v in layer.scales)
    assert (lambda_s, lambda_d) != (1.0, 1.0)
    dep = DeployedPADConv2d.from_pad(layer)
    raw_static = layer.static_weight.reshape(-1)[layer.static_index]
    torch.testing.assert_close(dep.static_values, lambda_s * raw_static)
    torch.testing.assert_close(dep.dynamic_values, lambda_d * layer.dynamic_entries())


@pytest.mark.slow
def test_deploy_after_compact_and_stored_entries():
    model = small_resnet("both")
    layer = model.layer2[0].conv1
    layer.compact()
    assert layer.compacted
    lambda_s, lambda_d = layer.scales
    nnz, numel = layer.num_dynamic, layer.kernel_numel
    static = layer.static_weight.reshape(-1)[layer.static_index].detach().clone()
    dynamic = layer.dynamic_values.detach().clone()
    padnet.deploy(model)
    dep = model.layer2[0].conv1
    keys = set(dep.state_dict())
    assert "mask" not in keys and "phi" not in keys and "weight" not in keys
    assert dep.static_values.shape == (numel - nnz,) and dep.dynamic_values.shape == (4, nnz)
    assert dep.dynamic_index.dtype == torch.long and dep.dynamic_index.shape == (nnz,)
    torch.testing.assert_close(dep.static_values, lambda_s * static)
    torch.testing.assert_close(dep.dynamic_values, lambda_d * dynamic)
    assert "dynamic_ratio=" in repr(dep)


def test_deployed_layer_holds_each_value_once():
    # In memory: the dense static kernel the forward copies (which holds the static values), the K nnz
    # dynamic values, the int64 index list and the attention; no second copy of the static values and
    # no list of the static positions (as int64 that alone would outweigh the static values).
    layer = small_resnet("both").layer1[0].conv1
    dep = DeployedPADConv2d.from_pad(layer)
    nnz, numel = dep.num_dynamic, dep.kernel_numel
    held = {name: t.numel() * t.element_size() for name, t in [*dep.named_parameters(), *dep.named_buffers()]}
    attention = sum(v for name, v in held.items() if name.startswith("attention."))
    assert sum(held.values()) - attention == 4 * numel + 4 * 4 * nnz + 8 * nnz
    torch.testing.assert_close(dep.static_kernel[dep.dynamic_index], torch.zeros(nnz))
    # The file still holds exactly the N - nnz static values, in position order.
    state = dep.state_dict()
    assert state["static_values"].shape == (numel - nnz,) and "static_kernel" not in state
    lambda_s = float(layer.scales[0])
    torch.testing.assert_close(state["static_values"],
                               lambda_s * layer.static_weight.detach().reshape(-1)[layer.static_index])


def test_deployed_state_dict_errors_name_the_key():
    dep = DeployedPADConv2d.from_pad(small_resnet("both").layer1[0].conv1)
    state = dep.state_dict()
    short = dict(state, static_values=state["static_values"][:-1])
    with pytest.raises(RuntimeError, match="static_values: static_values must be 1-D with N - nnz"):
        dep.load_state_dict(short)
    missing = {k: v for k, v in state.items() if k != "static_values"}
    with pytest.raises(RuntimeError, match="Missing key.*static_values"):
        dep.load_state_dict(missing)


@pytest.mark.usefixtures("float64")
def test_deployed_layer_per_sample_independence():
    layer = PADConv2d(8, 16, 3, padding=1, bias=True)
    layer.set_mask(random_mask(layer.kernel_shape, 0.3))
    with torch.no_grad():
        layer.phi.fill_(-0.5)
        layer.bias.normal_()
    layer.eval()
    dep = DeployedPADConv2d.from_pad(layer)
    x = torch.randn(6, 8, 10, 10)
    with torch.no_grad():
        assert_close_f64(dep(x), layer(x))
        assert_close_f64(dep(x[:2]), layer(x)[:2])


@pytest.mark.usefixtures("float64")
def test_deployed_state_dict_adopts_the_files_index():
    a = PADConv2d(4, 6, 3, padding=1)
    a.set_mask(random_mask(a.kernel_shape, 0.2, seed=1))
    a.eval()
    dep_a = DeployedPADConv2d.from_pad(a)
    dep_b = DeployedPADConv2d(4, 6, 3, padding=1)  # fully dynamic index list
    dep_b.load_state_dict(dep_a.state_dict(), strict=True)
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        assert_close_f64(dep_b(x), a(x))
    bad = dict(dep_a.state_dict())
    bad["dynamic_index"] = bad["dynamic_index"].flip(0)
    with pytest.raises(RuntimeError, match="strictly increasing"):
        DeployedPADConv2d(4, 6, 3, padding=1).load_state_dict(bad)


def pad_moe(mode, bias=True):
    layer = PADMoELinear(12, 10, num_experts=4, top_k=2, bias=bias, lambda_mode=mode)
    with torch.no_grad():
        layer.router.w_gate.normal_()
        layer.phi.fill_(0.6)
    layer.set_mask(random_mask(layer.kernel_shape, 0.5, seed=3))
    return layer.eval()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_deployed_pad_moe_equals_training_form(mode, bias):
    layer = pad_moe(mode, bias)
    dep = DeployedPADMoELinear.from_pad(layer)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        assert_close_f64(dep(x), layer(x))
    assert dep.static_values.numel() == layer.kernel_numel - layer.num_dynamic
    assert dep.dynamic_values.shape == (4, layer.num_dynamic)


class TinyBlock(nn.Module):
    """A transformer-like layer: attention stand-in, then an FFN hidden -> 4 hidden -> hidden."""

    def __init__(self, hidden=16):
        super().__init__()
        self.mix = nn.Linear(hidden, hidden)
        self.up = nn.Linear(hidden, 4 * hidden)
        self.down = nn.Linear(4 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x):
        x = x + self.mix(x)
        return self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(TinyBlock(), TinyBlock())

    def forward(self, x):
        return self.layers(x)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("mode", MODES)
def test_deployed_tiny_transformer_equals_training_form(mode):
    model = convert(TinyEncoder(), dynamic="moe", lambda_mode=mode, num_experts=4)
    for i, (_, layer) in enumerate(pad_layers(model)):
        with torch.no_grad():
            layer.router.w_gate.normal_()
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))  # experts diverged, as after training
            layer.phi.fill_(-0.3)
        layer.set_mask(random_mask(layer.kernel_shape, 0.5, seed=i))
    model.eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = model(x)
        padnet.deploy(model)
        got = model(x)
    assert sum(isinstance(m, DeployedPADMoELinear) for m in model.modules()) == 2
    assert_close_f64(got, expected)


def test_deploy_rejects_models_without_pad_layers():
    with pytest.raises(ValueError, match="no PAD layer"):
        padnet.deploy(nn.Sequential(nn.Conv2d(3, 4, 3)))


# ----------------------------------------------------------------------------- kernel strategies
CASES = [
    # (C_in, C_out, k, stride, padding, dilation, groups, H)
    (6, 4, 3, 1, 1, 1, 1, 9),
    (6, 4, 3, 2, 1, 1, 1, 9),
    (6, 4, 3, 1, 2, 2, 1, 8),
    (6, 6, 3, 1, 1, 1, 3, 7),
    (6, 6, 3, 1, 1, 1, 6, 7),
    (8, 5, 1, 1, 0, 1, 1, 6),
    (8, 5, 1, 2, 0, 1, 1, 7),
    (4, 4, (1, 3), 1, (0, 1), 1, 1, 5),
]


@pytest.mark.slow
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_kernel_strategy_gives_the_same_output(case, with_bias):
    c_in, c_out, k, stride, padding, dilation, groups, h = case
    ks = (k, k) if isinstance(k, int) else k
    pad = (padding, padding) if isinstance(padding, int) else padding
    batch = 3
    x = torch.randn(batch, c_in, h, h + 1)
    kernels = torch.randn(batch, c_out * (c_in // groups) * ks[0] * ks[1])
    bias = torch.randn(batch, c_out) if with_bias else None
    args = (c_out, ks, (stride, stride), pad, (dilation, dilation), groups)
    expected = torch.cat([
        torch.nn.functional.conv2d(x[b : b + 1], kernels[b].reshape(c_out, c_in // groups, *ks),
                                   None if bias is None else bias[b], stride, pad, dilation, groups)
        for b in range(batch)
    ])
    tried = 0
    for strategy in KERNEL_STRATEGIES:
        if strategy in ("unfold", "bmm") and groups != 1:
            with pytest.raises(ValueError, match="groups=1"):
                apply_per_sample_kernels(x, kernels, bias, *args, strategy=strategy)
            continue
        if strategy == "bmm" and (ks != (1, 1) or pad != (0, 0) or dilation != 1):
            with pytest.raises(ValueError, match="1x1"):
                apply_per_sample_kernels(x, kernels, bias, *args, strategy=strategy)
            continue
        out = apply_per_sample_kernels(x, kernels, bias, *args, strategy=strategy)
        assert_close_f64(out, expected)
        tried += 1
    assert tried >= 3


def test_kernel_strategy_rule_and_bad_strategy():
    def pick(batch, c, k, hw, groups=1):
        x = torch.empty(batch, c, hw, hw)
        p = (k // 2, k // 2)
        return choose_kernel_strategy(x, (k, k), (1, 1), p, (1, 1), groups)

    assert pick(1, 1024, 1, 14) == "bmm" and pick(64, 1024, 1, 14) == "bmm"
    assert pick(1, 64, 3, 56) == "grouped"
    assert pick(8, 64, 3, 56) == "grouped"
    assert pick(64, 64, 3, 56) == "grouped"
    assert pick(8, 512, 3, 7) == "unfold"
    assert pick(64, 32, 3, 7, groups=32) == "grouped"
    assert pick(32, 128, 3, 8) == "unfold" and pick(32, 64, 3, 16) == "grouped"
    # the measured cross-overs are the same while autograd records (training, scoring)
    x = torch.empty(8, 512, 7, 7)
    assert choose_kernel_strategy(x, (3, 3), (1, 1), (1, 1), (1, 1), 1, needs_grad=True) == "unfold"
    with pytest.raises(ValueError, match="strategy='fast'.*allowed"):
        apply_per_sample_kernels(torch.randn(1, 2, 3, 3), torch.randn(1, 4), None, 2, (1, 1), (1, 1), (0, 0),
                                 (1, 1), 1, strategy="fast")


# ----------------------------------------------------------------------------- trace / compile
def tiny_cnn():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    convert(model)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
        with torch.no_grad():
            layer.phi.fill_(0.5)
    return model.eval()


@pytest.mark.usefixtures("float64")
def test_deployed_model_runs_under_jit_trace_at_batch_1():
    model = padnet.deploy(tiny_cnn())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        x2 = torch.randn(1, 3, 16, 16)
        assert_close_f64(traced(x2), model(x2))


@pytest.mark.usefixtures("float64")
@pytest.mark.slow
def test_deployed_layers_run_under_torch_compile_at_batch_1():
    torch._dynamo.reset()
    model = padnet.deploy(tiny_cnn())
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert_close_f64(compiled(x), model(x))


@pytest.mark.usefixtures("float64")
def test_deploy_and_cost_ask_the_layer_so_a_new_kind_needs_no_change_outside_layers():
    """A new partially dynamic layer kind registers its deployed form beside it (``deployed_form``) and
    answers ``macs``/``kind``; padnet.deploy and padnet.cost then handle it without edits."""
    import padnet
    from padnet.cost import cost
    from padnet.layers import DeployedPADConv2d, PADConv2d

    class MyPADConv(PADConv2d):
        pass

    class MyDeployedConv(DeployedPADConv2d):
        @property
        def kind(self):
            return "my deployed conv"

    MyPADConv.deployed_form = MyDeployedConv
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MyPADConv(4, 4, 3, padding=1))
    x = torch.randn(2, 3, 6, 6)
    expected = model.eval()(x)
    padnet.deploy(model, allow_unpartitioned=True)  # the mask does not matter here
    assert isinstance(model[1], MyDeployedConv)
    assert_close_f64(model(x), expected)
    kinds = {layer.kind for layer in cost(model, x).layers}
    assert "my deployed conv" in kinds


class MaxPoolAttention(nn.Module):
    """docs/extending.md's example: the kernel attention read from a max-pool."""

    def __init__(self, attention):
        super().__init__()
        self.inner = attention

    def forward(self, x, temperature=1.0):
        return self.inner(torch.nn.functional.adaptive_max_pool2d(x, 1), temperature)


class MaxPADConv2d(PADConv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attention = MaxPoolAttention(self.attention)


@pytest.mark.usefixtures("float64")
def test_the_extending_guide_example_layer_partitions_deploys_and_costs():
    """docs/extending.md's example kind: a PAD conv with max-pooled attention, with no change to padnet."""
    from padnet.cost import cost

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MaxPADConv2d(4, 4, 3, padding=1))
    x = torch.randn(4, 3, 6, 6)
    padnet.partition(model, [(x, None)], lambda m, b: m(b[0]).pow(2).mean(), 0.3, rounds=2)
    padnet.compact(model)
    expected = model.eval()(x)
    padnet.deploy(model)
    assert isinstance(model[1], DeployedPADConv2d) and isinstance(model[1].attention, MaxPoolAttention)
    assert_close_f64(model(x), expected)
    assert cost(model, x).aggregation_macs > 0


@pytest.fixture
def conversions(monkeypatch):
    """padnet.layers.conversions with a registry of its own for the test."""
    from padnet.layers import conversions

    monkeypatch.setattr(conversions, "_CONVERSIONS", dict(conversions._CONVERSIONS))
    return conversions


@pytest.mark.usefixtures("float64")
def test_the_extending_guide_conversion_kind_converts_saves_and_loads(conversions, tmp_path):
    """docs/extending.md's registration: one register_conversion call makes the kind reachable from
    padnet.convert (both forms, include patterns, upcycling), a run config, deploy, save and load."""
    from padnet.layers import DynamicConv2d, dynamic_layers
    from padnet.layers.protocol import register_conversion
    from padnet.models import build
    from padnet.train.config import config_from_dict

    def conv_settings(config):
        return dict(num_kernels=config.num_kernels, reduction=config.reduction, routing=config.routing,
                    upcycle=config.init == "upcycle")

    register_conversion(
        "maxconv", conversions.find_convs,
        dynamic=lambda conv, config: DynamicConv2d.from_conv(conv, **conv_settings(config)),
        pad=lambda conv, config: MaxPADConv2d.from_conv(conv, **conv_settings(config), lambda_mode=config.lambda_mode),
        looks_for="nn.Conv2d to convert",
    )
    torch.manual_seed(0)
    model = build("small_resnet", 3, 1, True, width=4, layers=[1]).eval()
    x = torch.randn(2, 1, 8, 8)
    static_out = model(x)
    padnet.convert(model, dynamic="maxconv", num_kernels=2, init="upcycle", exclude=["*.conv2"])
    layers = pad_layers(model)
    assert [n for n, _ in layers] == model.padnet_config["converted"] == ["layer1.0.conv1"]
    assert all(type(layer) is MaxPADConv2d and layer.num_kernels == 2 for _, layer in layers)
    assert_close_f64(model(x), static_out)  # upcycled: the same function
    fully = padnet.convert(build("small_resnet", 3, 1, True, width=4, layers=[1]), dynamic="maxconv", pad=False)
    assert {type(m) for _, m in dynamic_layers(fully)} == {DynamicConv2d}
    run = config_from_dict({"data": {"name": "digits"}, "dynamic": {"mode": "pad", "kind": "maxconv"}}, preflight=False)
    assert run.dynamic.convert_config().dynamic == "maxconv"

    for _, layer in layers:
        layer.set_mask(torch.rand(layer.kernel_shape) < 0.3)
    padnet.deploy(model)
    expected = model(x)
    padnet.save(model, tmp_path / "m.safetensors")
    loaded = padnet.load(tmp_path / "m.safetensors")
    assert isinstance(loaded.get_submodule("layer1.0.conv1").attention, MaxPoolAttention)
    assert_close_f64(loaded(x), expected)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("what", ["deploy", "compact"])
def test_unpartitioned_model_is_refused_unless_asked(what):
    model = padnet.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)))
    action = getattr(padnet, what)
    with pytest.raises(ValueError, match=rf"{what}\(\) on a model whose 2 PAD layers are all fully dynamic.*"
                                         rf"padnet.partition.*{what}\(model, allow_unpartitioned=True\)"):
        action(model)
    assert all(type(m).__name__ == "PADConv2d" and not m.compacted for m in model[1:])  # left as it was
    x = torch.randn(1, 3, 8, 8)
    expected = model.eval()(x)
    action(model, allow_unpartitioned=True)
    assert_close_f64(model.eval()(x), expected)
    # One partitioned layer is enough: the model was partitioned (kappa may keep some layers whole).
    other = padnet.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)))
    other[1].set_mask(torch.rand(other[1].kernel_shape) < 0.5)
    getattr(padnet, what)(other)


def test_model_cost_takes_an_input_shape():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    by_shape = padnet.model_cost(model, input_shape=(1, 3, 8, 8))
    by_input = padnet.cost.cost(model, torch.randn(1, 3, 8, 8))
    assert by_shape.macs == by_input.macs == 4 * 6 * 6 * 27 + 2 * 144
    assert padnet.model_cost(model).params == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match=r"input_shape=\(1, 0\) must be a tuple of integers >= 1"):
        padnet.model_cost(model, input_shape=(1, 0))
