"""The "moe" kind on other FFN layouts (issue 18, part 2): GPT-2's Conv1D projections (weight stored
(in, out)) and LLaMA/Qwen SwiGLU MLPs, whose gate/up/down projections ``target`` chooses. Upcycled,
the converted model computes exactly what it did; partitioned and deployed, it saves and loads exactly."""

import pytest
import torch

import padnet
from padnet.convert import plan_conversion
from padnet.errors import ConfigError
from padnet.layers import pad_layers
from tests.helpers import assert_close_f64, random_mask

transformers = pytest.importorskip("transformers")

TOKENS = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, vocab_size=50, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def logits(model):
    with torch.no_grad():
        return model.eval()(TOKENS).logits


def test_gpt2_conv1d_mlp_output_is_upcycled_exactly():
    model = tiny_gpt2()
    before = logits(model)
    padnet.convert(model, dynamic="moe", num_experts=4, top_k=2)
    assert model.padnet_config["converted"] == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    layer = model.get_submodule("transformer.h.0.mlp.c_proj")
    assert (layer.in_features, layer.out_features) == (128, 32)  # Conv1D(nf=32, nx=128): its weight is (128, 32)
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("target, names", [
    ("output", ["down_proj"]), ("down", ["down_proj"]), ("gate", ["gate_proj"]), ("up", ["up_proj"]),
    (["gate", "down"], ["gate_proj", "down_proj"]), (("gate", "down"), ["gate_proj", "down_proj"]),  # a tuple too
])
def test_swiglu_projections_chosen_by_target_are_upcycled_exactly(target, names):
    model = tiny_llama()
    before = logits(model)
    padnet.convert(model, dynamic="moe", num_experts=4, target=target)
    assert model.padnet_config["converted"] == [f"model.layers.{i}.mlp.{n}" for i in range(2) for n in names]
    assert torch.equal(logits(model), before)


def test_up_is_a_plain_ffns_input_projection_and_gate_needs_a_gated_ffn():
    model = tiny_gpt2()
    assert plan_conversion(model, dynamic="moe", target="up")[0] == [
        "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    with pytest.raises(ValueError, match="found no FFN output projection"):
        padnet.convert(tiny_gpt2(), dynamic="moe", target="gate")


@pytest.mark.parametrize("bad", ["input", ["gate", "sideways"], [], 3])
def test_a_bad_target_is_refused_naming_it_and_the_choices(bad):
    with pytest.raises(ConfigError, match=r"target=.*allowed: one of 'output', 'down', 'gate', 'up'"):
        padnet.convert(tiny_llama(), dynamic="moe", target=bad)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("build, target", [(tiny_gpt2, "output"), (tiny_llama, ["gate", "up"])])
def test_partitioned_and_deployed_models_save_and_load_exactly(tmp_path, build, target):
    model = padnet.convert(build(), dynamic="moe", num_experts=4, target=target)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
    trained = logits(model)
    padnet.deploy(model)
    assert_close_f64(logits(model), trained)
    path = padnet.save(model, tmp_path / "m.safetensors")
    assert torch.equal(logits(padnet.load(path)), logits(model))
