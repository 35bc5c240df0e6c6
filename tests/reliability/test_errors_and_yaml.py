"""One error family and one clear line (issue 14): the CLI reports every PadnetError, OSError and
UnicodeDecodeError in one line naming the file (and line), exit code 2, never a traceback; Ctrl-C exits
130; NaN in evaluation stops the run. Configs are read by a strict YAML loader."""

import errno
import json
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ruamel.yaml import YAMLError

import padnet
from padnet import errors, strict_yaml
from padnet.cli import main
from padnet.data import Digits
from padnet.errors import ConfigError, NonFiniteLossError
from padnet.models import build
from padnet.strict_yaml import dump_yaml, load_yaml, read_yaml
from padnet.train import TaskParts, Trainer, config_from_dict, register_task
from padnet.train.config import load_config
from padnet.train.vision import loss_fn
from tests.helpers import TINY_RUN, write_config


def test_one_error_family_that_old_callers_still_catch():
    from padnet.data.folder import ImageFileError
    from padnet.data.idx import IDXError
    from padnet.errors import ModelFileError, PartitionError
    from padnet.train import ExportCheckError, RunDirError

    for cls, old_base in [(errors.ConfigError, ValueError), (errors.DataError, ValueError), (IDXError, ValueError),
                          (ImageFileError, ValueError), (ModelFileError, ValueError), (PartitionError, RuntimeError),
                          (RunDirError, RuntimeError), (NonFiniteLossError, RuntimeError),
                          (ExportCheckError, RuntimeError), (errors.RunError, RuntimeError)]:
        assert issubclass(cls, errors.PadnetError) and issubclass(cls, old_base), cls
    assert ConfigError is errors.ConfigError and ModelFileError is padnet.ModelFileError
    assert PartitionError is padnet.PartitionError is errors.PartitionError


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_config_not_utf8_is_one_line_with_file_and_line(tmp_path, capsys, encoding):
    path = tmp_path / "c.yaml"
    path.write_bytes("epochs: 1\n# café\nseed: 0\n".encode(encoding))
    code, err = _cli_error(capsys, ["train", "--config", str(path)])
    line = 2 if encoding == "latin-1" else 1
    assert code == 2 and f"{path}:{line}: not UTF-8 text" in err and "Traceback" not in err, err


def test_partition_error_is_one_line(tmp_path, capsys):
    register_task("reliability_zero_loss", lambda config: TaskParts(
        model=build("small_resnet", 10, 1, True, width=4, layers=[1]),
        train_dataset=torch.utils.data.Subset(Digits(True), range(48)),
        eval_dataset=torch.utils.data.Subset(Digits(False), range(60)),
        loss_fn=lambda model, batch: 0 * loss_fn(model, batch) + math.nan, evaluate=lambda m, b: {"accuracy": 0.0}))
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({**{k: v for k, v in TINY_RUN.items() if k not in ("data", "model")},
                                "task": "reliability_zero_loss", "run_dir": str(tmp_path / "run")}))
    code, err = _cli_error(capsys, ["train", "--config", str(path)])
    assert code == 2 and "padnet train: " in err and "Traceback" not in err
    assert err.splitlines()[-1].startswith("padnet train: ") and "cannot score the entries" in err.splitlines()[-1]


