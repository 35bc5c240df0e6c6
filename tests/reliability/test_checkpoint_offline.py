"""padnet eval / export on a checkpoint whose config names a Hugging Face hub model never contact the
hub: the model comes from the local cache (local_files_only=True) or the command fails with one line
naming the model and how to get it (issue 14)."""

import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from padnet.cli import main
from padnet.train.config import config_from_dict
from tests.helpers import SAFETY_TIMEOUT_S, child_env

# Subprocesses / end-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

pytest.importorskip("transformers")

FAKE_MODEL = "padnet-test-org/no-such-model-3f9a"


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:2] or args[:1])
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return attempts


def glue_checkpoint(tmp_path, model_name):
    """A training checkpoint (as the trainer writes it) whose stored config names ``model_name``."""
    root = tmp_path / "glue" / "RTE"
    root.mkdir(parents=True)
    for split in ("train", "dev"):
        rows = ["index\tsentence1\tsentence2\tlabel"] + [
            f"{i}\ta cat runs\ta dog runs\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(8)]
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    config = config_from_dict({
        "task": "glue", "run_dir": str(tmp_path / "run"), "batch_size": 4, "eval_batch_size": 4, "threads": 1,
        "progress": False, "tensorboard": False,
        "glue": {"task_name": "rte", "data_dir": str(tmp_path / "glue"), "model": model_name, "max_length": 8},
    })
    state = {"format": "padnet.train.checkpoint", "epoch": 1, "global_step": 2, "model": {}, "compacted": [],
             "optimizer": {}, "scheduler": {}, "rng": {}, "history": [], "config": config.to_dict()}
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save(state, path)
    return path


@pytest.mark.parametrize("command", ["eval", "export"])
def test_checkpoint_naming_a_hub_model_never_contacts_the_hub(tmp_path, no_network, capsys, command):
    checkpoint = glue_checkpoint(tmp_path, FAKE_MODEL)
    assert main([command, "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{checkpoint}: its config names the Hugging Face model glue.model='{FAKE_MODEL}'" in err, err
    assert "not in the local Hugging Face cache" in err and "--set glue.model=PATH" in err, err
    assert not no_network, f"padnet {command} tried to connect: {no_network}"


def test_a_cached_hub_model_still_loads_from_the_cache(tmp_path):
    """local_files_only: a hub model already in the local cache loads, offline, with nothing fetched."""
    from transformers import BertConfig, BertModel

    snapshot = tmp_path / "hub" / "models--padnet-test-org--tiny" / "snapshots" / ("0" * 40)
    BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=16)).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    script = textwrap.dedent("""
        import socket
        def refuse(*args, **kwargs):
            raise AssertionError("tried to connect")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from padnet.models.transformers_models import load_sequence_classifier, local_files_only
        with local_files_only("ckpt.pt"):
            model = load_sequence_classifier("padnet-test-org/tiny", num_labels=3)
        print("loaded", model.config.num_labels, model.config.hidden_size)
    """)
    env = {k: v for k, v in child_env(HF_HUB_CACHE=str(tmp_path / "hub")).items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=SAFETY_TIMEOUT_S)
    assert out.returncode == 0 and "loaded 3 8" in out.stdout, out.stderr[-3000:]
