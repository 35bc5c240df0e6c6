"""Trainer behaviour through the task registry: non-finite loss, atomic files, plug-in tasks."""

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from padnet.data import Digits
from padnet.errors import NonFiniteLossError
from padnet.files import atomic_write_bytes
from padnet.models import build
from padnet.train import TaskParts, Trainer, config_from_dict, register_task
from padnet.train.run_files import load_checkpoint
from padnet.train.vision import evaluate

BASE = {
    "epochs": 3, "batch_size": 16, "progress": False, "tensorboard": False,
    "optim": {"lr": 0.05}, "dynamic": {"temperature_epochs": 1},
}


def _nan_task(config):
    train = torch.utils.data.Subset(Digits(True), range(64))  # 4 steps of 16 per epoch
    calls = {"n": 0}

    def loss_fn(model, batch):
        images, targets = batch
        calls["n"] += 1
        loss = F.cross_entropy(model(images), targets)
        return loss * math.nan if calls["n"] > 5 else loss  # epoch 2 (4 steps per epoch) goes NaN

    return TaskParts(model=build("small_resnet", 10, 1, True, width=4, layers=[1]), train_dataset=train,
                     eval_dataset=Digits(False), loss_fn=loss_fn, evaluate=evaluate, info={"plugin": True})


register_task("nan_test", _nan_task)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = config_from_dict({**BASE, "task": "nan_test", "run_dir": str(tmp_path / "run")})
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at epoch 2"):
        Trainer(config).train()
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1
    assert not (tmp_path / "run" / "results.json").exists()
    assert "non-finite loss" in (tmp_path / "run" / "train.log").read_text()


def test_plugin_task_runs_without_trainer_changes(tmp_path):
    calls = []

    def build_task(config):
        size = config.section("toy", ToyConfig).size
        calls.append(size)
        data = torch.utils.data.TensorDataset(torch.randn(size, 1, 8, 8), torch.randint(0, 3, (size,)))
        return TaskParts(model=build("small_resnet", 3, 1, True, width=4, layers=[1]), train_dataset=data,
                         eval_dataset=data, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]), evaluate=evaluate)

    from dataclasses import dataclass

    @dataclass
    class ToyConfig:
        size: int = 32

        def problems(self):
            return [] if self.size >= 16 else [f"toy.size={self.size!r} must be >= 16"]

    register_task("toy_test", build_task, sections={"toy": ToyConfig})
    with pytest.raises(ValueError, match="toy.size=4 must be >= 16"):
        config_from_dict({"task": "toy_test", "toy": {"size": 4}})
    config = config_from_dict({**BASE, "epochs": 1, "task": "toy_test", "toy": {"size": 48},
                               "dynamic": {"mode": "dynamic"}, "run_dir": str(tmp_path / "toy")})
    trainer = Trainer(config)
    results = trainer.train()
    assert calls == [48] and results["mode"] == "dynamic" and results["dynamic_ratio"] == 1.0
    # The run's logger is its own: not left in logging's registry, its file handler closed after train().
    assert not [name for name in logging.Logger.manager.loggerDict if name.startswith("padnet.run")]
    assert trainer.logger.handlers == []
    assert yaml.safe_load((tmp_path / "toy" / "config.yaml").read_text())["toy"] == {"size": 48}


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_bytes(path, b"old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_atomic_write_to_a_directory_names_it_and_leaves_nothing(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(IsADirectoryError, match=r"a directory; give the path of a file") as err:
        atomic_write_bytes(tmp_path / "runs", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["runs"] and not any((tmp_path / "runs").iterdir())
    # what the command line prints: the path and why (was the temp file's name -> the path: Is a directory)
    from padnet.cli import _one_line

    assert _one_line(err.value) == f"{tmp_path / 'runs'}: a directory; give the path of a file (in it)"


def test_checkpoint_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": "padnet.train.checkpoint", "x": Evil()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a loadable padnet checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def _tiny_dynamic_task(config):
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,)))
    return TaskParts(model=build("small_resnet", 3, 1, True, width=4, layers=[1]), train_dataset=data,
                     eval_dataset=data, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]), evaluate=evaluate)


register_task("tiny_dynamic", _tiny_dynamic_task)


def test_autotuned_run_stores_its_conv_strategy_picks_and_a_resume_reuses_them(tmp_path):
    from padnet.layers import conv_strategy

    raw = {**BASE, "task": "tiny_dynamic", "run_dir": str(tmp_path / "run"), "epochs": 2,
           "conv_strategy": "autotune", "dynamic": {"mode": "dynamic", "temperature_epochs": 1}}
    conv_strategy.clear_conv_strategy_picks()
    mode_before = conv_strategy.get_conv_strategy()
    assert Trainer(config_from_dict(raw)).train(stop_after_epoch=1) is None
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    picks = state["conv_strategy_picks"]
    assert picks and all("DynamicConv2d" in key for key in picks)
    assert conv_strategy.get_conv_strategy() == mode_before  # the run's mode did not leak
    # Force a recognisable pick into the checkpoint: the resumed run must compute with it, not re-tune.
    forced = {key: "loop" for key in picks}
    state["conv_strategy_picks"] = forced
    atomic_write_bytes(path, _torch_bytes(state))
    conv_strategy.clear_conv_strategy_picks()
    Trainer(config_from_dict(raw)).train()
    for key, pick in forced.items():
        assert conv_strategy.conv_strategy_picks()[key] == pick
    conv_strategy.clear_conv_strategy_picks()


