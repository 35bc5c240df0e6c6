"""The identities of docs/method.md#identities and the efficient-form contract for DY-Conv, CondConv and PAD DY-Conv."""

import copy

import pytest
import torch
import torch.nn.functional as F

from padnet.layers import DynamicConv2d, PADConv2d
from padnet.reference import DenseMaskPADConv2d
from tests.helpers import assert_close_f64, random_mask

ARGS = dict(in_channels=8, out_channels=12, kernel_size=3, padding=1)


def pad_from_dynamic(dyn: DynamicConv2d, **kw) -> PADConv2d:
    pad = PADConv2d(dyn.in_channels, dyn.out_channels, dyn.kernel_size, dyn.stride, dyn.padding, dyn.dilation,
                    dyn.groups, bias=dyn.bias is not None, num_kernels=dyn.num_kernels, routing=dyn.routing, **kw)
    pad.load_state_dict(dyn.state_dict(), strict=False)
    return pad


def set_phi(layer, value):
    with torch.no_grad():
        layer.phi.fill_(value)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True])
def test_kappa_one_equals_dynamic_conv(routing, bias):
    dyn = DynamicConv2d(**ARGS, bias=bias, routing=routing)
    if bias:
        torch.nn.init.normal_(dyn.bias)
    dyn.temperature = 3.0
    pad = pad_from_dynamic(dyn, lambda_mode="both")
    pad.temperature = 3.0
    x = torch.randn(4, 8, 9, 9)
    assert_close_f64(pad(x), dyn(x))


@pytest.mark.usefixtures("float64")
def test_dynamic_conv_is_the_attention_weighted_kernel():
    dyn = DynamicConv2d(**ARGS, num_kernels=3)
    x = torch.randn(3, 8, 7, 7)
    alpha = dyn.attention_weights(x)
    assert torch.allclose(alpha.sum(1), torch.ones(3))
    for b in range(3):
        w = (alpha[b] @ dyn.weight).reshape(dyn.weight_shape)
        assert_close_f64(dyn(x)[b : b + 1], F.conv2d(x[b : b + 1], w, padding=1))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("mode", ["both", "static", "dynamic", "none"])
def test_kappa_zero_is_a_static_conv_with_lambda_s_ws(mode):
    pad = PADConv2d(**ARGS, lambda_mode=mode)
    set_phi(pad, 0.7)
    pad.set_mask(torch.zeros(pad.kernel_shape, dtype=torch.bool))
    lambda_s, _ = pad.scales
    x = torch.randn(3, 8, 9, 9)
    expected = F.conv2d(x, lambda_s * pad.static_weight, padding=1)
    assert_close_f64(pad(x), expected)
    # no dependence on routing: changing the attention changes nothing
    torch.nn.init.normal_(pad.attention.fc2.weight)
    assert_close_f64(pad(x), expected)


@pytest.mark.usefixtures("float64")
def test_lambda_modes_follow_the_spec():
    phi = 0.4
    s = torch.sigmoid(torch.tensor(phi))
    expected = {"both": (2 - 2 * s, 2 * s), "static": (2 - 2 * s, 1.0), "dynamic": (1.0, 2 * s), "none": (1.0, 1.0)}
    for mode, (ls, ld) in expected.items():
        pad = PADConv2d(**ARGS, lambda_mode=mode)
        set_phi(pad, 0.0)
        assert [float(v.detach()) for v in pad.scales] == [1.0, 1.0]  # every mode starts at lambda = 1
        set_phi(pad, phi)
        got = [v.detach() for v in pad.scales]
        assert float(got[0]) == pytest.approx(float(ls)) and float(got[1]) == pytest.approx(float(ld)), mode
        # and the forward uses them: compare against the oracle at a mixed mask
        pad.set_mask(random_mask(pad.kernel_shape, 0.4))
        x = torch.randn(2, 8, 6, 6)
        assert_close_f64(pad(x), DenseMaskPADConv2d(pad)(x))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(bias=True),
        dict(stride=2, dilation=2, padding=2),
        dict(groups=4),
        dict(in_channels=8, out_channels=8, groups=8),  # depthwise
        dict(kernel_size=1, padding=0),
        dict(routing="sigmoid", num_kernels=2),
    ],
)
@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_efficient_equals_dense_mask_oracle_before_and_after_compact(kw, ratio):
    args = {**ARGS, **kw}
    pad = PADConv2d(**args)
    if pad.bias is not None:
        torch.nn.init.normal_(pad.bias)
    set_phi(pad, -0.3)
    pad.set_mask(random_mask(pad.kernel_shape, ratio))
    oracle = DenseMaskPADConv2d(pad)
    x = torch.randn(5, args["in_channels"], 11, 11)
    expected = oracle(x)
    assert_close_f64(pad(x), expected)
    pad.compact()
    assert_close_f64(pad(x), expected)
    n = pad.kernel_numel
    nnz = int(pad.mask.sum())
    # K nnz dynamic entries and the dense W_s, zero at the dynamic entries; no full kernels any more.
    params = dict(pad.named_parameters())
    assert "weight" not in params and params["dynamic_values"].shape == (pad.num_kernels, nnz)
    assert params["static_weight"].numel() == n and not params["static_weight"].reshape(-1)[pad.dynamic_index].any()


