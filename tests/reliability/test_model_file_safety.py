"""Model files and checkpoints never run or fetch code, never allocate more than they hold, and any
malformed one raises ModelFileError naming the file (issue 14). "No code ran" and "nothing was
fetched" are shown with marker files; memory bounds with resource.setrlimit in a subprocess."""

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import padnet
from padnet.errors import ModelFileError
from padnet.train.run_files import load_checkpoint
from tests.helpers import SAFETY_TIMEOUT_S, child_env


def write_model_file(path, record, tensors=None):
    """A safetensors file whose padnet record is ``record`` (a dict, or raw JSON text)."""
    full = record if isinstance(record, str) else json.dumps(
        {"format": "padnet", "format_version": 1, "padnet_config": None, "form": "plain", "compacted": [],
         "temperatures": {}, **record})
    save_file(tensors if tensors is not None else {"w": torch.zeros(2)}, str(path), metadata={"padnet": full})
    return path


def write_evil_model_dir(directory, marker):
    """A transformers model directory whose config.json points auto_map at a module that creates
    ``marker`` when imported."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    BertForSequenceClassification(config).save_pretrained(directory)
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertConfig as EvilConfig\n" \
           "from transformers import BertForSequenceClassification as EvilModel\n"
    (directory / "evil.py").write_text(code)
    raw = json.loads((directory / "config.json").read_text())
    raw["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (directory / "config.json").write_text(json.dumps(raw))


@pytest.mark.slow
def test_hf_record_with_remote_code_never_runs_it_even_when_answered_yes(tmp_path):
    pytest.importorskip("transformers")
    marker = tmp_path / "marker"
    write_evil_model_dir(tmp_path / "evil", marker)
    model_file = write_model_file(tmp_path / "m.safetensors", {"arch": {
        "name": "transformers.sequence_classification",
        "kwargs": {"name_or_path": str(tmp_path / "evil"), "num_labels": 2}}})
    # padnet.load of the file, and the GLUE model loader a checkpoint's glue.model reaches, with "y" on stdin
    script = textwrap.dedent(f"""
        import padnet
        from padnet.models.transformers_models import load_sequence_classifier
        try:
            padnet.load({str(model_file)!r})
        except padnet.ModelFileError as err:
            print("load: ModelFileError", err)
        try:
            load_sequence_classifier({str(tmp_path / 'evil')!r}, num_labels=2)
            print("glue: loaded")
        except Exception as err:
            print("glue:", type(err).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], input="y\ny\ny\n", capture_output=True, text=True,
                         env=child_env(HF_HUB_OFFLINE="1"), timeout=SAFETY_TIMEOUT_S)
    assert "load: ModelFileError" in out.stdout and "never loads a model by a name or path" in out.stdout, out
    assert not marker.exists(), out


def test_hf_record_naming_a_hub_model_is_refused_without_network(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("padnet.load contacted the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    path = write_model_file(tmp_path / "m.safetensors", {"arch": {
        "name": "transformers.sequence_classification", "kwargs": {"name_or_path": "someone/some-model"}}})
    with pytest.raises(ModelFileError, match=rf"{path}: .*never loads a model by a name or path"):
        padnet.load(path)


@pytest.mark.parametrize("config_update, pattern", [
    ({"auto_map": {"AutoModelForSequenceClassification": "evil.Model"}}, "sets auto_map"),
    ({"model_type": "not-a-model"}, "is not a model type built into transformers"),
    ({"model_type": ["bert"]}, "is not a model type built into transformers"),  # was: unhashable type
    ({"num_hidden_layers": 10**6}, r"num_hidden_layers=1000000 is larger than padnet allows"),
])
def test_hf_stored_config_is_checked(tmp_path, config_update, pattern):
    pytest.importorskip("transformers")
    from transformers import BertConfig

    from padnet.models.transformers_models import config_record

    config = config_record(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=16, max_position_embeddings=16)) | config_update
    path = write_model_file(tmp_path / "m.safetensors", {"arch": {
        "name": "transformers.sequence_classification", "kwargs": {"config": config}}})
    with pytest.raises(ModelFileError, match=pattern):
        padnet.load(path)


@pytest.mark.parametrize("arch, pattern", [
    # refused on meta: its 76 MB of weights are not in a 344-byte file (the backbone's weights argument is
    # forced off before that either way)
    ({"name": "torchvision.fasterrcnn_mobilenet_v3_large_320_fpn", "kwargs": {"num_classes": 3}},
     "would allocate 75,936,984 bytes"),
    ({"name": "padnet.resnet18", "kwargs": {"num_classes": 10, "in_channels": 3, "small_input": True,
                                            "weights": "IMAGENET1K_V1"}}, "weights is not allowed"),
    ({"name": "torchvision.resnet18", "kwargs": {"weights": "IMAGENET1K_V1"}}, "weights is not allowed"),
    ({"name": "torchvision.resnet18", "kwargs": {"pretrained": True}}, "pretrained is not allowed"),
])
def test_model_files_never_download_weights(tmp_path, monkeypatch, arch, pattern):
    import torchvision.models._api as api

    marker = tmp_path / "downloaded"

    def download(self, *args, **kwargs):
        marker.write_text(self.url)
        raise OSError("offline")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", download)
    path = write_model_file(tmp_path / "m.safetensors", {"arch": arch})
    with pytest.raises(ModelFileError, match=pattern):
        padnet.load(path)
    assert not marker.exists()


