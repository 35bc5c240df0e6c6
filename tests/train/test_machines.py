"""The run keys for the machines users train on (docs/usage.md#machines): ``precision``,
``accumulate_steps``, ``compile``, ``channels_last`` and ``ema``.

The arithmetic is checked against a float64 oracle at the step level (N micro-batches of B step as one
batch of N x B); the trainer's use of each key is checked end to end on the tiny digits run, resumed
bit-identically after a stop (in process) and after a kill (a real process, for the combined run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from padnet.errors import ConfigError
from padnet.layers import PADConv2d
from padnet.train import load_config
from padnet.train.rebuild import evaluate_run, export_run
from padnet.train.run_files import load_checkpoint
from padnet.train.trainer import Trainer
from padnet.train_step import StepRecipe, train_step
from tests.helpers import (
    assert_close_f64,
    comparable_results,
    history_without_times,
    kill_when_paused,
    random_mask,
    run_to_end,
    write_config,
)


# ----------------------------------------------------------------------------- accumulation, step level
class NoNormNet(nn.Module):
    """A PAD conv and a linear head, no BatchNorm: its loss is a plain mean over examples."""

    def __init__(self):
        super().__init__()
        self.conv = PADConv2d(1, 4, 3, padding=1, num_kernels=2)
        self.conv.set_mask(random_mask(self.conv.mask.shape, 0.3, seed=0))
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).flatten(1))


def _loss(model, batch):
    images, targets = batch
    return F.cross_entropy(model(images), targets)


def _stepped(micro_batches, accumulate_seed=0):
    torch.manual_seed(accumulate_seed)
    model = NoNormNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    recipe = StepRecipe.for_model(model, _loss, optimizer, grad_clip=1.0)
    for _ in range(2):  # two steps: the momentum buffers carry the first one's gradient
        loss = train_step(model, micro_batches, recipe, 1.0, where=lambda: "in the test")
    return model, loss


@pytest.mark.usefixtures("float64")
def test_micro_batches_step_as_one_batch_of_their_union():
    torch.manual_seed(1)
    images, targets = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    whole, whole_loss = _stepped([(images, targets)])
    parts, parts_loss = _stepped([(images[i:i + 4], targets[i:i + 4]) for i in (0, 4, 8)])
    assert_close_f64(parts_loss, whole_loss)
    for (name, a), b in zip(whole.named_parameters(), parts.parameters()):
        assert_close_f64(b, a, msg=name)
    # And the step did something: the weights moved from their initial values.
    torch.manual_seed(0)
    assert not torch.equal(NoNormNet().head.weight, whole.head.weight)


# ----------------------------------------------------------------------------- config keys
@pytest.mark.parametrize("key, value, expected", [
    ("precision", "fp8", "precision='fp8' is not supported; allowed: 'fp32', 'bf16', 'fp16'"),
    ("accumulate_steps", 0, "accumulate_steps=0 must be greater than or equal to 1"),
    ("compile", "yes", "compile='yes' must be a valid boolean"),
    ("ema", {"decay": 1.0}, "ema.decay=1.0 must be less than 1"),
    ("ema", {"decay": 0.9, "every": 2}, "unknown key 'ema.every'; allowed keys in ema: decay"),
])
def test_bad_machine_keys_are_named(tmp_path, key, value, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, **{key: value}))
    assert expected in str(err.value)


def test_accumulation_counts_optimizer_steps(tmp_path):
    """48 examples in micro-batches of 8, 3 per step: 2 optimizer steps an epoch, which the schedules
    count; a batch x accumulation past the training set is refused naming both."""
    config = write_config(tmp_path, batch_size=8, accumulate_steps=3, epochs=2, dynamic={"mode": "static"},
                          optim={"warmup_epochs": 1.0})
    results = Trainer(load_config(config, [f"run_dir={tmp_path / 'run'}"])).train()
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [row["step"] for row in rows] == [2, 4]
    assert rows[0]["lr"] == pytest.approx(0.05)  # the warm-up ends after epoch 1's 2 steps: the base rate
    assert results["test"]["accuracy"] >= 0
    with pytest.raises(ConfigError, match=r"batch_size=16 x accumulate_steps=4 is larger than the training set"):
        Trainer(load_config(write_config(tmp_path, "big", batch_size=16, accumulate_steps=4),
                            [f"run_dir={tmp_path / 'big-run'}"])).train()


# ----------------------------------------------------------------------------- end to end
def _final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint.pt")


def _assert_same_run(a: Path, b: Path) -> None:
    assert comparable_results(a) == comparable_results(b)
    assert history_without_times(a) == history_without_times(b)
    x, y = _final_state(a), _final_state(b)
    for key in ("model", "ema"):
        if key in x:
            assert x[key].keys() == y[key].keys()
            assert all(torch.equal(x[key][k], y[key][k]) for k in x[key]), key


@pytest.mark.slow
def test_fp16_scaled_accumulated_ema_run_resumes_exactly(tmp_path):
    """fp16 autocast with its GradScaler, 2 micro-batches per step and an EMA, stopped after epoch 1 and
    resumed in process: the same results, metrics and weights (model and EMA) as one uninterrupted run;
    the scaler's state is in the checkpoint."""
    config = write_config(tmp_path, precision="fp16", accumulate_steps=2, ema={"decay": 0.9}, batch_size=8,
                          optim={"grad_clip": 1.0})
    whole, split = tmp_path / "whole", tmp_path / "split"
    Trainer(load_config(config, [f"run_dir={whole}"])).train()
    assert Trainer(load_config(config, [f"run_dir={split}"])).train(stop_after_epoch=1) is None
    assert set(_final_state(split)["scaler"]) >= {"scale", "_growth_tracker"}
    Trainer(load_config(config, [f"run_dir={split}"])).train()
    _assert_same_run(whole, split)


