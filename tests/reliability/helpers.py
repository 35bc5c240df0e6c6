"""Shared pieces of the reliability suite: a tiny PAD run on the 8x8 digits, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import yaml

# Three epochs of 3 steps (48 images, batch 16): PAD-Net with DY-Conv, partitioned before training.
TINY_RUN = {
    "epochs": 3,
    "batch_size": 16,
    "eval_batch_size": 60,
    "threads": 1,
    "progress": False,
    "tensorboard": False,
    "data": {"name": "digits", "train_subset": 48, "test_subset": 60},
    "model": {"name": "small_resnet", "width": 4, "layers": [1]},
    "optim": {"name": "sgd", "lr": 0.05},
    "dynamic": {"mode": "pad", "dynamic_ratio": 0.3, "num_kernels": 2, "temperature_epochs": 1},
    "partition": {"scoring_batches": 1, "rounds": 2},
}
SAFETY_TIMEOUT_S = 600  # only so a hung child cannot hang the suite; nothing asserts on time
HOOK_LINE = "padnet test hook: paused writing"


def write_config(directory: Path, name: str = "run", **updates) -> Path:
    raw = json.loads(json.dumps(TINY_RUN))
    for key, value in updates.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = Path(directory) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train_command(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "padnet", "train", "--config", str(config), "--set", f"run_dir={run_dir}"]


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PADNET_TEST_PAUSE_WRITE"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def run_to_end(config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config, run_dir), env=child_env(), capture_output=True, text=True,
                          timeout=SAFETY_TIMEOUT_S)


def kill_when_paused(config: Path, run_dir: Path, pause: str) -> str:
    """Start training with the write-pause hook at ``pause`` (``NAME@N``), SIGKILL the child as soon as it
    reports being paused there, and return its stderr. Fails if the child ends without pausing."""
    proc = subprocess.Popen(train_command(config, run_dir), env=child_env(PADNET_TEST_PAUSE_WRITE=pause),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(SAFETY_TIMEOUT_S, proc.kill)
    guard.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(HOOK_LINE):
                proc.kill()  # SIGKILL: no handler, no cleanup, no flush
                break
    finally:
        guard.cancel()
        proc.kill()
        proc.wait()
        proc.stderr.close()
    text = "".join(lines)
    assert lines and lines[-1].startswith(f"{HOOK_LINE} {pause.split('@')[0]}"), \
        f"the child never paused at {pause} (rc {proc.returncode}):\n{text[-3000:]}"
    assert proc.returncode == -9
    return text


def comparable_results(run_dir: Path) -> dict:
    """results.json without what legitimately differs between two runs: wall times and the run_dir."""
    results = json.loads((Path(run_dir) / "results.json").read_text())
    results.pop("time_per_epoch_s")
    results["partition"] = {k: v for k, v in results["partition"].items() if k != "wall_time_s"}
    results["config"] = {k: v for k, v in results["config"].items() if k != "run_dir"}
    return results


def history_without_times(run_dir: Path) -> list[dict]:
    rows = json.loads((Path(run_dir) / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]