SMALL = {"num_classes": 10, "in_channels": 1, "small_input": True, "width": 4, "layers": [1]}
PAD = {"dynamic": "conv", "pad": True, "num_kernels": 2}


def _record(**kwargs):
    return {"arch": {"name": "padnet.small_resnet", "kwargs": {**SMALL, **kwargs}}}


BOMBS = {
    "num_classes-400000": _record(num_classes=400_000),
    "num_classes-90000-resnet50": {"arch": {"name": "torchvision.resnet50", "kwargs": {"num_classes": 90_000}}},
    "layers-10**6": _record(layers=[10**6]),
    "width-10**6": _record(width=10**6),
    "num_kernels-10**7": {**_record(), "padnet_config": {**PAD, "num_kernels": 10**7}, "form": "training"},
    "num_experts-10**7": {**_record(), "padnet_config": {"dynamic": "moe", "num_experts": 10**7}, "form": "training"},
}


@pytest.mark.slow
def test_records_cannot_allocate_more_than_the_file_holds(tmp_path):
    """Each file is a few KB; loaded under a 1.5 GB address-space limit (above what is mapped after import)
    each is refused with ModelFileError before the model is built for real."""
    files = {name: str(write_model_file(tmp_path / f"{name}.safetensors", record)) for name, record in BOMBS.items()}
    script = textwrap.dedent(f"""
        import json, resource
        import padnet
        status = open("/proc/self/status").read()
        mapped = int(next(l for l in status.splitlines() if l.startswith("VmSize:")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 1536 * 2**20, resource.RLIM_INFINITY))
        out = {{}}
        for name, path in {files!r}.items():
            try:
                padnet.load(path)
                out[name] = "loaded"
            except padnet.ModelFileError as err:
                out[name] = "ModelFileError: " + str(err)
            except BaseException as err:
                out[name] = type(err).__name__ + ": " + str(err)[:200]
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(),
                          timeout=SAFETY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in BOMBS:
        assert outcome[name].startswith(f"ModelFileError: {files[name]}: "), (name, outcome[name])


def _deep(n):
    return "[" * n + "]" * n


# Each of these raised something other than ModelFileError before issue 14 (TypeError, AttributeError,
# KeyError, RecursionError); records the old code already refused with ModelFileError are not repeated here.
MALFORMED = {
    "record-not-object": "[1, 2]",
    "record-deeply-nested": '{"format": "padnet", "format_version": 1, "arch": {"name": "x", "kwargs": {"a": '
                            + _deep(100_000) + "}}}",
    "arch-name-int": {"arch": {"name": 5, "kwargs": {}}},
    "padnet-config-list": {**_record(), "padnet_config": [1]},
    "padnet-config-converted-int": {**_record(), "padnet_config": {**PAD, "converted": 5}, "form": "training"},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_records_raise_only_model_file_error(tmp_path, case):
    path = write_model_file(tmp_path / "m.safetensors", MALFORMED[case])
    with pytest.raises(ModelFileError) as err:
        padnet.load(path)
    assert str(err.value).startswith(f"{path}: ") and len(str(err.value)) < 2500


def test_bad_tensor_entries_in_the_header_are_model_file_errors(tmp_path):
    path = write_model_file(tmp_path / "m.safetensors", _record())
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n]
    assert b'"shape":[2]' in header
    path.write_bytes(data[:8] + header.replace(b'"shape":[2]', b'"shape":"x"') + data[8 + n:])
    with pytest.raises(ModelFileError, match=rf"{path}: corrupted safetensors header: invalid JSON in header: "
                                             r'invalid type: string "x", expected a sequence at line 1 column \d+'):
        padnet.load(path)


def _rewrite_header(path, change):
    """Rewrite ``path``'s safetensors header (a dict) with ``change``; the data stays as it was."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


@pytest.mark.parametrize("change, message", [
    (lambda h: h["w"].update(shape=[2**40, 2**40]), "corrupted safetensors header: overflow computing buffer size"),
    (lambda h: h["w"].update(data_offsets=[0, 2**60]), "corrupted safetensors header: invalid shape, data type, "
                                                       "or offset for tensor"),
    (lambda h: h["w"].update(data_offsets=[8, 0]), "corrupted safetensors header: invalid offset for tensor `w`"),
    (lambda h: h["w"].update(dtype="F128"), "corrupted safetensors header: invalid JSON in header: unknown variant"),
    (lambda h: h["w"].update(shape=[1] * 8 + [2]), "tensor 'w' has 9 dimensions; padnet reads at most 8"),
])
def test_hostile_tensor_entries_are_refused_before_any_tensor_is_read(tmp_path, change, message):
    path = write_model_file(tmp_path / "m.safetensors", _record())
    _rewrite_header(path, change)
    with pytest.raises(ModelFileError, match=re.escape(f"{path}: {message}")):
        padnet.load(path)


def test_bytes_after_the_tensor_data_are_refused(tmp_path):
    path = write_model_file(tmp_path / "m.safetensors", _record())
    path.write_bytes(path.read_bytes() + bytes(16))
    with pytest.raises(ModelFileError, match=re.escape(f"{path}: truncated, or bytes added: the tensors' data "
                                                       "offsets do not end where the file ends")):
        padnet.load(path)


def _deflate(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_compressed_checkpoint_is_refused_before_it_expands(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"format": "padnet.train.checkpoint", "w": torch.zeros(2**22)}, plain)  # 16 MiB of zeros
    bomb = tmp_path / "checkpoint.pt"
    _deflate(plain, bomb)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match=rf"{bomb}: not a loadable padnet checkpoint \(entry .* is compressed"):
        load_checkpoint(bomb)


