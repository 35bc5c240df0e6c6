"""Under ``torch.autocast`` the decisions taken on a few logits stay in float32 (padnet.layers.precision):
the MoE router's gates and the DY-Conv attention weights are bit-equal to the float32 ones, while the
big products run in bf16 (the output's error against float32 is bounded in tests/test_mode_matrix.py)."""

import pytest
import torch

from padnet.layers import DynamicConv2d, MoELinear


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_router_gates_are_float32_under_autocast(dtype):
    torch.manual_seed(0)
    layer = MoELinear(16, 8, num_experts=8, top_k=2).eval()
    with torch.no_grad():
        layer.router.w_gate.normal_()
    tokens = torch.randn(64, 16)
    expected = layer.router(tokens).gates
    with torch.autocast("cpu", dtype=dtype):
        gates = layer.router(tokens).gates
        out = layer(tokens)
    assert gates.dtype == torch.float32 and torch.equal(gates, expected)
    assert out.dtype != torch.float64  # the layer ran (its products in the autocast dtype)


@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
def test_attention_weights_are_float32_under_autocast(routing):
    torch.manual_seed(0)
    layer = DynamicConv2d(8, 8, 3, padding=1, num_kernels=4, routing=routing).eval()
    layer.temperature = 30.0
    x = torch.randn(4, 8, 6, 6)
    expected = layer.attention_weights(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alpha = layer.attention_weights(x)
        out = layer(x)
    assert alpha.dtype == torch.float32 and torch.equal(alpha, expected)
    assert out.dtype == torch.bfloat16  # the convolution itself runs in bf16


def test_a_bf16_model_without_autocast_still_runs():
    """Widening is to at least float32: a model cast to bf16 computes its router in float32 too."""
    layer = MoELinear(16, 8, num_experts=4, top_k=2).to(torch.bfloat16).eval()
    out = layer(torch.randn(5, 16, dtype=torch.bfloat16))
    assert out.shape == (5, 8) and torch.isfinite(out.float()).all()


def test_a_bf16_conv_without_autocast_computes_in_bf16():
    layer = DynamicConv2d(8, 8, 3, padding=1, num_kernels=4).to(torch.bfloat16)
    x = torch.randn(2, 8, 6, 6, dtype=torch.bfloat16)
    assert layer.attention_weights(x).dtype == torch.bfloat16 and layer(x).dtype == torch.bfloat16
