"""Property tests over layer arguments: either a clear ValueError, or an output of the right shape
with the identities of docs/method.md#identities holding."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from padnet.layers import DynamicConv2d, MoELinear, PADConv2d, PADMoELinear
from padnet.reference import DenseMaskPADConv2d, per_expert_pad_moe
from tests.helpers import assert_close_f64

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.mark.usefixtures("float64")
@SETTINGS
@given(
    in_ch=st.integers(-1, 9),
    out_ch=st.integers(-1, 9),
    groups=st.integers(0, 4),
    kernel=st.integers(0, 4),
    stride=st.integers(0, 3),
    padding=st.integers(-1, 2),
    dilation=st.integers(1, 2),
    num_kernels=st.integers(0, 4),
    bias=st.booleans(),
    ratio=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    mode=st.sampled_from(["both", "static", "dynamic", "none", "bogus"]),
    phi=st.floats(-2, 2),
    seed=st.integers(0, 2**16),
)
def test_pad_conv_arguments(in_ch, out_ch, groups, kernel, stride, padding, dilation, num_kernels, bias, ratio,
                            mode, phi, seed):
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                  num_kernels=num_kernels, lambda_mode=mode)
    valid = (
        in_ch >= 1 and out_ch >= 1 and groups >= 1 and kernel >= 1 and stride >= 1 and padding >= 0
        and num_kernels >= 1 and mode != "bogus" and in_ch % groups == 0 and out_ch % groups == 0
    )
    if not valid:
        with pytest.raises(ValueError):
            PADConv2d(in_ch, out_ch, kernel, **kwargs)
        return
    size = 7
    if conv_out(size, kernel, stride, padding, dilation) < 1:
        return  # the input is smaller than the dilated kernel: not a layer-argument question
    torch.manual_seed(seed)
    layer = PADConv2d(in_ch, out_ch, kernel, **kwargs)
    with torch.no_grad():
        layer.phi.fill_(phi)
        torch.nn.init.normal_(layer.attention.fc2.weight)
        if layer.bias is not None:
            torch.nn.init.normal_(layer.bias)
    g = torch.Generator().manual_seed(seed)
    layer.set_mask(torch.rand(layer.kernel_shape, generator=g) < ratio)
    x = torch.randn(3, in_ch, size, size, generator=g)
    y = layer(x)
    side = conv_out(size, kernel, stride, padding, dilation)
    assert y.shape == (3, out_ch, side, side)
    assert_close_f64(y, DenseMaskPADConv2d(layer)(x))
    if ratio == 0.0 and layer.bias is None:  # kappa = 0: a static conv with lambda_s W_s
        static = F.conv2d(x, layer.scales[0] * layer.static_weight, None, stride, padding, dilation, groups)
        assert_close_f64(y, static)
    if ratio == 1.0 and mode == "none":  # kappa = 1, lambda = 1: DY-Conv with the same kernels
        dyn = DynamicConv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias, num_kernels)
        dyn.load_state_dict(layer.state_dict(), strict=False)
        assert_close_f64(y, dyn(x))


@pytest.mark.usefixtures("float64")
@SETTINGS
@given(
    in_f=st.integers(0, 8),
    out_f=st.integers(0, 8),
    experts=st.integers(0, 6),
    top_k=st.integers(0, 6),
    bias=st.booleans(),
    ratio=st.sampled_from([0.0, 0.3, 1.0]),
    mode=st.sampled_from(["both", "static", "dynamic", "none"]),
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_pad_moe_arguments(in_f, out_f, experts, top_k, bias, ratio, mode, lead, seed):
    valid = in_f >= 1 and out_f >= 1 and experts >= 1 and 1 <= top_k <= experts
    if not valid:
        with pytest.raises(ValueError):
            PADMoELinear(in_f, out_f, experts, top_k, bias=bias, lambda_mode=mode)
        return
    torch.manual_seed(seed)
    layer = PADMoELinear(in_f, out_f, experts, top_k, bias=bias, lambda_mode=mode).eval()
    with torch.no_grad():
        torch.nn.init.normal_(layer.router.w_gate)
        layer.phi.fill_(0.3)
    g = torch.Generator().manual_seed(seed)
    layer.set_mask(torch.rand(layer.kernel_shape, generator=g) < ratio)
    x = torch.randn(*lead, 5, in_f, generator=g)
    y = layer(x)
    assert y.shape == (*lead, 5, out_f)
    assert_close_f64(y, per_expert_pad_moe(layer, x))
    if ratio == 1.0 and mode == "none":
        moe = MoELinear(in_f, out_f, experts, top_k, bias=bias).eval()
        moe.load_state_dict(layer.state_dict(), strict=False)
        assert_close_f64(y, moe(x))
