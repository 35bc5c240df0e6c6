"""The mode matrix: every layer form in every mode users put a model in.

Each cell either computes exactly what ``padnet.reference`` (or the layer's defining per-sample /
per-expert formula) computes, in float64 (tolerance: ``tests.helpers.assert_close_f64``), or raises
``padnet.errors.ModeError`` at the call, naming the mode and the alternative. A silent wrong answer
fails the cell. A new layer form is one entry in ``FORMS``; a new mode is one function in ``MODES``.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import padnet
from padnet.errors import ModeError
from padnet.layers import DeployedPADConv2d, DynamicConv2d, MoELinear, PADConv2d, PADMoELinear
from padnet.layers.dynamic_conv import apply_per_sample_kernels
from padnet.reference import DenseMaskPADConv2d, per_expert_pad_moe
from tests.helpers import assert_close_f64, random_mask

CONV_IN, MOE_IN = (4, 6, 6), (3, 8)  # one sample: (C, H, W) for convs, (tokens, features) for MoE


# ----------------------------------------------------------------------------- the forms
@dataclass
class Form:
    """``build()`` -> (the layer in this form, the reference function x -> y, one sample's shape)."""

    name: str
    build: Callable[[], tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]]


def _randomise(layer: nn.Module) -> None:
    """Routing that depends on the input and lambdas away from 1, so a wrong path shows."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("fc2.weight") or name.startswith("router."):
                p.normal_()
            if name == "phi":
                p.fill_(0.4)


def _mask(layer: nn.Module, granularity: str, seed: int) -> torch.Tensor:
    """About 40 % dynamic: random entries, or random whole rows (output channels) for channel granularity."""
    shape = layer.mask.shape
    if granularity == "element":
        return random_mask(shape, 0.4, seed=seed)
    rows = random_mask((shape[0],), 0.4, seed=seed)
    rows[0], rows[1] = True, False  # both kinds, whatever the draw
    return rows.reshape(-1, *[1] * (len(shape) - 1)).expand(shape).clone()


def _dynamic_conv(routing: str):
    def build():
        layer = DynamicConv2d(4, 6, 3, padding=1, num_kernels=3, routing=routing, bias=True)
        _randomise(layer)
        layer.temperature = 2.0

        def reference(x):
            alpha = layer.attention_weights(x)
            kernels, bias = alpha @ layer.weight, alpha @ layer.bias
            return apply_per_sample_kernels(x, kernels, bias, 6, layer.kernel_size, layer.stride, layer.padding,
                                            layer.dilation, layer.groups, strategy="loop")
        return layer, reference, CONV_IN
    return build


def _pad_conv(granularity: str, form: str):
    def build():
        layer = PADConv2d(4, 6, 3, padding=1, num_kernels=3, bias=True, granularity=granularity)
        _randomise(layer)
        layer.set_mask(_mask(layer, granularity, seed=1))
        oracle = DenseMaskPADConv2d(layer)
        if form in ("compacted", "deployed"):
            layer.compact()
        if form == "deployed":
            layer = DeployedPADConv2d.from_pad(layer.eval())
        return layer, oracle, CONV_IN
    return build


def _moe():
    layer = MoELinear(8, 5, num_experts=4, top_k=2)
    _randomise(layer)

    def reference(x):
        tokens = x.reshape(-1, 8)
        gates = layer.router(tokens).gates
        out = sum(gates[:, i : i + 1] * F.linear(tokens, layer.weight[i], layer.bias[i]) for i in range(4))
        return out.reshape(*x.shape[:-1], 5)
    return layer, reference, MOE_IN


def _pad_moe(granularity: str, form: str):
    def build():
        layer = PADMoELinear(8, 5, num_experts=4, top_k=2, granularity=granularity)
        _randomise(layer)
        layer.set_mask(_mask(layer, granularity, seed=2))
        oracle = copy.deepcopy(layer)
        if form in ("compacted", "deployed"):
            layer.compact()
        if form == "deployed":
            holder = nn.Sequential(layer.eval())
            padnet.deploy(holder)
            layer = holder[0]
        return layer, lambda x: per_expert_pad_moe(oracle.eval(), x), MOE_IN
    return build


FORMS = [
    Form("dyconv", _dynamic_conv("softmax")),
    Form("condconv", _dynamic_conv("sigmoid")),
    Form("pad-element", _pad_conv("element", "training")),
    Form("pad-element-compacted", _pad_conv("element", "compacted")),
    Form("pad-element-deployed", _pad_conv("element", "deployed")),
    Form("pad-channel", _pad_conv("channel", "training")),
    Form("pad-channel-deployed", _pad_conv("channel", "deployed")),
    Form("moe", _moe),
    Form("pad-moe-element", _pad_moe("element", "training")),
    Form("pad-moe-element-deployed", _pad_moe("element", "deployed")),
    Form("pad-moe-channel", _pad_moe("channel", "training")),
]


# ----------------------------------------------------------------------------- the modes
def _inputs(shape, batch, requires_grad=False):
    return torch.randn(batch, *shape, requires_grad=requires_grad)


def eval_mode(layer, reference, shape):
    layer.eval()
    x = _inputs(shape, 3)
    with torch.no_grad():
        assert_close_f64(layer(x), reference(x))


def backward_input_gradient(layer, reference, shape):
    """Eval-mode input gradients (saliency maps, adversarial tests), on every form, deployed included."""
    layer.eval()
    x = _inputs(shape, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).pow(2).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(x2).pow(2).sum(), x2)
    assert_close_f64(grad, expected)


def empty_batch(layer, reference, shape):
    for mode in (layer.eval, layer.train):
        mode()
        x = _inputs(shape, 0, requires_grad=True)
        out = layer(x)
        with torch.no_grad():
            expected = reference(_inputs(shape, 1))
        assert out.shape == (0, *expected.shape[1:])
        out.sum().backward()
        assert x.grad.shape == x.shape


def jit_trace_other_batches(layer, reference, shape):
    layer.eval()
    with torch.no_grad():
        traced = torch.jit.trace(layer, _inputs(shape, 2), check_trace=False)
        for batch in (1, 3, 5):
            x = _inputs(shape, batch)
            assert_close_f64(traced(x), reference(x))


def export_dynamic_batch(layer, reference, shape):
    layer.eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(layer, (_inputs(shape, 2),), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        for b in (1, 3):
            x = _inputs(shape, b)
            assert_close_f64(program.module()(x), reference(x))


def _compiled(fullgraph):
    def check(layer, reference, shape):
        torch._dynamo.reset()
        layer.eval()
        compiled = torch.compile(layer, fullgraph=fullgraph, dynamic=False)
        with torch.no_grad():
            x = _inputs(shape, 3)
            assert_close_f64(compiled(x), reference(x))
    return check


def compiled_training(layer, reference, shape):
    """``torch.compile(fullgraph=True)`` in train mode (``compile: true`` in a run): no graph break, and the
    output and every gradient equal the eager layer's (random router noise drawn as eager draws it)."""
    torch._dynamo.reset()
    eager = copy.deepcopy(layer).train()
    layer.train()
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    x = _inputs(shape, 3)
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(5)
        out = compiled(x)
    torch.manual_seed(5)
    expected = eager(x)
    assert_close_f64(out, expected)
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), eager.parameters()):
        if q.grad is not None:
            assert_close_f64(p.grad, q.grad, msg=name)


