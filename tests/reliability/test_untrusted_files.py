"""Checkpoints and model files never load through unrestricted pickle: a crafted file that would create
a marker file if its pickle ran is refused by padnet.load, by the trainer's resume and by `padnet eval`."""

import json
import pickle
import re
import struct

import pytest
import torch

import padnet
from padnet.cli import main
from padnet.errors import ModelFileError
from padnet.train import Trainer, config_from_dict
from padnet.train.run_files import load_checkpoint
from tests.helpers import TINY_RUN


class Boobytrap:
    """Unpickling this creates ``path``: the file exists afterwards iff the pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_crafted(kind, path, marker):
    payload = {"format": "padnet.train.checkpoint", "model": Boobytrap(marker)}
    if kind == "pickle-protocol-0":  # text pickle: does not start with the 0x80 opcode
        path.write_bytes(pickle.dumps(payload, protocol=0))
    elif kind == "pickle-protocol-4":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    elif kind == "torch-zip":
        torch.save(payload, path)
    elif kind == "torch-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    return path


KINDS = ["pickle-protocol-0", "pickle-protocol-4", "torch-zip", "torch-legacy"]


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_pickle_is_never_run(tmp_path, kind, capsys):
    marker = tmp_path / "marker"
    # The trap is live: plain pickle.load would create the marker (checked on a copy).
    probe = write_crafted(kind, tmp_path / "probe.pkl", tmp_path / "probe-marker")
    if kind.startswith("pickle"):
        pickle.loads(probe.read_bytes())
    else:
        torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-marker").exists()

    # padnet.load (model files)
    model_file = write_crafted(kind, tmp_path / "model.safetensors", marker)
    with pytest.raises(ModelFileError, match=str(model_file)):
        padnet.load(model_file)

    # the trainer's checkpoint loader, and resume from a run directory holding the file
    (tmp_path / "run").mkdir()
    checkpoint = write_crafted(kind, tmp_path / "run" / "checkpoint.pt", marker)
    with pytest.raises(ValueError, match=rf"{checkpoint}: not a loadable padnet checkpoint"):
        load_checkpoint(checkpoint)
    config = config_from_dict({**TINY_RUN, "run_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match=rf"{checkpoint}: not a loadable padnet checkpoint"):
        Trainer(config).train()

    # padnet eval --checkpoint FILE and --run DIR
    # (one line naming the file, exit code 2, no traceback)
    for args in (["--checkpoint", str(checkpoint)], ["--run", str(tmp_path / "run")]):
        assert main(["eval", *args]) == 2
        err = capsys.readouterr().err
        assert f"{checkpoint}: not a loadable padnet checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_model_file_metadata_cannot_name_arbitrary_code(tmp_path):
    """The JSON record names a builder; only registered ones run, and never with downloaded weights."""
    from safetensors.torch import save_file

    cases = {
        "os.system": {"name": "os.system", "kwargs": {"command": f"touch {tmp_path / 'marker'}"}},
        "builtins.exec": {"name": "builtins.exec", "kwargs": {}},
        "weights-download": {"name": "torchvision.resnet18", "kwargs": {"weights": "IMAGENET1K_V1"}},
    }
    for name, arch in cases.items():
        record = {"format": "padnet", "format_version": 1, "arch": arch, "padnet_config": None, "form": "plain",
                  "compacted": [], "temperatures": {}}
        path = tmp_path / f"{name}.safetensors"
        save_file({"w": torch.zeros(2)}, str(path), metadata={"padnet": json.dumps(record)})
        with pytest.raises(ModelFileError, match=rf"{path}: cannot rebuild architecture"):
            padnet.load(path)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("content, pattern", [
    (lambda: torch.zeros(3), r"not a padnet checkpoint: it holds a Tensor"),
    (lambda: [1, 2], r"not a padnet checkpoint: it holds a list"),
    (lambda: {"format": "padnet.train.checkpoint", "epoch": 1},
     r"damaged padnet training checkpoint: missing global_step"),
    (lambda: {"format": "something-else"}, r"not a padnet training checkpoint \(format='something-else'\)"),
])
def test_wrong_checkpoint_contents_are_named(tmp_path, content, pattern, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save(content(), path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(rf"{path}: {pattern}", err) and len(err.splitlines()) == 1, err


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "padnet.train.checkpoint", "w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"{path}: not a loadable padnet checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage, pattern", [
    ("truncated", r"truncated"),
    ("bad-header-length", r"not a safetensors file or truncated: header length"),
    ("json-garbage", r"corrupted safetensors header"),
])
def test_damaged_model_files_are_named(tmp_path, damage, pattern):
    model = padnet.convert(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Conv2d(4, 4, 3)),
                           dynamic="conv", pad=True, num_kernels=2)
    path = padnet.save(model, tmp_path / "m.safetensors", arch={"name": "none", "kwargs": {}})
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    if damage == "truncated":
        data = data[:-10]
    elif damage == "bad-header-length":
        data = struct.pack("<Q", len(data) * 2) + data[8:]
    else:
        data = data[:8] + b"{" * header_len + data[8 + header_len:]
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=rf"{path}: {pattern}"):
        padnet.load(path)


# ------------------------------------------------------------------------------ the predict record
IMAGE_INPUT = {"kind": "image", "channels": 1, "image_size": 8, "resize": 8, "mean": [0.5], "std": [0.25]}


def _model_with_predict(tmp_path, predict):
    from safetensors.torch import save_file

    model = padnet.build_arch("padnet.small_resnet", num_classes=2, in_channels=1, width=4, layers=[1])
    record = {"format": "padnet", "format_version": 1, "arch": model.padnet_arch, "padnet_config": None,
              "form": "plain", "compacted": [], "temperatures": {}, "predict": predict}
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"padnet": json.dumps(record)})
    return path


@pytest.mark.parametrize("change, message", [
    ({"input": IMAGE_INPUT | {"mean": [], "std": [1e-300]}},
     "predict.input.mean=[] and std=[1e-300] must be two lists of one value per channel (1), or both empty"),
    ({"input": IMAGE_INPUT | {"std": [1e-300]}}, "predict.input.std=[1e-300] must lie between 1e-06 and 1e+06"),
    ({"input": IMAGE_INPUT | {"mean": [float("nan")]}}, "predict.input.mean=[nan] must hold finite numbers"),
    ({"input": IMAGE_INPUT | {"image_size": 10**9}}, "predict.input.image_size=1000000000 must be an integer from 1"),
    ({"input": {"kind": "audio"}}, "predict.input must be a mapping whose kind is 'image' or 'text'"),
    ({"input": {"kind": "text", "tokenizer": ["x"]}}, "predict.input.tokenizer=['x'] must be a tokenizer name"),
    ({"label_names": "no"}, "predict.label_names='no' must be a non-empty list of distinct strings"),
    ({"label_names": ["a", "a"]}, "predict.label_names=['a', 'a'] must be a non-empty list of distinct strings"),
    ({"problem": "ranking"}, "predict.problem='ranking' must be 'classification' or 'regression'"),
])
def test_a_malformed_predict_record_is_refused_at_load_naming_file_and_field(tmp_path, change, message):
    path = _model_with_predict(tmp_path, {"task": "image_classification", "problem": "classification",
                                          "label_names": ["a", "b"], "input": IMAGE_INPUT} | change)
    with pytest.raises(ModelFileError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        padnet.load(path)


def test_label_names_that_do_not_match_the_outputs_are_refused_not_misread(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 128).save(tmp_path / "grey.png")
    for names in (["only"], ["a", "b", "c"]):  # the model has 2 outputs
        path = _model_with_predict(tmp_path, {"task": "image_classification", "problem": "classification",
                                              "label_names": names, "input": IMAGE_INPUT})
        with pytest.raises(ModelFileError, match=f"predict.label_names has {len(names)} names but the model has "
                                                 "2 outputs"):
            padnet.predict(path, [tmp_path / "grey.png"])
    path = _model_with_predict(tmp_path, {"task": "image_classification", "problem": "classification",
                                          "label_names": ["cat", "dog"], "input": IMAGE_INPUT})
    assert padnet.predict(path, [tmp_path / "grey.png"])[0]["label"] in ("cat", "dog")


def test_predict_refuses_bombs_fifos_and_devices_in_one_line(tmp_path, capsys):
    import os

    from PIL import Image

    path = _model_with_predict(tmp_path, {"task": "image_classification", "problem": "classification",
                                          "label_names": ["a", "b"], "input": IMAGE_INPUT})
    Image.new("1", (20_000, 20_000)).save(tmp_path / "bomb.png")  # 400M pixels in a few hundred KB
    os.mkfifo(tmp_path / "pipe.png")
    for target, message in ((tmp_path / "bomb.png", "bomb.png: cannot read this image (DecompressionBombError"),
                            (tmp_path / "pipe.png", "pipe.png: not a regular file (a FIFO or device)"),
                            ("/dev/zero", "/dev/zero: not a regular file (a FIFO or device)")):
        assert main(["predict", "--quiet", "--model", str(path), str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