@pytest.mark.slow
def test_ema_is_what_the_run_evaluates_and_exports(tmp_path):
    config = write_config(tmp_path, ema={"decay": 0.5}, epochs=2)
    run = tmp_path / "run"
    results = Trainer(load_config(config, [f"run_dir={run}"])).train()
    state = _final_state(run)
    assert state["ema_updates"] == 2 * 3  # 48 examples / 16 per step, 2 epochs
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"]
               if state["model"][k].is_floating_point())
    assert evaluate_run(run)["loss"] == results["test"]["loss"]  # the stored evaluation is the EMA's
    exported = export_run(run)
    assert exported["exported"]["accuracy"] == results["test"]["accuracy"]


@pytest.mark.slow
def test_bf16_accumulated_compiled_channels_last_ema_run_resumes_after_a_kill(tmp_path):
    """The issue's run: bf16, 2 micro-batches a step, torch.compile, channels_last and an EMA, killed after
    epoch 1's training (a real process, SIGKILL) and resumed with the same command: bit-identical to an
    uninterrupted run; then evaluated (as the run evaluated: under bf16 autocast) and exported (checked in
    float32 against the rebuilt run)."""
    config = write_config(tmp_path, precision="bf16", accumulate_steps=2, compile=True, channels_last=True,
                          ema={"decay": 0.9}, batch_size=8, epochs=2)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_to_end(config, whole)
    assert done.returncode == 0, done.stderr[-3000:]
    kill_when_paused(config, killed, "metrics.json@2")  # epoch 2 trained after epoch 1's checkpoint
    assert _final_state(killed)["epoch"] == 1
    resumed = run_to_end(config, killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in (killed / "train.log").read_text()
    _assert_same_run(whole, killed)
    saved = yaml.safe_load((killed / "config.yaml").read_text())
    assert (saved["precision"], saved["compile"], saved["channels_last"]) == ("bf16", True, True)
    results = json.loads((killed / "results.json").read_text())
    # padnet eval runs the rebuilt model eagerly (the run evaluated it compiled, channels_last): other bf16
    # kernels, whose rounding (2**-8) may move an example or two of the 60 across the decision boundary.
    assert evaluate_run(killed)["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=2 / 60)
    exported = export_run(killed)
    assert exported["exported"]["accuracy"] == exported["run"]["accuracy"]
