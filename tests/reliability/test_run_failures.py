"""A run that goes wrong keeps its finished work: non-finite losses and weights, a full disk mid-save."""

import errno
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from padnet.cli import main
from padnet.data import Digits
from padnet.models import build
from padnet.train import TaskParts, Trainer, config_from_dict, register_task
from padnet.train.run_files import load_checkpoint, non_finite_tensors
from padnet.train.vision import evaluate
from tests.helpers import TINY_RUN, comparable_results, history_without_times, write_config

# End-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 3  # 48 training images, batch 16


def _poisoned_task(kind: str, at_step: int):
    """Digits with a loss that turns bad at training step ``at_step`` (1-based): ``nan-loss`` returns NaN;
    ``nan-grad`` returns a finite loss whose gradient is NaN, so the weights, not the loss, go bad."""

    def builder(config):
        calls = {"n": 0}

        def loss_fn(model, batch):
            images, targets = batch
            loss = F.cross_entropy(model(images), targets)
            if not model.training:
                return loss
            calls["n"] += 1
            if calls["n"] == at_step and kind == "nan-loss":
                return loss * math.nan
            if calls["n"] == at_step and kind == "nan-grad":
                p = next(model.parameters())
                return loss + 0 * torch.sqrt(p - p.detach()).sum()  # value: loss; gradient: 0 * inf = nan
            return loss

        return TaskParts(model=build("small_resnet", 10, 1, True, width=4, layers=[1]),
                         train_dataset=torch.utils.data.Subset(Digits(True), range(48)),
                         eval_dataset=torch.utils.data.Subset(Digits(False), range(60)),
                         loss_fn=loss_fn, evaluate=evaluate)

    return builder


# the last step of epoch 2: its loss is computed before the epoch-2 checkpoint
register_task("reliability_nan_loss", _poisoned_task("nan-loss", 2 * STEPS_PER_EPOCH))
register_task("reliability_nan_grad", _poisoned_task("nan-grad", 2 * STEPS_PER_EPOCH))
POISONED = {"epochs": 3, "batch_size": 16, "eval_batch_size": 60, "threads": 1, "progress": False,
            "tensorboard": False, "optim": {"lr": 0.05}}


@pytest.mark.parametrize("task", ["reliability_nan_loss", "reliability_nan_grad"])
def test_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, task, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({**POISONED, "task": task, "run_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "Lower optim.lr or set optim.grad_clip" in err
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1  # the epoch-1 checkpoint: never replaced by a bad state
    assert non_finite_tensors(state) == []
    assert not (tmp_path / "run" / "results.json").exists()
    # the kept checkpoint still evaluates
    assert main(["eval", "--run", str(tmp_path / "run")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["epoch"] == 1 and evaluated["accuracy"] == state["history"][0]["eval_accuracy"]


def test_huge_learning_rate_from_the_command_line_stops_with_a_message(tmp_path, capsys):
    config = write_config(tmp_path, dynamic={"mode": "static"})
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"run_dir={run_dir}", "--set", "optim.lr=1e30"]) == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "at epoch 1" in err and "No checkpoint was written yet" in err
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "results.json").exists()


def _fail_checkpoint_io(monkeypatch, where: str, on_save: int):
    """Make the ``on_save``-th checkpoint save fail with ENOSPC, in ``write`` (half the bytes written) or in
    ``fsync`` (all written, not flushed to disk); every other file is written normally."""
    real_fdopen, real_fsync = os.fdopen, os.fsync
    saves = {"n": 0}

    def is_checkpoint_temp(fd):
        return ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}")

    class HalfFullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if where == "write" and is_checkpoint_temp(fd):
            saves["n"] += 1
            if saves["n"] == on_save:
                return HalfFullDisk(f)
        return f

    def fsync(fd):
        if where == "fsync" and is_checkpoint_temp(fd):
            saves["n"] += 1
            if saves["n"] == on_save:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_mid_save_keeps_previous_checkpoint_and_resume_matches(tmp_path, monkeypatch, where):
    raw = {**TINY_RUN, "epochs": 2}
    Trainer(config_from_dict({**raw, "run_dir": str(tmp_path / "full")})).train()

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_checkpoint_io(patch, where, on_save=2)
        with pytest.raises(OSError) as err:
            Trainer(config_from_dict({**raw, "run_dir": str(run_dir)})).train()
    assert err.value.errno == errno.ENOSPC
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1  # the previous checkpoint, intact
    assert not list(run_dir.glob(".*.tmp"))  # the half-written temp file was removed
    assert not (run_dir / "results.json").exists()

    Trainer(config_from_dict({**raw, "run_dir": str(run_dir)})).train()  # disk freed: resume
    assert comparable_results(run_dir) == comparable_results(tmp_path / "full")
    assert history_without_times(run_dir) == history_without_times(tmp_path / "full")
