"""padnet.load builds the model on the meta device, checks every tensor against the file's header, and
only then puts the file's tensors in place (load_state_dict(assign=True)): a record cannot make load
allocate a model the file does not hold, for converted (PAD, compacted, deployed) models too (issue 14)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import padnet
import padnet.models
from padnet.errors import ModelFileError
from padnet.layers import pad_layers
from tests.helpers import random_mask

SMALL = {"num_classes": 10, "in_channels": 1, "small_input": True, "width": 4, "layers": [1]}


@pytest.fixture
def builds(monkeypatch):
    """The device each padnet model build ran on ("meta" or "cpu")."""
    devices = []
    real = padnet.models.build

    def build(*args, **kwargs):
        devices.append(torch.empty(()).device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(padnet.models, "build", build)
    return devices


def pad_model(form):
    torch.manual_seed(0)
    model = padnet.build_arch("padnet.small_resnet", **SMALL)
    if form == "plain":
        return model.eval()
    padnet.convert(model, dynamic="conv", pad=True, num_kernels=2)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
        with torch.no_grad():
            layer.phi.fill_(0.3)
            layer.static_weight.normal_()
    if form == "compacted":
        pad_layers(model)[0][1].compact()
    if form == "deployed":
        padnet.deploy(model)
    return model.eval()


def tampered(path, out, **replace):
    """A copy of the model file at ``path`` with some tensors replaced (same padnet record)."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    tensors.update(replace)
    save_file(tensors, str(out), metadata=metadata)
    return out


@pytest.mark.parametrize("form", ["plain", "training", "compacted", "deployed"])
def test_a_normal_file_is_built_on_meta_and_loads_its_own_tensors(tmp_path, builds, form):
    model = pad_model(form)
    path = padnet.save(model, tmp_path / "m.safetensors")
    builds.clear()
    loaded = padnet.load(path).eval()
    assert builds == ["meta"]  # built once, on meta: never for real
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert not [n for n, t in [*loaded.named_parameters(), *loaded.named_buffers()] if t.is_meta]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for (_, a), (_, b) in zip(pad_layers(loaded), pad_layers(model)):
        assert torch.equal(a.dynamic_index, b.dynamic_index) and torch.equal(a.static_keep, b.static_keep)


@pytest.mark.parametrize("form", ["plain", "training", "deployed"])
def test_header_shapes_that_disagree_with_the_record_are_refused_before_a_real_build(tmp_path, builds, form):
    model = pad_model(form)
    path = padnet.save(model, tmp_path / "m.safetensors")
    name = {"plain": "layer1.0.conv1.weight", "training": "layer1.0.conv1.weight",
            "deployed": "layer1.0.conv1.dynamic_values"}[form]
    shape = list(model.state_dict()[name].shape)
    shape[0] += 3  # another number of kernels / output channels, stored consistently in the file
    bad = tampered(path, tmp_path / "bad.safetensors", **{name: torch.zeros(shape)})
    builds.clear()
    with pytest.raises(ModelFileError, match=rf"{bad}: the weights do not match padnet.small_resnet: {name}: "
                                             rf"padnet.small_resnet has \(\d+, .*the file \({shape[0]}, "):
        padnet.load(bad)
    assert builds == ["meta"]


def test_compacted_values_must_match_the_files_mask(tmp_path, builds):
    """A compacted PAD layer takes its number of dynamic entries from the file's mask; values of another
    size are refused by name before anything is built for real."""
    model = pad_model("compacted")
    name = pad_layers(model)[0][0]
    path = padnet.save(model, tmp_path / "m.safetensors")
    values = model.state_dict()[f"{name}.dynamic_values"]
    bad = tampered(path, tmp_path / "bad.safetensors",
                   **{f"{name}.dynamic_values": torch.zeros(values.shape[0], values.shape[1] + 5)})
    builds.clear()
    with pytest.raises(ModelFileError, match=rf"{name}\.dynamic_values: .* has \({values.shape[0]}, "
                                             rf"{values.shape[1]}\), the file "
                                             rf"\({values.shape[0]}, {values.shape[1] + 5}\)"):
        padnet.load(bad)
    assert builds == ["meta"]


def test_a_mask_of_the_wrong_kind_is_refused(tmp_path):
    model = pad_model("training")
    name = pad_layers(model)[0][0]
    path = padnet.save(model, tmp_path / "m.safetensors")
    mask = model.state_dict()[f"{name}.mask"]
    bad = tampered(path, tmp_path / "bad.safetensors", **{f"{name}.mask": mask.float()})
    with pytest.raises(ModelFileError, match=rf"{bad}: layer {name}: bad mask: mask must be a torch.bool tensor"):
        padnet.load(bad)


def test_header_shape_must_match_the_bytes_it_holds(tmp_path):
    """A header cannot claim a larger tensor than its data: the model is checked against these shapes."""
    path = padnet.save(pad_model("plain"), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["fc.weight"]["shape"] = [100_000, header["fc.weight"]["shape"][1]]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw))
    assert len(raw) == n
    path.write_bytes(bytes(data[:8]) + raw + bytes(data[8 + n:]))
    with pytest.raises(ModelFileError, match=rf"{path}: corrupted safetensors header: invalid shape, data type, "
                                             "or offset for tensor"):
        padnet.load(path)


def test_hugging_face_models_are_checked_on_meta_then_built(tmp_path, monkeypatch):
    """transformers models hold non-persistent buffers (position_ids) whose values are not in the file:
    they are checked on meta like the others, then built for real, and load as they were saved."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForSequenceClassification, BertConfig

    from padnet.models.transformers_models import ARCH_NAME, config_record

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    padnet.tag_arch(model, ARCH_NAME, config=config_record(model.config))
    padnet.convert(model, dynamic="moe", pad=True, num_experts=2, top_k=1)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.5, seed=i))
        layer.compact()
    model.eval()
    path = padnet.save(model, tmp_path / "bert.safetensors")

    devices = []
    real = AutoModelForSequenceClassification.from_config

    def from_config(*args, **kwargs):
        devices.append(torch.empty(()).device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_config", from_config)
    ids = torch.tensor([[1, 5, 7, 2, 0]])
    loaded = padnet.load(path).eval()
    assert devices == ["meta", "cpu"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)

    name = next(k for k in model.state_dict() if k.endswith("dynamic_values"))
    values = model.state_dict()[name]
    bad = tampered(path, tmp_path / "bad.safetensors", **{name: torch.zeros(values.shape[0] + 1, values.shape[1])})
    devices.clear()
    with pytest.raises(ModelFileError, match=rf"{bad}: the weights do not match {ARCH_NAME}: {name}: "):
        padnet.load(bad)
    assert devices == ["meta"]


def test_loaded_tensors_are_aligned_and_give_identical_outputs(tmp_path):
    """The file's tensors sit at any offset; put in place as they are, a resnet's convolutions gave outputs
    1e-7 away from the saved model's. Each is 64-byte aligned, as torch allocates parameters."""
    torch.manual_seed(0)
    model = padnet.build_arch("torchvision.resnet18", num_classes=10)
    padnet.convert(model, include=["layer1.*"])
    padnet.deploy(model, allow_unpartitioned=True)
    loaded = padnet.load(padnet.save(model, tmp_path / "r18.safetensors"))
    assert all(t.data_ptr() % 64 == 0 for t in loaded.state_dict().values() if t.numel())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
