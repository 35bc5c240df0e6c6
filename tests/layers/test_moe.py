"""The identities of docs/method.md#identities for MoE and PAD MoE, routing and the load-balancing loss."""

import pytest
import torch
import torch.nn.functional as F

import padnet
from padnet.layers import MoELinear, PADMoELinear
from padnet.layers.router import cv_squared
from padnet.reference import per_expert_pad_moe
from tests.helpers import assert_close_f64, random_mask


def randomise_router(layer):
    torch.nn.init.normal_(layer.router.w_gate)
    if layer.router.w_noise is not None:
        torch.nn.init.normal_(layer.router.w_noise, std=0.1)


def pad_like(moe: MoELinear, **kw) -> PADMoELinear:
    pad = PADMoELinear(moe.in_features, moe.out_features, moe.num_experts, moe.top_k,
                       bias=moe.bias is not None, **kw)
    pad.load_state_dict(moe.state_dict(), strict=False)
    return pad


@pytest.mark.usefixtures("float64")
def test_moe_matches_its_definition():
    moe = MoELinear(6, 5, num_experts=4, top_k=2).eval()
    randomise_router(moe)
    x = torch.randn(2, 3, 6)
    tokens = x.reshape(-1, 6)
    logits = tokens @ moe.router.w_gate
    top_v, top_i = logits.topk(2, dim=1)
    gates = torch.softmax(top_v, dim=1)
    expected = torch.zeros(6, 5)
    for t in range(6):
        for slot in range(2):
            e = top_i[t, slot]
            expected[t] += gates[t, slot] * F.linear(tokens[t], moe.weight[e], moe.bias[e])
    assert_close_f64(moe(x), expected.reshape(2, 3, 5))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("bias", [True, False])