def channels_last(layer, reference, shape):
    """The layer and its input in ``torch.channels_last`` (``channels_last: true`` in a run): the reference's
    output in eval mode, and in train mode the gradients of the layer in the default format."""
    contiguous = copy.deepcopy(layer).train()
    layer.to(memory_format=torch.channels_last).eval()
    x = _inputs(shape, 3)
    x_last = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    with torch.no_grad():
        assert_close_f64(layer(x_last), reference(x))
    layer.train()
    torch.manual_seed(5)
    layer(x_last).pow(2).sum().backward()
    torch.manual_seed(5)
    contiguous(x).pow(2).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), contiguous.parameters()):
        if q.grad is not None:
            assert_close_f64(p.grad, q.grad, msg=name)


def deepcopy_and_pickle(layer, reference, shape):
    layer.train()
    x = _inputs(shape, 3)
    out = layer(x)
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):  # after a forward
        copied.eval(), layer.eval()
        with torch.no_grad():
            assert_close_f64(copied(x), layer(x))
        layer.train()
    out.pow(2).sum().backward()
    copied = copy.deepcopy(layer)  # after a backward (parameters' .grad stay behind, as for any nn.Module)
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), copied.parameters()))
    pickle.dumps(layer)


def meta_device(layer, reference, shape):
    meta = copy.deepcopy(layer).to("meta").eval()
    with torch.no_grad():
        out = meta(_inputs(shape, 3).to("meta"))
        expected = reference(_inputs(shape, 3))
    assert out.device.type == "meta" and out.shape == expected.shape


