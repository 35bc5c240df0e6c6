"""Pretrained MoE blocks with fused experts (dynamic="experts") and the partition's warm-up for
upcycled dense -> MoE models (issue 18, part 2)."""

import pytest
import torch

import padnet
from padnet.errors import PartitionError
from padnet.layers import pad_layers
from padnet.partition import _taylor_scores
from tests.helpers import float32_tolerance

transformers = pytest.importorskip("transformers")

TOKENS = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(0))
COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, vocab_size=50,
              bos_token_id=0, eos_token_id=0)


def tiny_moe(kind="mixtral", experts_implementation="eager"):
    torch.manual_seed(0)
    if kind == "mixtral":
        config = transformers.MixtralConfig(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, **COMMON)
        cls = transformers.MixtralForCausalLM
    elif kind == "qwen2_moe":
        config = transformers.Qwen2MoeConfig(moe_intermediate_size=48, shared_expert_intermediate_size=48,
                                             intermediate_size=64, num_experts=4, num_experts_per_tok=2, **COMMON)
        cls = transformers.Qwen2MoeForCausalLM
    else:
        config = transformers.OlmoeConfig(intermediate_size=48, num_experts=4, num_experts_per_tok=2, **COMMON)
        cls = transformers.OlmoeForCausalLM
    # transformers' eager loop, which PADExperts follows step by step: bit-exact at conversion. The
    # default grouped_mm kernel sums in another order (compared within float rounding below).
    config._experts_implementation = experts_implementation
    return cls(config).eval()


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model.eval()(tokens).logits


def lm_loss(model, batch):
    return model(batch, labels=batch).loss


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "olmoe"])
def test_fused_experts_become_pad_experts_computing_exactly_what_they_did(kind):
    model = tiny_moe(kind)
    before = logits(model)
    routers = {n: p.clone() for n, p in model.named_parameters() if ".gate." in n}
    padnet.convert(model, dynamic="experts")
    assert model.padnet_config["converted"] == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    assert torch.equal(logits(model), before)
    assert all(torch.equal(model.get_parameter(n), p) for n, p in routers.items())  # the model's own router
    layer = model.get_submodule("model.layers.0.mlp.experts.down_proj")
    assert bool(layer.mask.all())
    assert torch.allclose(layer.static_weight, layer.weight.mean(0))


def test_default_grouped_kernel_matches_within_rounding():
    model = tiny_moe(experts_implementation="grouped_mm")
    before = logits(model)
    padnet.convert(model, dynamic="experts")
    # grouped_mm runs in float32 only, so no float64 run exists: the bound for two float32 summation
    # orders. Along any path to a logit, each of the 2 layers sums 32 (hidden) + 48 (expert FFN) products
    # in the experts that the two kernels order differently; the logits' scale bounds the terms' sizes.
    tolerance = float32_tolerance(terms=2 * (32 + 48), scale=before.abs().max().item())
    torch.testing.assert_close(logits(model), before, atol=tolerance, rtol=0)


def test_partition_needs_no_warmup_reaches_kappa_and_reports_the_function_change(tmp_path):
    model = padnet.convert(tiny_moe(), dynamic="experts")
    before = logits(model)
    with torch.no_grad():
        loss_before = float(lm_loss(model.eval(), TOKENS))
    report = padnet.partition(model, [TOKENS], lm_loss, dynamic_ratio=0.3, rounds=2)
    total = sum(layer.kernel_numel for _, layer in pad_layers(model))
    assert sum(layer.num_dynamic for _, layer in pad_layers(model)) == round(0.3 * total)
    assert report.dynamic_ratio == round(0.3 * total) / total
    partitioned = logits(model)
    assert not torch.equal(partitioned, before)  # the static entries now hold the experts' mean
    with torch.no_grad():
        assert (report.loss_before, report.loss_after) == (loss_before, float(lm_loss(model, TOKENS)))
    assert report.loss_after != report.loss_before and "before" in report.table()
    padnet.deploy(model)
    assert torch.equal(logits(model), partitioned)
    # The summary asks the layers: 2 fused weights per block, kappa of their entries dynamic.
    summary = padnet.summary(model)
    assert len(summary.layers) == 4 and all(row.kind == "DeployedExpertWeights" for row in summary.layers)
    assert sum(row.dynamic_params for row in summary.layers) == 4 * round(0.3 * total)
    path = padnet.save(model, tmp_path / "moe.safetensors")
    assert torch.equal(logits(padnet.load(path)), partitioned)