def test_read_only_run_dir_is_one_line_naming_the_file(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        code, err = _cli_error(capsys, ["train", "--config", str(write_config(tmp_path, epochs=1)),
                                        "--set", f"run_dir={run_dir}"])
    finally:
        run_dir.chmod(0o755)
    assert code == 2 and str(run_dir) in err and "Permission denied" in err and len(err.splitlines()) == 1


def test_run_dir_under_a_file_is_one_line_naming_the_path(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _cli_error(capsys, ["train", "--config", str(write_config(tmp_path, epochs=1)),
                                    "--set", f"run_dir={tmp_path / 'file' / 'run'}"])
    assert code == 2 and str(tmp_path / "file") in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, err = _cli_error(capsys, ["train", "--config", str(write_config(tmp_path, epochs=1)),
                                    "--set", f"run_dir={tmp_path / 'run'}"])
    assert code == 2 and "No space left on device" in err and str(tmp_path / "run") in err, err
    assert "Traceback" not in err


def test_ctrl_c_exits_130_with_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train", interrupted)
    code, err = _cli_error(capsys, ["train", "--config", str(write_config(tmp_path, epochs=1)),
                                    "--set", f"run_dir={tmp_path / 'run'}"])
    assert code == 130 and err.endswith("interrupted; run the same command to resume")


def test_nan_in_evaluation_stops_the_run(tmp_path):
    register_task("reliability_nan_eval", lambda config: TaskParts(
        model=build("small_resnet", 10, 1, True, width=4, layers=[1]),
        train_dataset=torch.utils.data.Subset(Digits(True), range(48)),
        eval_dataset=torch.utils.data.Subset(Digits(False), range(60)),
        loss_fn=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
        evaluate=lambda m, b: {"accuracy": 0.5, "loss": math.nan}))
    raw = {**{k: v for k, v in TINY_RUN.items() if k not in ("data", "model", "dynamic", "partition")},
           "task": "reliability_nan_eval", "epochs": 1, "run_dir": str(tmp_path / "run")}
    with pytest.raises(NonFiniteLossError, match=r"non-finite evaluation metrics \(loss=nan\)"):
        Trainer(config_from_dict(raw)).train()
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------------------ YAML
YAML_CASES = {
    "duplicate-section": ("optim:\n  lr: 0.1\nepochs: 1\noptim:\n  momentum: 0.5\n",
                          'line 4: found duplicate key "optim" (it would replace the first); keep one'),
    "duplicate-nested": ("optim:\n  lr: 0.1\n  lr: 0.2\n", 'line 3: found duplicate key "lr"'),
    "sexagesimal": ("epochs: 1:30\n", "epochs='1:30' must be a valid integer"),
    "yaml-1.1-bool": ("progress: yes\n", "progress='yes' must be a valid boolean"),
    "explicit-int-tag": ("epochs: !!int abc\n", "line 1: 'abc' is not a valid int"),
    "explicit-bool-tag": ("progress: !!bool maybe\n", "line 1: 'maybe' is not a valid bool"),
    # ruamel makes a sequence key a tuple; one holding a mapping stayed unhashable and raised a bare TypeError
    "key-holding-a-mapping": ("? - : \n", "line 1: found unhashable key (a mapping or list inside it)"),
    "merged-key-holding-a-mapping": ("<<: {a: 1}\n? [{b: 1}]\n: 2\n", "a value that cannot be built"),
    "object-tag": ("a: !!python/object/apply:os.system [ls]\n", "could not determine a constructor for the tag"),
    "alias-bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        "line 5: more than 20,000 values (keys, values and items, every alias expanded)"),
    "many-aliases": ("a: &a 1\nb: [" + ", ".join(["*a"] * 150) + "]\n", "more than 100 aliases"),
    "recursive-alias": ("a: &a [*a]\n", "a recursive alias"),
    "long-value": ("name: [" + ", ".join(["'" + "x" * 1000 + "'"] * 300) + "]\n", "more characters)"),
    # YAML composers nest recursively: 5000 levels once ended in a RecursionError traceback.
    "deep-flow": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
    "deep-block": ("".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n",
                   "nested more than 64 levels deep"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_strict_yaml(tmp_path, case):
    text, fragment = YAML_CASES[case]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert fragment in message, message[:3000]
    assert len(message) < 5000  # a 340-byte alias bomb once produced a 312 MB message


def test_yaml_12_numbers_still_read(tmp_path):
    path = write_config(tmp_path, epochs=1)
    path.write_text(path.read_text() + "seed: 010\nlog_every: 0x10\n")
    config = load_config(path, ["optim.lr=1e-3", "optim.weight_decay=5.0e-4"])
    assert config.seed == 10 and config.optim.lr == 0.001 and config.optim.weight_decay == 0.0005
    assert config.log_every == 16  # YAML 1.2's hexadecimal form


def test_written_yaml_reads_back_as_it_was():
    """PyYAML (YAML 1.1) writes the strings 1e5 and 0o10 unquoted, which YAML 1.2 reads as numbers."""
    values = {"name": "1e5", "tag": "0o10", "flag": "yes", "when": "1:30", "lr": 1e-5, "inf": math.inf,
              "nested": {"z": [1, "010", None], "a": {}}, "text": "é\nx", "yes": True}
    text = dump_yaml(values)
    assert load_yaml(text) == values and list(load_yaml(text)) == list(values)  # the key order kept


# Pieces of YAML syntax (tags, anchors, aliases, merges, directives, flow and block collections, bad bytes):
# random sequences of them reach the scanner, parser, composer and constructor with what they do not expect.
YAML_PIECES = ["a", "b", ": ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "&y ", "*y", "!!int ",
               "!!float ", "!!bool ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ", "!!pairs ", "!!map ", "!foo ",
               "<<: ", "? ", "'", '"', "\\", "#", "%YAML 1.2\n", "---\n", "|\n", "1", "0x", ".5", "2001-12-14", "\t",
               "\x00", "\ufeff"]


@settings(max_examples=300, deadline=None, derandomize=True)  # the same examples on every run
@given(st.lists(st.sampled_from(YAML_PIECES), max_size=30))
def test_any_yaml_is_a_mapping_or_one_config_error(tmp_path_factory, pieces):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text("".join(pieces), encoding="utf-8", errors="surrogatepass")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing on the console either
        try:
            assert isinstance(read_yaml(path), dict)
        except ConfigError as err:
            assert len(err.problems) == 1 and str(path) in err.problems[0] and "\n" not in err.problems[0]


def test_a_document_past_the_size_bound_is_refused_where_it_passes_it(monkeypatch):
    """Not after the whole of it is read: a 1 MB file of one-line keys took ~16 s to parse here."""
    monkeypatch.setattr(strict_yaml, "MAX_NODES", 50)
    text = "".join(f"k{i}: {i}\n" for i in range(100))
    with pytest.raises(YAMLError) as err:
        load_yaml(text)
    assert strict_yaml.describe(err.value).startswith("line 26: more than 50 values")  # 25 pairs are 50
    # Aliases count as the copies they expand to: 2 keys, [1, 2] (3 values), [[1, 2], [1, 2]] (7), the mapping.
    monkeypatch.setattr(strict_yaml, "MAX_NODES", 13)
    assert load_yaml("a: &a [1, 2]\nb: [*a, *a]\n") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    monkeypatch.setattr(strict_yaml, "MAX_NODES", 12)
    with pytest.raises(YAMLError):
        load_yaml("a: &a [1, 2]\nb: [*a, *a]\n")


def test_a_reused_anchor_is_valid_yaml_and_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_yaml("a: &x 1\nb: &x 2\nc: *x\n") == {"a": 1, "b": 2, "c": 2}  # an alias names the latest
