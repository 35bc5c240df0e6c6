"""Stored parameters, bytes and MACs (padnet.cost) against docs/method.md#storage."""

import pytest
import torch
import torchvision
from torch import nn

import padnet
from padnet.convert import convert
from padnet.cost import cost
from padnet.layers import pad_layers

# docs/method.md#storage reference counts, millions: static, DY-Conv, PAD kappa=0.3, PAD kappa=0.5.
PAPER = {"resnet50": (25.6, 97.1, 47.9, 62.0), "resnet18": (11.7, 45.2, 21.8, 28.5)}


def exact_masks(model, kappa, seed=0):
    """A random mask with exactly round(kappa N) dynamic entries in every PAD layer."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in pad_layers(model):
        n = layer.kernel_numel
        nnz = round(kappa * n)
        r = torch.rand(n, generator=g)
        mask = r <= r.kthvalue(nnz).values if nnz else torch.zeros(n, dtype=torch.bool)
        assert int(mask.sum()) == nnz
        layer.set_mask(mask.reshape(layer.kernel_shape))
    return model


def formula(arch, kappa):
    """Stored values (docs/method.md#storage), computed from the static model: (1 - kappa) N + kappa K N + attention."""
    static = getattr(torchvision.models, arch)()
    total = sum(p.numel() for p in static.parameters())
    convs = [m for m in static.modules() if isinstance(m, nn.Conv2d)][1:]  # stem stays static
    for conv in convs:
        n = conv.weight.numel()
        nnz = round(kappa * n)
        hidden = max(4, conv.in_channels // 16)
        attention = conv.in_channels * hidden + hidden * 4 + 4
        bias = 4 * conv.out_channels if conv.bias is not None else 0
        total += (n - nnz) + 4 * nnz + attention + bias - n - (conv.bias.numel() if conv.bias is not None else 0)
    return total


def deployed_params(arch, kappa):
    model = exact_masks(convert(getattr(torchvision.models, arch)()), kappa)
    return cost(padnet.deploy(model)).params


@pytest.mark.parametrize(
    "arch",
    ["resnet18", "mobilenet_v2", pytest.param("resnet50", marks=pytest.mark.slow)],
)
def test_deployed_parameters_match_spec_section_6(arch):
    got = deployed_params(arch, 0.3)
    assert got == formula(arch, 0.3)
    if arch in PAPER:
        assert abs(got / 1e6 - PAPER[arch][2]) / PAPER[arch][2] < 0.01, got


@pytest.mark.slow
def test_resnet18_static_dynamic_and_half_counts_match_spec():
    static, dynamic, _, half = PAPER["resnet18"]
    assert abs(cost(torchvision.models.resnet18()).params / 1e6 - static) / static < 0.01
    assert abs(cost(convert(torchvision.models.resnet18(), pad=False)).params / 1e6 - dynamic) / dynamic < 0.01
    assert abs(deployed_params("resnet18", 0.5) / 1e6 - half) / half < 0.01


def small_model(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1, bias=True),
                          nn.Conv2d(16, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    if kind != "static":
        convert(model, pad=kind != "dynamic")
    if kind in ("pad", "deployed"):
        exact_masks(model, 0.25)
    if kind == "deployed":
        padnet.deploy(model)
    return model


def test_macs_split_conv_and_aggregation():
    x = torch.randn(2, 3, 10, 10)
    static, dyn, pad, dep = (cost(small_model(k), x) for k in ("static", "dynamic", "pad", "deployed"))
    conv_only = 8 * 3 * 9 * 100 + 16 * 8 * 9 * 100 + 16 * 16 * 100 + 16 * 5
    assert static.conv_macs == conv_only and static.aggregation_macs == 0
    # PAD does not change the convolution MACs (attention FCs add a little matmul)
    attention = (8 * 4 + 4 * 4) + (16 * 4 + 4 * 4)
    assert dyn.conv_macs == pad.conv_macs == dep.conv_macs == conv_only + attention
    n1, n2 = 16 * 8 * 9, 16 * 16
    bias = 2 * 4 * 16  # the two converted convs keep nn.Conv2d's default bias, dynamic
    assert dyn.aggregation_macs == 4 * (n1 + n2) + bias
    assert pad.aggregation_macs == dep.aggregation_macs == 4 * (round(0.25 * n1) + round(0.25 * n2)) + bias
    assert dep.batch_size == 2
    layer = next(r for r in dep.layers if r.name == "1")
    assert layer.kind == "DeployedPADConv2d" and layer.dynamic_ratio == pytest.approx(0.25, abs=1e-3)
    assert "| total |" in dep.table()


def test_bytes_count_masks_and_index_lists():
    pad, dep = small_model("pad"), small_model("deployed")
    pad_layer, dep_layer = pad[1], dep[1]
    row = {r.name: r for r in cost(pad).layers}["1"]
    params = sum(p.numel() for p in pad_layer.parameters())
    assert row.params == params
    assert row.bytes == 4 * params + pad_layer.mask.numel()  # fp32 values + a bool mask
    row = {r.name: r for r in cost(dep).layers}["1"]
    nnz, numel = dep_layer.num_dynamic, dep_layer.kernel_numel
    # N - nnz static values (held in the dense static kernel, not a parameter) + K nnz dynamic + the rest
    others = sum(p.numel() for n, p in dep_layer.named_parameters() if n != "dynamic_values")
    assert row.params == numel - nnz + dep_layer.num_kernels * nnz + others
    assert row.bytes == 4 * row.params + 4 * nnz  # + the index list, int32 in the file
    assert row.params < params


def test_cost_rejects_bad_example_input():
    with pytest.raises(ValueError, match="example_input"):
        cost(small_model("static"), example_input="x")


def test_pad_moe_tokens_cost_what_moe_tokens_cost_plus_one_assembly():
    from padnet.layers import MoELinear, PADMoELinear

    x = torch.randn(2, 5, 12)
    moe, pad = (cost(nn.Sequential(cls(12, 7, num_experts=4, top_k=2)), x) for cls in (MoELinear, PADMoELinear))
    per_token = 12 * 4 + 2 * 12 * 7  # router + top-2 expert products
    assert moe.conv_macs == pad.conv_macs == 10 * per_token // 2  # per sample: 5 tokens
    assert moe.aggregation_macs == 0
    assert pad.aggregation_macs == 4 * 12 * 7 // 2  # the E x N assembly, per sample of the batch of 2