def test_taylor_scores_of_pretrained_experts_are_informative():
    model = padnet.convert(tiny_moe(), dynamic="experts")
    layers = pad_layers(model)
    scores = _taylor_scores(model.eval(), layers, [TOKENS], lm_loss, 0)
    assert all(float(s.max()) > 0 and int((s > 0).sum()) > s.numel() // 2 for s in scores)
    for _, layer in layers:
        layer.relaxed_mask = None


def test_training_form_saves_and_loads_and_compacts_exactly(tmp_path):
    model = padnet.convert(tiny_moe("qwen2_moe"), dynamic="experts")
    padnet.partition(model, None, None, dynamic_ratio=0.5, scorer="magnitude")
    partitioned = logits(model)
    assert torch.equal(logits(padnet.load(padnet.save(model, tmp_path / "t.safetensors"))), partitioned)
    padnet.compact(model)
    assert torch.equal(logits(model), partitioned)


def test_experts_kind_is_pad_only_and_needs_fused_experts():
    with pytest.raises(ValueError, match="pad=False.*already"):
        padnet.convert(tiny_moe(), dynamic="experts", pad=False)
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=64, vocab_size=50))
    with pytest.raises(ValueError, match="found no fused MoE experts module"):
        padnet.convert(bert, dynamic="experts")


@pytest.mark.parametrize("setting", [{"num_experts": 4}, {"top_k": 1}, {"granularity": "channel"}])
def test_experts_kind_refuses_settings_it_would_ignore(setting):
    key, value = next(iter(setting.items()))
    with pytest.raises(ValueError, match=f"{key}={value!r}: dynamic='experts' keeps the model's own experts"):
        padnet.convert(tiny_moe(), dynamic="experts", **setting)


# --------------------------------------------------------------------------- warm-up in padnet.partition
def tiny_bert_classifier():
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=50, num_labels=3)
    return transformers.BertForSequenceClassification(config)


BATCHES = [(TOKENS, torch.tensor([0, 1, 2, 1])), (TOKENS.flip(0), torch.tensor([2, 0, 1, 0]))]


def classify_loss(model, batch):
    tokens, labels = batch
    return model(tokens, labels=labels).loss


def test_upcycled_model_without_warmup_is_refused_saying_to_use_warmup_steps():
    model = padnet.convert(tiny_bert_classifier(), dynamic="moe", num_experts=4)
    with pytest.raises(PartitionError, match="warmup_steps=N, optimizer="):
        padnet.partition(model, BATCHES, classify_loss, dynamic_ratio=0.3)


def test_partition_warmup_steps_train_the_experts_apart_then_partition():
    model = padnet.convert(tiny_bert_classifier(), dynamic="moe", num_experts=4)
    layer = pad_layers(model)[0][1]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    report = padnet.partition(model, BATCHES, classify_loss, dynamic_ratio=0.3, warmup_steps=5, optimizer=optimizer)
    assert report.warmup_steps == 5 and "after 5 warm-up steps" in report.table()
    assert not torch.equal(layer.weight[0], layer.weight[1])  # the experts diverged
    total = sum(layer.kernel_numel for _, layer in pad_layers(model))
    assert sum(layer.num_dynamic for _, layer in pad_layers(model)) == round(0.3 * total)
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup_steps": -1}, "warmup_steps=-1 must be an integer >= 0"),
    ({"warmup_steps": 2}, "warmup_steps=2 needs optimizer="),
])
def test_bad_warmup_arguments_are_refused(kwargs, message):
    model = padnet.convert(tiny_bert_classifier(), dynamic="moe", num_experts=4)
    with pytest.raises(ValueError, match=message):
        padnet.partition(model, BATCHES, classify_loss, dynamic_ratio=0.3, **kwargs)