@pytest.mark.usefixtures("float64")
def test_per_sample_independence_in_eval():
    pad = PADConv2d(**ARGS)
    pad.set_mask(random_mask(pad.kernel_shape, 0.3))
    pad.eval()
    x = torch.randn(6, 8, 9, 9)
    full = pad(x)
    for b in range(6):
        assert_close_f64(pad(x[b : b + 1]), full[b : b + 1])
    other = x.clone()
    other[1:] = torch.randn_like(other[1:])
    assert_close_f64(pad(other)[0], full[0])


def test_gradients_reach_every_part_and_masked_entries_get_none():
    pad = PADConv2d(**ARGS, bias=True)
    mask = random_mask(pad.kernel_shape, 0.3)
    pad.set_mask(mask)
    pad(torch.randn(4, 8, 9, 9)).square().mean().backward()
    for name in ("phi", "weight", "static_weight", "bias", "attention.fc1.weight", "attention.fc2.weight"):
        grad = pad.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    flat_mask = mask.reshape(-1)
    assert torch.all(pad.weight.grad[:, ~flat_mask] == 0)
    assert torch.all(pad.static_weight.grad[mask] == 0)
    assert pad.weight.grad[:, flat_mask].abs().sum() > 0 and pad.static_weight.grad[~mask].abs().sum() > 0


def test_mode_none_freezes_phi():
    pad = PADConv2d(**ARGS, lambda_mode="none")
    assert not pad.phi.requires_grad


@pytest.mark.usefixtures("float64")
def test_channels_last_and_non_contiguous_input():
    pad = PADConv2d(**ARGS)
    pad.set_mask(random_mask(pad.kernel_shape, 0.5))
    x = torch.randn(3, 8, 9, 9)
    expected = pad(x)
    assert_close_f64(pad(x.to(memory_format=torch.channels_last)), expected)
    wide = torch.randn(3, 8, 9, 18)[..., ::2]
    assert not wide.is_contiguous()
    assert_close_f64(pad(wide), pad(wide.contiguous()))
    pad_cl = copy.deepcopy(pad).to(memory_format=torch.channels_last)
    assert_close_f64(pad_cl(x), expected)


def test_state_dict_round_trip_keeps_the_mask():
    pad = PADConv2d(**ARGS)
    pad.set_mask(random_mask(pad.kernel_shape, 0.3))
    set_phi(pad, 0.2)
    other = PADConv2d(**ARGS)
    other.load_state_dict(pad.state_dict())
    assert torch.equal(other.mask, pad.mask) and other.dynamic_ratio == pad.dynamic_ratio
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(other(x), pad(x), atol=0, rtol=0)
    # and a compacted layer round-trips into a layer compacted with the same mask
    pad.compact()
    fresh = PADConv2d(**ARGS)
    fresh.set_mask(pad.mask.clone())
    fresh.compact()
    fresh.load_state_dict(pad.state_dict())
    torch.testing.assert_close(fresh(x), pad(x), atol=0, rtol=0)


def test_compacted_layer_holds_its_values_mask_and_one_index_list():
    pad = PADConv2d(**ARGS)
    mask = random_mask(pad.kernel_shape, 0.3)
    pad.set_mask(mask)
    pad.compact()
    n, nnz = pad.kernel_numel, pad.num_dynamic
    tensors = {name: t for name, t in [*pad.named_parameters(), *pad.named_buffers()]
               if not name.startswith("attention.")}
    # W_s (N) and K nnz values, the bool mask and its uint8 complement (N bytes each), the int64 dynamic
    # index list; the static positions are computed when asked, not held.
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == 4 * (n + 4 * nnz + 1) + 2 * n + 8 * nnz
    assert torch.equal(pad.static_index, (~mask).reshape(-1).nonzero().squeeze(1))


def test_compacted_layer_refuses_a_new_mask():
    pad = PADConv2d(**ARGS)
    mask = random_mask(pad.kernel_shape, 0.3)
    pad.set_mask(mask)
    pad.compact()
    pad.set_mask(mask.clone())  # the same mask is fine
    with pytest.raises(ValueError, match="compacted"):
        pad.set_mask(~mask)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_kernels=0), "num_kernels=0"),
        (dict(routing="relu"), "routing='relu'"),
        (dict(lambda_mode="half"), "lambda_mode='half'"),
        (dict(groups=3), "groups=3"),
        (dict(kernel_size=0), "kernel_size=0"),
        (dict(stride=(1, 0)), "stride"),
        (dict(reduction=0), "reduction=0"),
    ],
)
def test_bad_arguments_name_themselves(kw, match):
    with pytest.raises(ValueError, match=match):
        PADConv2d(**{**ARGS, **kw})


def test_bad_mask_shape_and_dtype():
    pad = PADConv2d(**ARGS)
    with pytest.raises(ValueError, match="shape"):
        pad.set_mask(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="torch.bool"):
        pad.set_mask(torch.ones(pad.kernel_shape))
    with pytest.raises(ValueError, match=r"input \(B, 8, H, W\)"):
        pad(torch.randn(2, 5, 9, 9))
