"""padnet.load(path) alone rebuilds models built by torchvision's builders or by transformers: convert
and save recognise them (padnet.arch.detect_arch); any other model's load error says how to record it."""

import json
import os

import pytest
import torch
import torchvision
from torch import nn

import padnet
from padnet.arch import detect_arch
from padnet.errors import ModelFileError
from padnet.layers import pad_layers
from padnet.serialization import read_record
from tests.helpers import random_mask


def same_outputs(a, b, *inputs):
    with torch.no_grad():
        out_a, out_b = a.eval()(*inputs), b.eval()(*inputs)
    out_a, out_b = (o if isinstance(o, torch.Tensor) else o[0] for o in (out_a, out_b))
    torch.testing.assert_close(out_b, out_a, atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs", [("resnet18", {"num_classes": 10}), ("squeezenet1_0", {"num_classes": 7}),
                                          ("mobilenet_v3_small", {})])
def test_torchvision_builders_are_recognised(name, kwargs):
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    assert detect_arch(model) == {"name": f"torchvision.{name}", "kwargs": kwargs}


@pytest.mark.slow
def test_a_changed_torchvision_model_is_not_recognised():
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # a one-channel stem: no builder makes this
    assert detect_arch(model) is None
    other = torchvision.models.mobilenet_v3_small(dropout=0.5)  # a setting no builder default matches
    assert detect_arch(other) is None


@pytest.mark.parametrize("form", ["training", "deployed"])
def test_converted_torchvision_model_loads_from_its_path_alone(tmp_path, form):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    padnet.convert(model, include=["layer1.*"])
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
    if form == "deployed":
        padnet.deploy(model)
    path = padnet.save(model, tmp_path / "m.safetensors")
    assert read_record(path)["arch"] == {"name": "torchvision.resnet18", "kwargs": {"num_classes": 10}}
    same_outputs(model, padnet.load(path), torch.randn(2, 3, 32, 32))


def test_plain_torchvision_model_is_recorded_by_save(tmp_path):
    model = torchvision.models.squeezenet1_0(num_classes=5)
    path = padnet.save(model, tmp_path / "plain.safetensors")
    same_outputs(model, padnet.load(path), torch.randn(1, 3, 64, 64))


def test_unrecognised_model_load_error_says_how_to_record_it(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    padnet.convert(model)
    path = padnet.save(model, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=r"records no architecture.*padnet.build_arch.*padnet.tag_arch.*"
                                             r"arch=\{'name'.*model_factory"):
        padnet.load(path)


# ----------------------------------------------------------------------------- Hugging Face models
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_bert_config(**kwargs):
    return transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32, **kwargs)


@pytest.mark.parametrize("cls", ["BertForSequenceClassification", "BertForMaskedLM", "BertModel"])
def test_hf_model_loads_from_its_path_alone(tmp_path, cls):
    torch.manual_seed(0)
    model = getattr(transformers, cls)(tiny_bert_config(num_labels=3))
    padnet.convert(model, dynamic="moe", num_experts=2, top_k=1)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.5, seed=i))
    padnet.deploy(model)
    path = padnet.save(model, tmp_path / "bert.safetensors")
    arch = read_record(path)["arch"]
    assert arch["name"] == "transformers.auto" and arch["kwargs"]["config"]["architectures"] == [cls]
    loaded = padnet.load(path)
    assert type(loaded).__name__ == cls
    same_outputs(model, loaded, torch.randint(0, 64, (2, 7)))


def rewrite_record(path, change):
    """``path`` with its padnet record changed by ``change(record)`` (the tensors kept)."""
    from safetensors.torch import load_file, save_file

    record = read_record(path)
    change(record)
    save_file(load_file(path), path, metadata={"padnet": json.dumps(record)})


@pytest.mark.parametrize("architectures, error", [
    (["os.system"], "is not a model class transformers' auto classes build"),
    (["BertForMaskedLM", "GPT2Model"], "must list one model class name"),
])
def test_hf_record_names_only_transformers_own_classes(tmp_path, architectures, error):
    model = transformers.BertForMaskedLM(tiny_bert_config())
    path = padnet.save(model, tmp_path / "bert.safetensors")

    def change(record):
        record["arch"]["kwargs"]["config"]["architectures"] = architectures

    rewrite_record(path, change)
    with pytest.raises(ModelFileError, match=error):
        padnet.load(path)


def test_file_that_converted_se_convs_still_loads(tmp_path):
    """A file written when the default rule converted squeeze-excitation convs loads as it was written."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    padnet.convert(model, include=["features.*"], exclude=["features.0.0"])  # all but the stem: SE convs too
    assert "features.1.block.1.fc1" in model.padnet_config["converted"]
    model.padnet_config.update(include=None, exclude=None, skipped={})  # as the old default recorded it
    path = padnet.save(model, tmp_path / "old.safetensors")
    loaded = padnet.load(path)
    assert loaded.padnet_config == read_record(path)["padnet_config"]
    same_outputs(model, loaded, torch.randn(2, 3, 64, 64))


@pytest.mark.slow
def test_a_builder_that_cannot_run_on_meta_still_saves_detects_and_loads(tmp_path):
    # torchvision's RegNet computes its stage widths with tensors it reads back: no meta default device.
    model = torchvision.models.regnet_y_400mf(num_classes=10)
    assert detect_arch(model) == {"name": "torchvision.regnet_y_400mf", "kwargs": {"num_classes": 10}}
    padnet.convert(model)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
    loaded = padnet.load(padnet.save(model, tmp_path / "regnet.safetensors")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=0, rtol=0)
    built = padnet.build_arch("torchvision.regnet_y_400mf", num_classes=10)
    assert type(padnet.load(padnet.save(built, tmp_path / "built.safetensors"))).__name__ == "RegNet"