def test_heuristic_runs_store_no_picks_and_a_bad_strategy_is_refused(tmp_path):
    raw = {**BASE, "task": "tiny_dynamic", "run_dir": str(tmp_path / "run"), "epochs": 1,
           "dynamic": {"mode": "dynamic", "temperature_epochs": 1}}
    Trainer(config_from_dict(raw)).train()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["conv_strategy_picks"] == {}
    with pytest.raises(ValueError, match="conv_strategy='fastest' is not supported; allowed: 'autotune', 'heuristic'"):
        config_from_dict({**raw, "conv_strategy": "fastest"})


def _torch_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_eval_and_export_use_the_temperature_the_run_ended_with(tmp_path):
    """A run of several processes takes fewer steps per epoch; the rebuilt model must use the run's own
    temperature (recorded per epoch), not one recomputed as if a single process had trained it."""
    from padnet.layers import DynamicConv2d
    from padnet.train.rebuild import _run_temperature, rebuild_run

    raw = {**BASE, "task": "tiny_dynamic", "run_dir": str(tmp_path / "run"), "epochs": 1,
           "dynamic": {"mode": "dynamic", "temperature_epochs": 10}}
    Trainer(config_from_dict(raw)).train()
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    recorded = state["history"][-1]["temperature"]  # 32 examples / 16 = 2 steps: 30 - 29 * 2 / 20
    assert recorded == pytest.approx(30 - 29 * 2 / 20)
    run = rebuild_run(tmp_path / "run", None, None)
    temps = {m.temperature for m in run.model.modules() if isinstance(m, DynamicConv2d)}
    assert temps == {recorded}
    # As a 2-process run would have written it (1 step per process and epoch), without the recorded value:
    # the schedule is recomputed with the steps per epoch divided by the number of processes.
    config = config_from_dict(raw)
    older = {"history": [{"epoch": 1}], "world_size": 2, "global_step": 1}
    assert _run_temperature(config, older, 32) == pytest.approx(30 - 29 * 1 / 10)
    assert _run_temperature(config, {**older, "world_size": 1}, 32) == pytest.approx(30 - 29 * 1 / 20)


def test_the_checkpoint_stores_the_schedule_training_used_and_eval_reads_it(tmp_path):
    """The schedule (steps per epoch, learning rate, temperature) is derived once and stored: the rows
    of the run follow it, and padnet eval takes the temperature from it, not from a new derivation."""
    from padnet.errors import ModelFileError
    from padnet.train import evaluate_run
    from padnet.train.rebuild import _run_temperature
    from padnet.train.schedule import RunSchedule, derive_schedule

    raw = {**BASE, "task": "tiny_dynamic", "run_dir": str(tmp_path / "run"), "epochs": 2,
           "optim": {"lr": 0.05, "warmup_epochs": 0.5}, "dynamic": {"mode": "dynamic", "temperature_epochs": 10}}
    Trainer(config_from_dict(raw)).train()
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    config = config_from_dict(raw)
    schedule = RunSchedule.from_dict(state["schedule"])
    assert schedule == derive_schedule(config, 32, 1)
    assert (schedule.steps_per_epoch, schedule.warmup_steps, schedule.world_size) == (2, 1, 1)
    for row in state["history"]:
        assert row["lr"] == pytest.approx(0.05 * schedule.lr_factor(row["step"]))
        assert row["temperature"] == pytest.approx(schedule.temperature_at(row["step"]))
    # A stored schedule wins over the recorded and the derived temperature (here: one of a 2-process run).
    two = {**state["schedule"], "steps_per_epoch": 1, "world_size": 2}
    older = {"global_step": 1, "history": [{"epoch": 1, "temperature": 5.0}]}
    assert _run_temperature(config, {**older, "schedule": two}, 32) == pytest.approx(30 - 29 * 1 / 10)
    # A damaged schedule is refused, naming the key.
    atomic_write_bytes(path, _torch_bytes({**state, "schedule": {**two, "steps_per_epoch": 0}}))
    with pytest.raises(ModelFileError, match="damaged padnet training checkpoint: schedule.steps_per_epoch=0"):
        evaluate_run(tmp_path / "run")


def test_summary_is_written_again_with_the_trained_scale_factors(tmp_path):
    raw = {**BASE, "task": "tiny_dynamic", "run_dir": str(tmp_path / "run"), "epochs": 2,
           "dynamic": {"mode": "pad", "dynamic_ratio": 0.5, "temperature_epochs": 1},
           "partition": {"scoring_batches": 1, "rounds": 1}}
    Trainer(config_from_dict(raw)).train()
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    phis = {k[: -len(".phi")]: float(v) for k, v in state["model"].items() if k.endswith(".phi")}
    assert phis and any(abs(p) > 1e-6 for p in phis.values())  # trained away from 0
    for layer in summary["layers"]:
        expected = 2 * torch.sigmoid(torch.tensor(phis[layer["name"]]))
        assert layer["lambda_d"] == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_one_process_run_on_cuda_without_cuda_is_a_config_error(tmp_path):
    from padnet.errors import ConfigError

    config = config_from_dict({**BASE, "task": "tiny_dynamic", "run_dir": str(tmp_path / "run"), "device": "cuda"})
    with pytest.raises(ConfigError, match="device='cuda' but CUDA is not available; allowed here: 'cpu', 'auto'"):
        Trainer(config).train()
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything was written