def bf16_autocast(layer, reference, shape):
    """Under CPU autocast the layer runs (no dtype error) and stays within bf16 rounding of float32: each
    output sums at most ``fan_in`` products, each rounded to bf16 (unit roundoff 2^-9), so the error is
    below 2 * fan_in * 2^-8 of the terms' scale (twice the gamma_n bound)."""
    layer = copy.deepcopy(layer).float().eval()
    fan_in = 4 * 9 if len(shape) == 3 else 8
    # Batch 1 takes the whole-kernel paths; a bf16 input is what a layer after another autocast layer gets.
    for batch, dtype in ((3, torch.float32), (1, torch.float32), (1, torch.bfloat16), (3, torch.bfloat16)):
        x = _inputs(shape, batch).float().to(dtype)
        with torch.no_grad():
            expected = layer(x.float())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = layer(x)
        scale = expected.abs().max().item()
        torch.testing.assert_close(out.float(), expected, atol=2 * fan_in * 2**-8 * scale, rtol=0)


MODES = {
    "eval": eval_mode,
    "input-gradient": backward_input_gradient,
    "empty-batch": empty_batch,
    "jit-trace": jit_trace_other_batches,
    "export": export_dynamic_batch,
    "deepcopy-pickle": deepcopy_and_pickle,
    "meta": meta_device,
    "bf16-autocast": bf16_autocast,
    "channels-last": channels_last,
    "compile": _compiled(fullgraph=False),
    "compile-fullgraph": _compiled(fullgraph=True),
    "compile-fullgraph-train": compiled_training,
}
SLOW_MODES = {"export", "compile", "compile-fullgraph", "compile-fullgraph-train"}


# Cells that refuse with ModeError (none today); the table in docs/reliability.md is generated from this and checked.
REFUSED: dict[tuple[str, str], str] = {}
TABLE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def mode_table() -> str:
    """The table in docs/reliability.md: every form, every mode, exact (yes) or refused."""
    lines = ["| form | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    for form in FORMS:
        cells = ["refused" if (form.name, mode) in REFUSED else "yes" for mode in MODES]
        lines.append(f"| {form.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cells():
    for form in FORMS:
        for mode in MODES:
            marks = [pytest.mark.slow] if mode in SLOW_MODES else []
            yield pytest.param(form, mode, id=f"{form.name}-{mode}", marks=marks)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("form, mode", list(_cells()))
def test_cell_is_exact_or_refused_by_name(form, mode):
    torch.manual_seed(0)
    layer, reference, shape = form.build()
    if (form.name, mode) not in REFUSED:
        MODES[mode](layer, reference, shape)  # exact, and no ModeError where the table says "yes"
        return
    with pytest.raises(ModeError) as refusal:
        MODES[mode](layer, reference, shape)
    assert mode.split("-")[0] in str(refusal.value).lower(), f"the refusal does not name {mode!r}: {refusal.value}"


def test_the_docs_state_the_matrix():
    assert mode_table() in TABLE_PAGE.read_text(), \
        f"docs/reliability.md's mode table is stale; it should read:\n{mode_table()}"


if __name__ == "__main__":
    print(mode_table())  # python -m tests.test_mode_matrix: the table for docs/reliability.md
