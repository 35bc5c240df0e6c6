"""assemble_kernels: its values, its hand-written backward, and its shape checks."""

import pytest
import torch

from padnet.layers.assemble import assemble_kernels, release_workspace


def _inputs(batch=3, numel=11, nnz=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(numel, generator=g)[:nnz].sort().values
    static = torch.randn(numel, generator=g, dtype=dtype, requires_grad=True)
    dynamic = torch.randn(batch, nnz, generator=g, dtype=dtype, requires_grad=True)
    return static, dynamic, index


@pytest.mark.parametrize("batch", [1, 3])
def test_values_are_static_with_the_dynamic_entries_written_in(batch):
    static, dynamic, index = _inputs(batch)
    out = assemble_kernels(static, dynamic, index)
    expected = static.detach().repeat(batch, 1)
    expected[:, index] = dynamic.detach()
    assert torch.equal(out, expected)


def test_scale_multiplies_the_static_entries_only():
    static, dynamic, index = _inputs()
    scale = torch.tensor(0.7, dtype=static.dtype)
    out = assemble_kernels(static, dynamic, index, scale=scale)
    expected = (0.7 * static.detach()).repeat(3, 1)
    expected[:, index] = dynamic.detach()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_keep", [False, True])
@pytest.mark.parametrize("with_scale", [False, True])
def test_backward_matches_autograd_and_overwritten_static_entries_get_none(batch, with_keep, with_scale):
    static, dynamic, index = _inputs(batch)
    keep = torch.ones(static.shape, dtype=torch.uint8).index_fill_(0, index, 0) if with_keep else None
    scale = torch.tensor(1.3, dtype=static.dtype, requires_grad=True) if with_scale else None
    inputs = (static, dynamic) + ((scale,) if with_scale else ())
    assert torch.autograd.gradcheck(lambda s, d, *c: assemble_kernels(s, d, index, *c, keep=keep), inputs)
    assemble_kernels(static, dynamic, index, scale, keep).pow(2).sum().backward()
    assert torch.equal(static.grad[index], torch.zeros(index.numel(), dtype=static.dtype))
    assert static.grad.abs().sum() > 0


def test_bad_shapes_are_named():
    static, dynamic, index = _inputs()
    with pytest.raises(ValueError, match=r"expected static \(N,\), dynamic \(B, nnz\), index \(nnz,\); "
                                         r"got \(11,\), \(3, 4\), \(3,\)"):
        assemble_kernels(static, dynamic, index[:3])
    with pytest.raises(ValueError, match=r"scale must be a 0-d tensor or None; got shape \(1,\)"):
        assemble_kernels(static, dynamic, index, scale=torch.ones(1))
    with pytest.raises(ValueError, match=r"keep must have static's shape \(11,\); got \(10,\)"):
        assemble_kernels(static, dynamic, index, keep=torch.ones(10, dtype=torch.uint8))


def test_inference_path_reuses_one_workspace_and_gives_the_same_values():
    static, dynamic, index = _inputs(batch=4, dtype=torch.float32)
    scale = torch.tensor(0.5)
    expected = assemble_kernels(static, dynamic, index, scale)  # autograd path: a fresh tensor
    with torch.no_grad():
        first = assemble_kernels(static, dynamic, index, scale)
        torch.testing.assert_close(first, expected, rtol=0, atol=0)
        second = assemble_kernels(static, 2 * dynamic, index)
    # The documented contract: the no-grad result is a workspace view that the next call overwrites.
    assert first.data_ptr() == second.data_ptr()
    assert expected.requires_grad and not second.requires_grad
    import weakref

    held = weakref.ref(second.untyped_storage())  # alive while the workspace holds it
    del first, second
    assert held() is not None
    release_workspace()
    assert held() is None  # freed: nothing else kept the storage
    with torch.no_grad():
        third = assemble_kernels(static, dynamic, index, scale)
    torch.testing.assert_close(third, expected, rtol=0, atol=0)
