"""padnet.save / padnet.load: safetensors + JSON, training and deployed forms, refusals."""

import json
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import padnet
from padnet.convert import convert
from padnet.errors import ModelFileError
from padnet.layers import DeployedPADMoELinear, PADConv2d, pad_layers
from padnet.serialization import read_record
from tests.helpers import random_mask
from tests.test_deploy import TinyEncoder

INCLUDE = ["layer1.*", "layer2.0.*"]  # a few PAD layers keep the files and the test small


def pad_resnet(mode="both"):
    torch.manual_seed(0)
    model = padnet.build_arch("torchvision.resnet18", num_classes=10)
    convert(model, lambda_mode=mode, include=INCLUDE)
    for i, (_, layer) in enumerate(pad_layers(model)):
        layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
        with torch.no_grad():
            layer.phi.fill_(0.25)
    model.layer1[0].conv1.temperature = 4.0
    return model.eval()


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["training", "compacted", "deployed"])
def test_round_trip(tmp_path, form):
    model = pad_resnet("static")
    if form == "compacted":
        model.layer1[0].conv2.compact()
    if form == "deployed":
        padnet.deploy(model)
    x = torch.randn(2, 3, 32, 32)
    path = padnet.save(model, tmp_path / "m.safetensors")
    loaded = padnet.load(path)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), atol=0, rtol=0)
    assert loaded.padnet_config == model.padnet_config
    assert loaded.layer1[0].conv1.temperature == 4.0
    assert set(loaded.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if form == "compacted":
        assert loaded.layer1[0].conv2.compacted and not loaded.layer1[0].conv1.compacted
    assert read_record(path)["form"] == ("deployed" if form == "deployed" else "training")
    if form == "deployed":  # the file holds the index list as int32; the layer scatters with int64
        from safetensors.torch import load_file

        assert load_file(path)["layer1.0.conv1.dynamic_index"].dtype == torch.int32
        assert loaded.layer1[0].conv1.dynamic_index.dtype == torch.long
    assert not [p for p in os.listdir(tmp_path) if p != "m.safetensors"]  # no temp file left behind


@pytest.mark.slow
def test_loading_on_meta_imports_neither_sympy_nor_dynamo(tmp_path):
    """``padnet.load`` builds a file's model on the meta device before it takes any tensor; PAD layers,
    compacted and deployed, skip their value arithmetic there, whose meta kernels (Python registrations)
    would import sympy and torch._dynamo: about half of what ``padnet predict`` of a padnet model takes
    here. (A torchvision model imports both with torchvision itself.)"""
    files = []
    for name, form in (("c", padnet.compact), ("d", padnet.deploy)):
        torch.manual_seed(0)
        model = convert(padnet.build_arch("padnet.small_resnet", num_classes=3, width=4, layers=[1, 1]),
                        include=["layer2.*"])
        for i, (_, layer) in enumerate(pad_layers(model)):
            layer.set_mask(random_mask(layer.kernel_shape, 0.3, seed=i))
        files.append(padnet.save(form(model), tmp_path / f"{name}.safetensors"))
    code = ("import json, sys, torch, padnet\n"
            "heavy = lambda: [m for m in ('sympy', 'torch._dynamo') if m in sys.modules]\n"
            "before = heavy()\n"
            f"models = [padnet.load(path) for path in {[str(f) for f in files]!r}]\n"
            "assert models[0].layer2[0].conv1.compacted and hasattr(models[1].layer2[0].conv1, 'static_kernel')\n"
            "print(json.dumps([before, heavy()]))")
    before, after = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout)
    if before:
        pytest.skip(f"importing padnet already imports {before} with this torch")
    assert after == []


def deployed_moe_encoder():
    """A TinyEncoder with deployed PAD-MoE layers whose experts and routers differ (kappa 0.5)."""
    model = convert(TinyEncoder(), dynamic="moe", num_experts=4)
    for i, (_, layer) in enumerate(pad_layers(model)):
        with torch.no_grad():
            layer.router.w_gate.normal_()
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
        layer.set_mask(random_mask(layer.kernel_shape, 0.5, seed=i))
    return padnet.deploy(model)


def test_round_trip_moe_with_model_factory(tmp_path):
    model = deployed_moe_encoder()
    padnet.save(model, tmp_path / "moe.safetensors")
    with pytest.raises(ModelFileError, match="records no architecture.*model_factory"):
        padnet.load(tmp_path / "moe.safetensors")
    loaded = padnet.load(tmp_path / "moe.safetensors", model_factory=TinyEncoder)
    assert isinstance(loaded.layers[0].down, DeployedPADMoELinear)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), atol=0, rtol=0)


