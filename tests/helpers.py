"""What more than one test module needs: data locations, hand-made masks and PAD forms, the float64
comparison against an oracle, and the tiny training run the CLI and reliability suites drive.

Fixtures live in ``conftest.py``; everything here is a plain function or constant, imported as
``from tests.helpers import ...``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PADNET_SHARED_DATA", REPO / ".." / "shared" / "data"))
FASHION_MNIST = Path(os.environ.get("PADNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


# ----------------------------------------------------------------------------- float comparisons
# Layer tests compare padnet's forms with padnet.reference in float64 (the ``float64`` fixture builds
# modules and inputs in it). Why float64 and not float32 with a tolerance: in float32 the same formula
# rounds differently on another vector unit (AVX2 / AVX-512 / none sum in different orders), and a
# weight gradient of entries near 120 already differs by 6e-5 between them, so any fixed float32
# tolerance either fails on some CPU or is loose enough to hide a wrong scale. In float64 the worst-case
# rounding of a sum of n products is n * u * sum|terms| with u = 1.1e-16; every entry compared in these
# tests is at most a few thousand products deep (C_in * k * k taps times batch * H * W positions for a
# weight gradient: n <= 1e4) of terms no larger than the largest compared value ``scale``, so the error
# is at most 1e4 * 1e4 * 1.1e-16 * scale ~ 1e-8 * scale on any CPU. A wrong formula (a missing term, a
# wrong scale factor, a wrong mask entry) changes an entry by a sizeable fraction of ``scale``: ten
# orders of magnitude apart from the rounding, so the tolerance below can neither fail on another
# machine nor pass a wrong formula.
F64_RELATIVE_TOLERANCE = 1e-7


def assert_close_f64(actual: torch.Tensor, expected: torch.Tensor, msg: str | None = None) -> None:
    """``actual`` equals the float64 oracle ``expected`` up to float64 rounding (see above): both must be
    float64, so a test cannot silently compare float32 results at a float64 tolerance."""
    assert actual.dtype == torch.float64 and expected.dtype == torch.float64, \
        f"compare float64 results (got {actual.dtype} and {expected.dtype}); build the test under the float64 fixture"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    tolerance = F64_RELATIVE_TOLERANCE * scale
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance, msg=msg)


def float32_tolerance(terms: int, scale: float) -> float:
    """For the rare comparison that has no float64 run (a float32-only kernel of another library): the
    worst-case rounding difference of two float32 summation orders of ``terms`` products whose magnitudes
    add up to at most ``scale``, 2 * terms * eps32 * scale (twice Higham's gamma_n bound: each order may
    err by gamma_n on its own)."""
    return 2 * terms * torch.finfo(torch.float32).eps * scale


# ----------------------------------------------------------------------------- masks and PAD forms
def random_mask(shape, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < ratio


def random_pad_form(model, form, ratio, phi):
    """A converted PAD ``model`` "partitioned" by hand (layer i: ``random_mask(..., ratio, seed=i)`` over
    its units, entries or whole rows as its granularity says, and phi), then compacted (form "compacted")
    or compacted and deployed (form "deployed"); in eval mode."""
    import padnet
    from padnet.layers import pad_layers

    for i, (_, layer) in enumerate(pad_layers(model)):
        # For element granularity the units are the entries: the same mask as random_mask(kernel_shape).
        layer.set_mask(layer.mask_from_units(random_mask((layer.num_units,), ratio, seed=i)))
        with torch.no_grad():
            layer.phi.fill_(phi)
    if form in ("compacted", "deployed"):
        padnet.compact(model)
    if form == "deployed":
        padnet.deploy(model)
    return model.eval()


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a fresh module (the scripts are not a package)."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the tiny training run
# Three epochs of 3 steps (48 images, batch 16): PAD-Net with DY-Conv, partitioned before training.
TINY_RUN = {
    "epochs": 3,
    "batch_size": 16,  # below the layers' per-sample-loop threshold: the fast grouped path on CPU
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


def write_config(directory: Path, name: str = "run", base: dict = TINY_RUN, **updates) -> Path:
    """``<directory>/<name>.yaml``: ``base`` with ``updates`` (a dict value updates that section)."""
    raw = json.loads(json.dumps(base))
    for key, value in updates.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = Path(directory) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def history_without_times(run_dir: Path) -> list[dict]:
    rows = json.loads((Path(run_dir) / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]


def comparable_results(run_dir: Path) -> dict:
    """results.json without what legitimately differs between two runs: wall times and the run_dir."""
    results = json.loads((Path(run_dir) / "results.json").read_text())
    results.pop("time_per_epoch_s")
    results["partition"] = {k: v for k, v in results["partition"].items() if k != "wall_time_s"}
    results["config"] = {k: v for k, v in results["config"].items() if k != "run_dir"}
    return results


def train_command(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "padnet", "train", "--config", str(config), "--set", f"run_dir={run_dir}"]


def paused(command: list[str]) -> list[str]:
    """``command`` (``python -m padnet ...``) run through ``tests/pause_writes.py``, which pauses before the
    rename that ``PADNET_TEST_PAUSE_WRITE=NAME@N`` names."""
    assert command[1:3] == ["-m", "padnet"], command
    return [command[0], str(REPO / "tests" / "pause_writes.py"), *command[3:]]


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PADNET_TEST_PAUSE_WRITE"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def run_to_end(config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config, run_dir), env=child_env(), capture_output=True, text=True,
                          timeout=SAFETY_TIMEOUT_S)


def kill_when_paused(config: Path, run_dir: Path, pause: str, sig: int = signal.SIGKILL,
                     command: list[str] | None = None) -> str:
    """Start ``command`` (default: training ``config`` into ``run_dir``) with the write-pause hook at
    ``pause`` (``NAME@N``), send ``sig`` (SIGKILL: no handler, no cleanup, no flush) as soon as it reports
    being paused there, and return its stderr. Fails if the child ends without pausing."""
    proc = subprocess.Popen(paused(command or train_command(config, run_dir)),
                            env=child_env(PADNET_TEST_PAUSE_WRITE=pause), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(SAFETY_TIMEOUT_S, proc.kill)
    guard.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(HOOK_LINE):
                proc.send_signal(sig)
                break
    finally:
        guard.cancel()
        if lines and lines[-1].startswith(HOOK_LINE):
            proc.wait(timeout=SAFETY_TIMEOUT_S)  # let the signal sent above end it (kill() would mask SIGTERM)
        proc.kill()  # a child that never paused, or an error above
        proc.wait()
        proc.stderr.close()
    text = "".join(lines)
    assert lines and lines[-1].startswith(f"{HOOK_LINE} {pause.split('@')[0]}"), \
        f"the child never paused at {pause} (rc {proc.returncode}):\n{text[-3000:]}"
    assert proc.returncode == -sig, f"the child ended with {proc.returncode}, not by signal {sig}:\n{text[-3000:]}"
    return text
