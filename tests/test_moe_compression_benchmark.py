"""benchmarks/moe_compression.py: every compressor keeps the model's output shape and is the identity at
full size, stored bytes match counts done by hand, and dropping / merging route tokens as intended
(tiny Mixtral, no data, no timing)."""

import math

import pytest
import torch

import padnet
from tests.helpers import benchmark_module

transformers = pytest.importorskip("transformers")

E, H, INTER, LAYERS = 4, 16, 24, 2
N_GATE_UP, N_DOWN = 2 * INTER * H, H * INTER  # entries of one expert's gate_up (48 x 16) and down (16 x 24)


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("moe_compression")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(
        vocab_size=32, hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=2,
        num_key_value_heads=2, num_local_experts=E, num_experts_per_tok=2, max_position_embeddings=16,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"
    model = transformers.MixtralForCausalLM(config)
    with torch.no_grad():  # experts that differ, and a router that prefers some experts
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj.normal_(0, 0.2)
            layer.mlp.experts.down_proj.normal_(0, 0.2)
            layer.mlp.gate.weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def setup(bench):
    model = tiny_model()
    batches = [torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return model, batches, bench.calibrate(model, batches)


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(batch).logits


def test_packbits_round_trip_and_size(bench):
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    bits = bench.packbits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == math.ceil(21 / 8)
    assert torch.equal(bench.unpackbits(bits, 21).view(3, 7), mask)


def test_calibration_counts_every_routed_slot(setup):
    model, batches, stats = setup
    tokens = sum(b.numel() for b in batches)
    for st in stats:
        assert float(st["count"].sum()) == 2 * tokens  # top-2: two distinct experts per token
        assert st["logits"].shape == (tokens, E)
        assert st["x2_in"].shape == (E, H) and st["x2_mid"].shape == (E, INTER)


@pytest.mark.parametrize("method, setting", [
    ("drop", {"keep": E}), ("merge", {"keep": E}), ("prune_magnitude", {"density": 1.0}),
    ("prune_wanda", {"density": 1.0}), ("lowrank", {"ranks": [H, H]}), ("pad_element", {"kappa": 1.0}),
    ("pad_channel", {"kappa": 1.0})])
def test_full_size_compressors_reproduce_the_model(bench, setup, method, setting):
    model, batches, stats = setup
    compressed = bench.compress(model, method, setting, stats, batches, seed=0)
    before, after = logits(model, batches[0]), logits(compressed, batches[0])
    assert after.shape == before.shape
    if method.startswith(("drop", "merge", "prune")):
        assert torch.equal(after, before)  # the same weights through the same loop
    else:
        # float32 (eps 1.2e-7). Low rank at full rank rebuilds each weight from its SVD, within about n * eps
        # of it (n <= 48); PAD at kappa 1 computes the same products in another order. Through two layers
        # the logits (|.| <= 0.3) moved by 8e-7 here (lowrank) and 0 (PAD): 1e-5 is that bound with margin.
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert bench.stored_bytes(model) == LAYERS * 4 * E * (N_GATE_UP + N_DOWN)


@pytest.mark.parametrize("method", ["drop", "merge", "prune_magnitude", "prune_wanda", "lowrank", "pad_element",
                                    "pad_channel", "pad_element_bitmask"])
def test_stored_bytes_by_hand_at_half_budget(bench, setup, method):
    model, batches, stats = setup
    setting = bench.setting_for(method, 0.5, bench.shapes_of(model))
    compressed = bench.compress(model, method.removesuffix("_bitmask"), setting, stats, batches, seed=0)
    assert logits(compressed, batches[0]).shape == logits(model, batches[0]).shape
    got = bench.counted_bytes(method, compressed)
    if method == "drop":  # 2 of 4 experts
        assert setting == {"keep": 2}
        want = LAYERS * 4 * 2 * (N_GATE_UP + N_DOWN)
    elif method == "merge":  # 2 merged experts and the int32 expert -> group map
        want = LAYERS * (4 * 2 * (N_GATE_UP + N_DOWN) + 4 * E)
    elif method == "prune_magnitude":  # density 0.5 - 1/32 of each expert matrix, a 1-bit mask of all entries
        d = 0.5 - 1 / 32
        want = LAYERS * (4 * E * (math.floor(d * N_GATE_UP) + math.floor(d * N_DOWN)) + E * (N_GATE_UP + N_DOWN) // 8)
    elif method == "prune_wanda":  # per output row: gate_up rows have 16 inputs, down rows 24
        d = 0.5 - 1 / 32
        kept = E * (2 * INTER * math.floor(d * H) + H * math.floor(d * INTER))
        want = LAYERS * (4 * kept + E * (N_GATE_UP + N_DOWN) // 8)
        assert (math.floor(d * H), math.floor(d * INTER)) == (7, 11)
    elif method == "lowrank":  # mean + E (U r x out, V r x in); r = floor(N (0.5 E - 1) / (E (out + in)))
        r_gate_up, r_down = N_GATE_UP * 1 // (E * (48 + 16)), N_DOWN * 1 // (E * (16 + 24))
        assert setting == {"ranks": [r_gate_up, r_down]} == {"ranks": [3, 2]}
        want = LAYERS * 4 * (N_GATE_UP + E * r_gate_up * 64 + N_DOWN + E * r_down * 40)
    elif method == "pad_element":  # kappa 0.25 of all entries (global): N - nnz + E nnz floats, nnz int32
        total = LAYERS * (N_GATE_UP + N_DOWN)
        nnz = round(0.25 * total)
        want = 4 * (total - nnz) + 4 * E * nnz + 4 * nnz
    elif method == "pad_channel":  # kappa 0.25 of each weight's rows, an int32 index per dynamic entry
        rows = LAYERS * (round(0.25 * 48) * 16 + round(0.25 * 16) * 24)
        want = 4 * (LAYERS * (N_GATE_UP + N_DOWN) + E * rows)
    else:  # PAD element counted with a packed bitmask of each weight's entries instead of the index list
        total = LAYERS * (N_GATE_UP + N_DOWN)
        nnz = round(setting["kappa"] * total)
        want = 4 * (total - nnz + E * nnz) + LAYERS * (N_GATE_UP + N_DOWN) // 8
    assert got == want
    assert got <= 0.5 * bench.stored_bytes(model) + 4 * LAYERS * E  # at or under the budget (merge: its map)


def test_deployed_pad_bytes_follow_values(bench, setup):
    """Deployed PAD experts: bytes = 4 (stored values + int32 index entries), values = N - nnz + E nnz."""
    model, batches, stats = setup
    pad = bench.compress(model, "pad_element", {"kappa": 0.3}, stats, batches, seed=0)
    padnet.deploy(pad)
    values = nnz = 0
    for block in bench.moe_blocks(pad):
        for name, t in bench.stored_tensors(block.experts).items():
            assert t.dtype == (torch.int32 if name.endswith("index") else torch.float32)
            values += t.numel() if t.dtype == torch.float32 else 0
            nnz += t.numel() if t.dtype == torch.int32 else 0
    total = LAYERS * (N_GATE_UP + N_DOWN)
    assert nnz == round(0.3 * total) and values == total - nnz + E * nnz
    assert bench.stored_bytes(pad) == 4 * values + 4 * nnz


def test_dropping_renormalises_the_router_over_kept_experts(bench, setup):
    model, batches, stats = setup
    dropped = bench.drop_experts(model, 2, stats)
    x = torch.randn(10, H, generator=torch.Generator().manual_seed(1))
    for block, small, st in zip(bench.moe_blocks(model), bench.moe_blocks(dropped), stats):
        kept = sorted(bench.usage_order(st["count"])[:2])
        assert torch.equal(small.gate.weight, block.gate.weight[kept])
        # reference: the original router's probabilities over the kept experts only, renormalised
        probs = torch.softmax(x @ block.gate.weight[kept].t(), -1)
        experts = block.experts
        want = sum(probs[:, j, None] * _expert(experts, e, x) for j, e in enumerate(kept))
        with torch.no_grad():  # float32 sums of <= 24 products in another order: |want| <= 2, measured 4e-7
            torch.testing.assert_close(small(x.unsqueeze(0))[0], want, atol=1e-5, rtol=1e-5)


def test_merging_sends_each_expert_to_its_group(bench, setup):
    model, batches, stats = setup
    merged = bench.merge_experts(model, 2, stats)
    x = torch.randn(10, H, generator=torch.Generator().manual_seed(2))
    for block, small, st in zip(bench.moe_blocks(model), bench.moe_blocks(merged), stats):
        centres = sorted(bench.usage_order(st["count"])[:2])
        group_of = small.experts.group_of
        assert [int(group_of[c]) for c in centres] == [0, 1] and group_of.shape == (E,)
        # reference: the original router (top-2 of E, renormalised); expert e computes its group's weights
        probs = torch.softmax(x @ block.gate.weight.t(), -1)
        top, index = probs.topk(2, -1)
        top = top / top.sum(-1, keepdim=True)
        want = torch.zeros_like(x)
        for t in range(len(x)):
            for j in range(2):
                want[t] += top[t, j] * _expert(small.experts, int(group_of[index[t, j]]), x[t:t + 1])[0]
        with torch.no_grad():  # as in the dropping test
            torch.testing.assert_close(small(x.unsqueeze(0))[0], want, atol=1e-5, rtol=1e-5)


def test_merge_alignment_recovers_a_permutation(bench):
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(3)
    gate_up, down = torch.randn(2 * INTER, H, generator=g), torch.randn(H, INTER, generator=g)
    perm = torch.randperm(INTER, generator=g)
    member = (gate_up[torch.cat([perm, perm + INTER])], down[:, perm])
    found = bench.neuron_permutation((gate_up, down), member)
    assert torch.equal(member[0][torch.cat([found, found + INTER])], gate_up)
    assert torch.equal(member[1][:, found], down)


def test_wanda_with_unit_inputs_is_per_row_magnitude(bench, setup):
    model, _, stats = setup
    unit = [{**st, "x2_in": torch.ones_like(st["x2_in"]), "x2_mid": torch.ones_like(st["x2_mid"])} for st in stats]
    pruned = bench.prune_experts(model, 0.5, unit, "wanda")
    weight = bench.moe_blocks(model)[0].experts.gate_up_proj.detach()
    mask = pruned.model.layers[0].mlp.experts.gate_up_mask
    assert torch.equal(mask.sum(-1), torch.full((E, 2 * INTER), H // 2))
    kept_min = torch.where(mask, weight.abs(), torch.inf).amin(-1)
    dropped_max = torch.where(mask, -torch.inf, weight.abs()).amax(-1)
    assert bool((kept_min >= dropped_max).all())


def _expert(experts, e, x):
    gate_up, down = experts.weights() if hasattr(experts, "weights") else (experts.gate_up_proj, experts.down_proj)
    gate, up = (x @ gate_up[e].t()).chunk(2, -1)
    return (experts.act_fn(gate) * up) @ down[e].t()
