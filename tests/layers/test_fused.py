"""The opt-in fused assembly (``padnet.layers.fused``): the same results as the eager form and as
``padnet.reference``, taken only where it may run (autograd recording, no graph capture). Slow: each
test compiles with Inductor."""

import pytest
import torch

from padnet.errors import UsageError
from padnet.layers import assemble, fused, set_fused_assembly
from padnet.layers.assemble import assemble_kernels
from tests.helpers import assert_close_f64
from tests.layers.test_conv_strategy import GEOMETRIES, make_pad

pytestmark = pytest.mark.slow


@pytest.fixture
def fused_on(monkeypatch):
    calls = []
    apply = fused.FusedAssembleKernels.apply
    monkeypatch.setattr(assemble.FusedAssembleKernels, "apply", lambda *a: calls.append(1) or apply(*a))
    set_fused_assembly(True)
    yield calls
    set_fused_assembly(False)


def test_the_forward_is_bit_equal_and_the_gradients_match_the_eager_form(fused_on):
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(60, generator=g)[:20].sort().values
    keep = torch.ones(60, dtype=torch.uint8)
    keep[index] = 0
    inputs = (torch.randn(60, generator=g), torch.randn(3, 20, generator=g), torch.tensor(0.7))
    grad = torch.randn(3, 60, generator=g)
    results = []
    for enabled in (True, False):
        set_fused_assembly(enabled)
        static, dynamic, scale = (t.clone().requires_grad_(True) for t in inputs)
        out = assemble_kernels(static, dynamic, index, scale=scale, keep=keep)
        out.backward(grad)
        results.append((out.detach(), static.grad, dynamic.grad, scale.grad))
    assert fused_on == [1]  # the first pass took the fused path, the second the eager one
    (out, static_grad, dynamic_grad, scale_grad), eager = results
    assert torch.equal(out, eager[0]) and torch.equal(dynamic_grad, eager[2])
    # Sums in another order: within the rounding bound of a float32 sum (3 terms over the batch, then 60
    # in the scale's dot), relative to the sum of the terms' magnitudes (no cancellation assumed away).
    magnitudes = grad.abs().sum(0)
    assert ((static_grad - eager[1]).abs() <= 3 * 2**-23 * magnitudes).all()
    assert abs(float(scale_grad - eager[3])) <= (3 + 60) * 2**-23 * float(magnitudes @ inputs[0].abs())


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("strategy", ["grouped", "mixture"])  # per-sample kernels; the K mixture kernels
def test_a_pad_conv_trains_as_the_reference(fused_on, strategy):
    pad, oracle = make_pad(GEOMETRIES[0], "softmax", bias=True, compacted=True)
    pad.strategy = strategy
    x = torch.randn(3, 6, 7, 7, requires_grad=True)
    x_oracle = x.detach().clone().requires_grad_(True)
    out, expected = pad(x), oracle(x_oracle)
    assert fused_on, "the fused assembly did not run"
    assert_close_f64(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert_close_f64(x.grad, x_oracle.grad)
    assert_close_f64(pad.static_weight.grad, oracle.layer.static_weight.grad)  # 0 at the dynamic entries
    assert_close_f64(pad.phi.grad, oracle.layer.phi.grad)


def test_no_grad_and_graph_captures_take_the_eager_form(fused_on):
    pad, _ = make_pad(GEOMETRIES[0], "softmax", bias=False, compacted=True)
    pad.strategy = "unfold"  # per-sample kernels, and a graph that serves every batch size
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        pad(x)
    torch.jit.trace(pad, x, check_trace=False)  # records autograd, but captures
    assert fused_on == []


def test_where_compiling_fails_the_same_functions_run_eagerly_after_one_warning(fused_on, monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(fused, "_compiled", lambda: (broken, broken))
    monkeypatch.setitem(fused._state, "compile_failed", None)
    g = torch.Generator().manual_seed(1)
    index = torch.tensor([1, 4, 5])
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.uint8)
    static, dynamic = torch.randn(7, generator=g), torch.randn(2, 3, generator=g, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"could not be compiled \(RuntimeError: no C\+\+ compiler found\)"):
        out = assemble_kernels(static, dynamic, index, scale=torch.tensor(0.5), keep=keep)
    out.sum().backward()  # the backward, too, runs eagerly (and warns no more)
    set_fused_assembly(False)
    assert torch.equal(out, assemble_kernels(static, dynamic.detach(), index, scale=torch.tensor(0.5), keep=keep))
    assert torch.equal(dynamic.grad, torch.ones(2, 3)) and fused_on == [1]


def test_a_layer_without_dynamic_entries_takes_the_eager_form(fused_on):
    """Nothing to gather: the fused forward's dynamic[:, inverse] would index an empty (B, 0)."""
    static = torch.randn(5, requires_grad=True)
    dynamic = torch.zeros(2, 0, requires_grad=True)
    out = assemble_kernels(static, dynamic, torch.zeros(0, dtype=torch.long), scale=torch.tensor(0.5),
                           keep=torch.ones(5, dtype=torch.uint8))
    out.sum().backward()
    assert torch.equal(out, (0.5 * static).expand(2, 5)) and torch.equal(static.grad, torch.ones(5))
    assert fused_on == []


def test_a_setting_that_is_not_a_bool_is_refused():
    with pytest.raises(UsageError, match=r"set_fused_assembly\(enabled='yes'\): expected True or False"):
        set_fused_assembly("yes")


def test_an_error_of_the_inputs_is_raised_as_the_eager_form_raises_it_not_taken_for_a_compile_failure(monkeypatch):
    def broken(*args):
        raise RuntimeError("compiled: some internal failure")
    monkeypatch.setattr(fused, "_compiled", lambda: (broken, broken))
    monkeypatch.setitem(fused._state, "compile_failed", None)
    static, keep, inverse = torch.randn(7), torch.ones(7, dtype=torch.bool), torch.zeros(7, dtype=torch.long)
    with pytest.raises(RuntimeError, match="size of tensor"):  # the eager error: a scale of 5 entries against 7
        fused._run(0, static, keep, inverse, torch.randn(2, 3), torch.ones(5))
    assert fused._state["compile_failed"] is None  # the next call still tries the compiled function
