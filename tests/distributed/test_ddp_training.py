"""Multi-process training under torchrun (2 gloo processes on CPU) through the padnet CLI.

One torchrun launch (``launch.py``, the real ``padnet.cli.main`` plus test hooks) runs, in one process
group: a PAD digits run, a PAD-MoE run with idle experts, a run whose loss turns NaN on rank 1 only,
and a run that rank 0 SIGKILLs right after its first checkpoint. A second launch, ``torchrun -m padnet``,
resumes the killed run. Each test reads what its part left on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import default_collate

import padnet
from padnet.layers import pad_layers
from padnet.temperature import TemperatureSchedule, set_temperature
from padnet.train import load_config
from padnet.train.checkpoint import make_dynamic, seed_everything
from padnet.train.run_files import load_checkpoint
from padnet.train.tasks import get_task

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")]

REPO = Path(__file__).resolve().parents[2]
LAUNCH = Path(__file__).with_name("launch.py")
WORLD = 2
SEED_STRIDE = 1_000_003  # Trainer.train_sampler: epoch e's permutation is seeded seed * SEED_STRIDE + e

COMMON = {"threads": 1, "progress": False, "tensorboard": False, "log_every": 1, "seed": 3}
DIGITS = {
    **COMMON, "epochs": 2, "batch_size": 8, "eval_batch_size": 60,  # 64 / 2 ranks / 8 = 4 steps per epoch
    "data": {"name": "digits", "train_subset": 64, "test_subset": 60},
    "model": {"name": "small_resnet", "width": 4, "layers": [1]},
    "optim": {"name": "sgd", "lr": 0.05},
    "dynamic": {"mode": "pad", "dynamic_ratio": 0.3, "temperature_epochs": 1},
    "partition": {"scoring_batches": 2, "rounds": 2},
}
MOE = {
    **COMMON, "task": "moe_tokens_test", "epochs": 1, "batch_size": 4, "eval_batch_size": 64,
    "tokens": {"examples": 64, "length": 2},  # 8 tokens per rank and step for 16 experts, top-1
    "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
    "dynamic": {"mode": "pad", "kind": "moe", "num_experts": 16, "top_k": 1, "dynamic_ratio": 0.5},
    "partition": {"scoring_batches": 2, "rounds": 1, "warmup_steps": 2},  # upcycled: warm up first
}
NAN = {**DIGITS, "task": "nan_rank1_test", "dynamic": {"mode": "static"}}
# Still annealing at the end (2 of 4 epochs), so a rebuild with the wrong steps per epoch shows.
ANNEALING = {**DIGITS, "dynamic": {**DIGITS["dynamic"], "temperature_epochs": 4}}


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), *args]
    # The timeout only keeps a deadlock from hanging CI; nothing here depends on speed.
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    digits = write(root / "digits.yaml", {**DIGITS, "run_dir": str(root / "base")})
    moe = write(root / "moe.yaml", {**MOE, "run_dir": str(root / "moe")})
    nan = write(root / "nan.yaml", {**NAN, "run_dir": str(root / "nan")})
    annealing = write(root / "annealing.yaml", {**ANNEALING, "run_dir": str(root / "annealing")})
    plan = [
        {"argv": ["train", "--config", str(digits)]},
        {"argv": ["train", "--config", str(moe)]},
        {"argv": ["train", "--config", str(nan)]},
        {"argv": ["train", "--config", str(annealing)]},
        {"argv": ["train", "--config", str(digits), "--set", f"run_dir={root / 'killed'}"], "kill_after_epoch": 1},
    ]
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(plan))
    proc = torchrun([str(LAUNCH), str(plan_path)], root)
    codes = [json.loads(Path(f"{plan_path}.rank{r}.json").read_text()) for r in range(WORLD)]
    return {"root": root, "proc": proc, "codes": codes, "digits": digits}


def rank_dumps(run_dir: Path) -> list[dict]:
    return [torch.load(f"{run_dir}.rank{r}.pt", weights_only=True) for r in range(WORLD)]


def history_without_times(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]


def test_pad_run_ranks_identical_and_mask_equals_union_partition(runs):
    assert [c[:1] for c in runs["codes"]] == [[0]] * WORLD, runs["proc"].stderr[-3000:]
    base = runs["root"] / "base"
    results = json.loads((base / "results.json").read_text())
    assert results["distributed"]["world_size"] == WORLD and results["distributed"]["effective_batch_size"] == 16
    assert results["distributed"]["replicas_identical"] is True
    assert abs(results["dynamic_ratio"] - 0.3) < 0.01

    r0, r1 = rank_dumps(base)
    # Both ranks hold the same masks and weights after 8 training steps.
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"]), \
        [k for k in r0["state"] if not torch.equal(r0["state"][k], r1["state"][k])]
    masks = {k: v for k, v in r0["state"].items() if k.endswith(".mask")}
    assert masks and any(bool(m.any()) and not bool(m.all()) for m in masks.values())
    # What rank 0 saved is what the run's checkpoint holds.
    saved = load_checkpoint(base / "checkpoint.pt")["model"]
    assert all(torch.equal(saved[k], r0["state"][k]) for k in saved)

    # The same model, built in this process as the trainer builds it (same seed).
    config = load_config(runs["digits"])
    seed_everything(config.seed)
    parts = get_task(config.task).builder(config)
    model = make_dynamic(parts.model, config)
    n = len(parts.train_dataset)

    # Each epoch, the ranks read disjoint halves of the one-process permutation (rank r: every 2nd
    # index from r), and the permutation changes with the epoch (set_epoch).
    for epoch in (-1, 0, 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(3 * SEED_STRIDE + epoch)).tolist()
        assert r0["sampled"][epoch] == perm[0::WORLD] and r1["sampled"][epoch] == perm[1::WORLD]
    assert r0["sampled"][0] != r0["sampled"][1]

    # The mask equals one process's partition of the union of the two ranks' scoring shards.
    steps_per_epoch = n // WORLD // config.batch_size
    tau = TemperatureSchedule(config.dynamic.temperature_start, config.dynamic.temperature_end,
                              config.dynamic.temperature_epochs)
    set_temperature(model, tau.at_step(0, steps_per_epoch))
    batches = []
    for dump in (r0, r1):
        indices = dump["sampled"][-1][: config.partition.scoring_batches * config.batch_size]
        for i in range(0, len(indices), config.batch_size):
            batches.append(default_collate([parts.train_dataset[j] for j in indices[i:i + config.batch_size]]))
    assert len(batches) == WORLD * config.partition.scoring_batches
    padnet.partition(model, batches, parts.loss_fn, 0.3, rounds=2, seed=config.seed)
    for name, layer in pad_layers(model):
        assert torch.equal(layer.mask, masks[f"{name}.mask"]), name
    # and the init was really trained away from (the ranks agree because DDP synchronised them)
    init = model.state_dict()
    assert any(not torch.equal(init[k], r0["state"][k])
               for k in init if k in r0["state"] and init[k].is_floating_point())


def test_pad_moe_run_completes_with_idle_experts(runs):
    assert [c[1:2] for c in runs["codes"]] == [[0]] * WORLD, runs["proc"].stderr[-3000:]
    moe = runs["root"] / "moe"
    results = json.loads((moe / "results.json").read_text())
    assert results["distributed"]["replicas_identical"] is True
    assert torch.isfinite(torch.tensor(results["test"]["loss"]))
    assert abs(results["dynamic_ratio"] - 0.5) < 0.01
    r0, r1 = rank_dumps(moe)
    for dump in (r0, r1):
        # 2 warm-up + 8 training forwards, each routing 8 tokens (top-1) to 16 experts: most idle.
        assert len(dump["routing"]) == 10
        assert all(sum(row) == 8 and row.count(0) >= 8 for row in dump["routing"])
    assert r0["routing"] != r1["routing"]  # the ranks routed different tokens ...
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])  # ... yet stayed in sync
    gates = [k for k in r0["state"] if k.endswith("router.w_gate")]
    assert gates and all(bool(r0["state"][k].abs().sum() > 0) for k in gates)  # routers trained (from 0)


def test_nan_on_one_rank_stops_every_rank(runs):
    assert [c[2:3] for c in runs["codes"]] == [[1]] * WORLD, runs["proc"].stderr[-3000:]
    nan = runs["root"] / "nan"
    err = runs["proc"].stderr
    for r in range(WORLD):
        assert (f"padnet train (rank {r} of {WORLD}): "
                f"non-finite loss (nan, mean over {WORLD} processes) at epoch 2") in err
    assert load_checkpoint(nan / "checkpoint.pt")["epoch"] == 1
    assert not (nan / "results.json").exists()


def test_killed_run_resumes_to_the_uninterrupted_result(runs):
    root, killed = runs["root"], runs["root"] / "killed"
    assert runs["proc"].returncode != 0  # rank 0 was SIGKILLed; torchrun reports the failure
    assert all(len(c) == 4 for c in runs["codes"])  # the last command never returned
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1
    assert not (killed / "results.json").exists()

    proc = torchrun(["-m", "padnet", "train", "--config", str(runs["digits"]), "--set", f"run_dir={killed}"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in (killed / "train.log").read_text()
    base = root / "base"
    resumed, uninterrupted = (json.loads((d / "results.json").read_text()) for d in (killed, base))
    assert resumed["test"] == uninterrupted["test"]
    assert history_without_times(killed) == history_without_times(base)
    a, b = load_checkpoint(base / "checkpoint.pt")["model"], load_checkpoint(killed / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(proc.stdout)["test"] == uninterrupted["test"]  # rank 0 alone printed the summary


def test_eval_of_a_two_process_run_uses_the_run_temperature(runs):
    """The run took 64 / 2 ranks / 8 = 4 steps per epoch, 8 in all: its attention temperature ended at
    30 - 29 * 2 / 4 = 15.5. Rebuilt in one process for `padnet eval`, the model must use that, not the
    22.75 of a one-process schedule (8 steps per epoch), and reproduce the run's test accuracy."""
    from padnet.layers.protocol import DynamicConvCompute
    from padnet.train.rebuild import rebuild_run

    assert [c[3:4] for c in runs["codes"]] == [[0]] * WORLD, runs["proc"].stderr[-3000:]
    base = runs["root"] / "annealing"
    run = rebuild_run(base, None, None)
    temperatures = {m.temperature for m in run.model.modules() if isinstance(m, DynamicConvCompute)}
    assert temperatures == {30 - 29 * 2 / 4}
    results = json.loads((base / "results.json").read_text())
    assert run.evaluate()["accuracy"] == results["test"]["accuracy"]

