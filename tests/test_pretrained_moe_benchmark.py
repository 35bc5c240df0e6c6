"""benchmarks/pretrained_moe.py: its model builder converts exactly and its storage count matches
docs/method.md#storage after a 1-step PAD pipeline (no timing, no results)."""

import pytest
import torch

import padnet
from tests.helpers import benchmark_module

pytest.importorskip("transformers")


def bench():
    return benchmark_module("pretrained_moe")


def test_builder_converts_exactly_and_deployed_storage_follows_spec():
    b = bench()
    model = b.build_model(0)
    stream = torch.arange(1000) % 256
    batch = b.random_batch(stream, torch.Generator().manual_seed(0))
    b.train(model, stream, 0, 1, None, "t")
    values, nbytes = b.expert_storage(model)
    model.eval()
    with torch.no_grad():
        before = model(batch).logits
    pad = padnet.convert(model, dynamic="experts", pad=True)
    with torch.no_grad():
        assert torch.equal(pad.eval()(batch).logits, before)
    padnet.partition(pad, [batch], b.lm_loss, dynamic_ratio=0.3, rounds=1)
    padnet.deploy(pad)
    pad_values, pad_bytes = b.expert_storage(pad)
    n, k = values // 8, 8
    nnz = round(0.3 * n)  # global scope: round(kappa * N) over both layers' entries
    assert pad_values == (n - nnz) + k * nnz
    assert pad_bytes == 4 * (n + k * nnz) + 8 * nnz
    assert nbytes == 4 * values