def test_registered_arch_round_trip(tmp_path):
    @padnet.register_arch("tests.tiny_encoder")
    def _build():
        return TinyEncoder()

    model = convert(padnet.build_arch("tests.tiny_encoder"), dynamic="moe", num_experts=2, top_k=1)
    padnet.save(model, tmp_path / "t.safetensors")
    loaded = padnet.load(tmp_path / "t.safetensors")
    x = torch.randn(3, 16)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="'nope' is not registered; known: .*tests.tiny_encoder"):
        padnet.build_arch("nope")


def test_truncated_file_is_refused(tmp_path):
    path = padnet.save(pad_resnet(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    for cut in (len(data) - 100, 200, 5):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=rf"cut{cut}\.safetensors: .*truncated"):
            padnet.load(bad)


def test_corrupted_header_is_refused(tmp_path):
    path = padnet.save(pad_resnet(), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"m\.safetensors: corrupted"):
        padnet.load(path)


def test_file_for_another_architecture_is_refused(tmp_path):
    path = padnet.save(pad_resnet(), tmp_path / "r18.safetensors")
    # different layers converted
    with pytest.raises(ModelFileError, match=r"r18\.safetensors: the file is for another architecture"):
        padnet.load(path, model_factory=lambda: torchvision.models.resnet34(num_classes=10))
    # same converted layers, different head
    with pytest.raises(ModelFileError, match=r"r18\.safetensors: the weights do not match.*fc\.weight"):
        padnet.load(path, model_factory=lambda: torchvision.models.resnet18(num_classes=7))


def test_record_with_an_unknown_arch_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    path = padnet.save(model, tmp_path / "p.safetensors", arch={"name": "torchvision.no_such_net", "kwargs": {}})
    with pytest.raises(ModelFileError, match="cannot rebuild architecture"):
        padnet.load(path)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.path, "w"))


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    for name, writer in [
        ("plain.pt", lambda f: pickle.dump(_Marker(str(marker)), f, protocol=2)),
        ("torchsave.pt", lambda f: torch.save({"x": _Marker(str(marker))}, f)),
    ]:
        path = tmp_path / name
        with open(path, "wb") as f:
            writer(f)
        with pytest.raises(ModelFileError, match=rf"{name}: this is a pickle"):
            padnet.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_header_length_that_begins_like_a_pickle_or_zip_loads(tmp_path, first_bytes):
    # A header length of 128 mod 256 starts the file with 0x80, like a pickle (1 valid file in 256);
    # 0x4B50 mod 65536 starts it with "PK", like torch.save's zip. Pad the record until it does.
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = pad_resnet()
    path = padnet.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    # safetensors pads the header to a multiple of 8, so adding a multiple of 8 spaces to the record
    # adds exactly that to the length.
    length = int.from_bytes(path.read_bytes()[:8], "little")
    want = int.from_bytes(first_bytes, "little")
    pad = (want - length) % 2 ** (8 * len(first_bytes))
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, str(odd), metadata=dict(metadata, padnet=metadata["padnet"] + " " * pad))
    assert odd.read_bytes()[: len(first_bytes)] == first_bytes
    loaded = padnet.load(odd)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), atol=0, rtol=0)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="without padnet metadata"):
        padnet.load(path)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    padnet.save(nn.Linear(2, 2), path, arch="tests.none")
    before = path.read_bytes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        padnet.save(nn.Linear(3, 3), path, arch="tests.none")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_header_is_plain_json(tmp_path):
    path = padnet.save(pad_resnet(), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    record = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["padnet"])
    assert record["arch"] == {"name": "torchvision.resnet18", "kwargs": {"num_classes": 10}}
    assert record["padnet_config"]["include"] == INCLUDE
    assert record["padnet_config"]["lambda_mode"] == "both"


def test_save_refuses_bad_arch_and_unconverted_padnet_layers(tmp_path):
    with pytest.raises(ValueError, match="arch must be"):
        padnet.save(nn.Linear(2, 2), tmp_path / "x.safetensors", arch=3)
    with pytest.raises(ValueError, match="padnet_config"):
        padnet.save(nn.Sequential(PADConv2d(2, 2, 1)), tmp_path / "x.safetensors")