def test_checkpoint_entry_larger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "padnet.train.checkpoint", "w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    os.truncate(path, len(data) - 3000)  # cut into the tensor data: the zip directory is gone
    with pytest.raises(ModelFileError, match=rf"{path}: not a loadable padnet checkpoint"):
        load_checkpoint(path)


def _claim_size(path, entry_suffix, size, header_offset=None):
    """Rewrite ``path``'s zip central directory so the entry ending in ``entry_suffix`` claims ``size``
    bytes (compressed and uncompressed) and, if given, starts at ``header_offset``. The file keeps its
    length and its directory: only the numbers lie."""
    data = bytearray(path.read_bytes())
    start = 0
    while True:
        start = data.index(b"PK\x01\x02", start)
        name_len = struct.unpack_from("<H", data, start + 28)[0]
        name = bytes(data[start + 46:start + 46 + name_len]).decode()
        if name.endswith(entry_suffix):
            break
        start += 4
    struct.pack_into("<II", data, start + 20, size, size)
    if header_offset is not None:
        struct.pack_into("<I", data, start + 42, header_offset)
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:  # still a well-formed zip directory, with the lie in it
        info = next(i for i in archive.infolist() if i.filename.endswith(entry_suffix))
    assert info.file_size == size
    return info.filename


@pytest.mark.parametrize("case", ["larger-than-the-file", "ends-past-the-file"])
def test_checkpoint_entry_claiming_more_than_the_file_holds_is_refused(tmp_path, case):
    """The central directory of an intact file says an entry is bigger than the whole file, or that it
    ends past the file's end; refused by name before torch reads it."""
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "padnet.train.checkpoint", "w": torch.zeros(1000)}, path)
    size = path.stat().st_size
    if case == "larger-than-the-file":
        name = _claim_size(path, "data/0", 2**30)
        claimed = 2**30
    else:
        name = _claim_size(path, "data/0", size - 64, header_offset=128)
        claimed = size - 64
    assert path.stat().st_size == size
    with pytest.raises(ModelFileError, match=rf"{path}: not a loadable padnet checkpoint \(entry '{name}' claims "
                                             rf"{claimed:,} bytes, beyond the file's {size:,}\)"):
        load_checkpoint(path)


def _gpt_neo_record(positions):
    from transformers import GPTNeoConfig

    from padnet.models.transformers_models import config_record

    config = GPTNeoConfig(vocab_size=30, hidden_size=8, num_layers=2, num_heads=2, max_position_embeddings=positions,
                          attention_types=[[["global", "local"], 1]], architectures=["GPTNeoForCausalLM"],
                          bos_token_id=0, eos_token_id=0)
    return {"arch": {"name": "transformers.auto", "kwargs": {"config": config_record(config)}}}


@pytest.mark.parametrize("positions", [20_000, 40_000])
def test_a_config_sizing_non_persistent_buffers_is_refused_on_meta(tmp_path, positions):
    """GPT-Neo sizes a causal mask of positions^2 per layer (non-persistent, so not in the file): a file of a
    few KB would build 0.8 GB (20000) or 3.2 GB (40000). Refused before anything is allocated."""
    pytest.importorskip("transformers")
    path = write_model_file(tmp_path / "neo.safetensors", _gpt_neo_record(positions))
    with pytest.raises(ModelFileError, match=rf"{path}: .* would allocate [0-9,]+ bytes of parameters and buffers; "
                                             r"a file of [0-9,]+ bytes may ask for at most"):
        padnet.load(path)


def test_from_pretrained_checks_config_json_on_meta_before_building(tmp_path):
    """config.json sizes every tensor: vocab_size 10^6 x hidden 60000 would be 240 GB, and a config
    transformers rejects is one line naming the file, not its raw error."""
    transformers = pytest.importorskip("transformers")
    from padnet import hf

    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16))
    hf.save_pretrained(model, tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"vocab_size": 1_000_000, "hidden_size": 60_000}))
    with pytest.raises(ModelFileError, match=r"config.json's model would allocate [0-9,]+ bytes"):
        hf.from_pretrained(tmp_path / "m")
    config_path.write_text(json.dumps(config | {"hidden_size": 7}))  # not a multiple of the heads
    with pytest.raises(ModelFileError, match=r"config.json: cannot build the model it describes \("):
        hf.from_pretrained(tmp_path / "m")