def test_kappa_one_pad_moe_equals_moe(bias):
    moe = MoELinear(6, 5, num_experts=4, top_k=2, bias=bias).eval()
    randomise_router(moe)
    pad = pad_like(moe).eval()
    x = torch.randn(4, 7, 6)
    assert_close_f64(pad(x), moe(x))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("mode", ["both", "static", "dynamic", "none"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_static_factored_form_equals_per_expert_form(mode, ratio):
    pad = PADMoELinear(6, 5, num_experts=4, top_k=2, lambda_mode=mode).eval()
    randomise_router(pad)
    with torch.no_grad():
        pad.phi.fill_(0.8)
    pad.set_mask(random_mask(pad.kernel_shape, ratio))
    x = torch.randn(3, 4, 6)
    expected = per_expert_pad_moe(pad, x)
    assert_close_f64(pad(x), expected)
    pad.compact()
    assert_close_f64(pad(x), expected)


@pytest.mark.usefixtures("float64")
def test_upcycled_pad_moe_equals_the_dense_linear():
    dense = torch.nn.Linear(6, 5)
    pad = PADMoELinear(6, 5, num_experts=4, top_k=2)
    with torch.no_grad():
        pad.weight.copy_(dense.weight.expand(4, 5, 6))
        pad.static_weight.copy_(dense.weight)
        pad.bias.copy_(dense.bias.expand(4, 5))
    pad.set_mask(random_mask(pad.kernel_shape, 0.5))
    x = torch.randn(2, 9, 6)
    for mode in ("eval", "train"):  # gates are 0 at init, and even noisy routing keeps the identity
        getattr(pad, mode)()
        assert_close_f64(pad(x), dense(x))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("phi", [0.0, 0.7])
def test_static_from_dynamic_keeps_a_warmed_up_function(phi):
    # Experts that agree (W') but differ from W_s: the kappa = 1 output is the dense W' output. Making
    # half the entries static changes it, unless W_s takes lambda_d / lambda_s x the experts' mean there.
    pad = PADMoELinear(6, 5, num_experts=4, top_k=2).eval()
    randomise_router(pad)
    with torch.no_grad():
        pad.weight.copy_(torch.randn(5, 6).expand(4, 5, 6))
        pad.phi.fill_(phi)
    x = torch.randn(3, 6)
    full = pad(x)
    mask = random_mask(pad.kernel_shape, 0.5)
    pad.set_mask(mask)
    assert (pad(x) - full).abs().max() > 1e-2
    before = pad.static_weight.detach().clone()
    pad.static_from_dynamic()
    assert_close_f64(pad(x), full)
    assert torch.equal(pad.static_weight[mask], before[mask])  # entries W_s does not serve are untouched
    pad.compact()
    with pytest.raises(ValueError, match="before compact"):
        pad.static_from_dynamic()


def test_a_token_costs_top_k_matmuls_as_in_the_moe(monkeypatch):
    pad = PADMoELinear(6, 5, num_experts=8, top_k=2)
    randomise_router(pad)
    pad.set_mask(random_mask(pad.kernel_shape, 0.5))
    calls = []
    for name in ("mm", "addmm"):
        original = getattr(torch, name)

        def counting(*args, original=original, **kwargs):
            calls.append(args[-2].shape[0])  # rows of the token matrix
            return original(*args, **kwargs)

        monkeypatch.setattr(torch, name, counting)
    x = torch.randn(10, 6)
    pad(x)
    monkeypatch.undo()
    # each expert's full W_i' is assembled once, then one matmul per expert on only its routed tokens:
    # 10 tokens x top-2 = 20 rows in all, no extra static matmul over the 10 tokens (the static-factored
    # form would add one) and no expert applied twice
    assert len(calls) == 8
    assert sum(calls) == 10 * 2


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("deployed", [False, True])
def test_few_tokens_assemble_only_their_experts_and_give_the_same_output(deployed):
    moe = MoELinear(6, 5, num_experts=8, top_k=2)
    randomise_router(moe)
    pad = pad_like(moe)
    with torch.no_grad():
        pad.phi.fill_(0.3)
    pad.set_mask(random_mask(pad.kernel_shape, 0.4))
    pad.eval()
    layer = padnet.layers.DeployedPADMoELinear.from_pad(pad) if deployed else pad
    x = torch.randn(1, 6)  # one token: 2 of 8 experts active
    with torch.no_grad():
        expected = per_expert_pad_moe(pad, x)
        assert_close_f64(layer(x), expected)
        torch.testing.assert_close(layer(torch.randn(64, 6))[:0], expected[:0])  # all experts active, then few
        assert_close_f64(layer(x), expected)


def test_gradients_and_masked_entries():
    pad = PADMoELinear(6, 5, num_experts=4, top_k=2)
    randomise_router(pad)
    mask = random_mask(pad.kernel_shape, 0.4)
    pad.set_mask(mask)
    pad.train()
    out = pad(torch.randn(32, 6))
    (out.square().mean() + padnet.aux_loss(pad)).backward()
    for name in ("phi", "weight", "static_weight", "bias", "router.w_gate", "router.w_noise"):
        grad = pad.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert torch.all(pad.weight.grad[:, ~mask] == 0)
    assert torch.all(pad.static_weight.grad[mask] == 0)


def test_experts_without_tokens_still_get_a_gradient():
    moe = MoELinear(4, 3, num_experts=6, top_k=1, noisy_gating=False)
    moe.train()
    moe(torch.randn(1, 4)).sum().backward()  # one token reaches one expert
    assert moe.weight.grad is not None
    assert (moe.weight.grad.flatten(1).abs().sum(1) > 0).sum() == 1


def test_aux_loss_is_coef_times_cv_squared_and_summed_over_layers():
    moe = MoELinear(6, 5, num_experts=4, top_k=2, noisy_gating=False, aux_loss_coef=0.5).eval()
    randomise_router(moe)
    x = torch.randn(40, 6)
    moe(x)
    gates = moe.router(x).gates
    expected = 0.5 * (cv_squared(gates.sum(0)) + cv_squared((gates > 0).sum(0).float()))
    torch.testing.assert_close(moe.last_aux_loss, expected)
    model = torch.nn.Sequential(moe, torch.nn.ReLU(), MoELinear(5, 5, num_experts=4, top_k=2))
    model.eval()
    model(x)
    torch.testing.assert_close(padnet.aux_loss(model), model[0].last_aux_loss + model[2].last_aux_loss)
    assert float(padnet.aux_loss(torch.nn.Linear(2, 2))) == 0.0


def test_noisy_smooth_load_is_differentiable_in_the_noise_weights():
    moe = MoELinear(6, 5, num_experts=4, top_k=2).train()
    randomise_router(moe)
    moe(torch.randn(64, 6))
    moe.last_aux_loss.backward()
    assert moe.router.w_noise.grad.abs().sum() > 0


@pytest.mark.usefixtures("float64")
def test_routing_over_any_leading_dims_is_tokenwise():
    moe = MoELinear(6, 5, num_experts=4, top_k=2).eval()
    randomise_router(moe)
    x = torch.randn(2, 3, 4, 6)
    assert_close_f64(moe(x).reshape(-1, 5), moe(x.reshape(-1, 6)))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(top_k=5, num_experts=4), "top_k=5 must be <= num_experts=4"),
        (dict(num_experts=0), "num_experts=0"),
        (dict(top_k=0), "top_k=0"),
        (dict(lambda_mode="x"), "lambda_mode='x'"),
        (dict(aux_loss_coef=-1.0), "aux_loss_coef=-1.0"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        PADMoELinear(6, 5, **kw)


def test_bad_mask_and_input():
    pad = PADMoELinear(6, 5, num_experts=2, top_k=1)
    with pytest.raises(ValueError, match="shape"):
        pad.set_mask(torch.ones(6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="torch.bool"):
        pad.set_mask(torch.ones(5, 6, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        pad(torch.randn(3, 4))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("bias", [False, True])
def test_sorted_dispatch_gradients_equal_the_dense_definition(bias):
    """One sort, contiguous expert slices and the hand-written batched backward give the gradients of
    y = sum_i G_i (W_i x + b_i) computed densely over every expert."""
    moe = MoELinear(6, 5, num_experts=4, top_k=2, bias=bias).eval()
    randomise_router(moe)
    x = torch.randn(9, 6, requires_grad=True)
    out = moe(x)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, moe.weight, moe.router.w_gate] + ([moe.bias] if bias else []), grad_out)

    x2 = x.detach().clone().requires_grad_(True)
    gates = moe.router(x2).gates
    dense = torch.einsum("te,eoi,ti->to", gates, moe.weight, x2)
    if bias:
        dense = dense + gates @ moe.bias
    expected = torch.autograd.grad(dense, [x2, moe.weight, moe.router.w_gate] + ([moe.bias] if bias else []),
                                   grad_out)
    for g, e in zip(got, expected):
        assert_close_f64(g, e)


def test_expert_slots_sort_the_pairs_by_expert():
    from padnet.layers.protocol import ExpertSlots
    from padnet.layers.router import Routing

    top = torch.tensor([[2, 0], [0, 1], [2, 1]])
    routing = Routing(torch.zeros(3, 4), top, torch.full((3, 2), 0.5), torch.zeros(()))
    slots = ExpertSlots.from_routing(routing, 4)
    assert slots.counts == [2, 2, 2, 0]
    assert slots.token_index.tolist() == [0, 1, 1, 2, 0, 2]  # expert 0: tokens 0, 1; expert 1: 1, 2; expert 2: 0, 2
    # inverse[t k + slot] is where pair (t, slot) sits in the sorted order
    sorted_experts = top.reshape(-1)[torch.argsort(top.reshape(-1), stable=True)]
    assert torch.equal(sorted_experts[slots.inverse], top.reshape(-1))
