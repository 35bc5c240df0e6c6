"""kill -9 a real `python -m padnet train` at several points, then resume it with the same command.

Each kill point is reached deterministically through the write-pause launcher (tests/pause_writes.py,
PADNET_TEST_PAUSE_WRITE): the child stops inside an atomic write and says so on stderr, and the test
SIGKILLs it there. After
the kill the last checkpoint must load (or be absent if none was finished), and the resumed run must
end bit-identically to one uninterrupted run of the same config (results.json, the per-epoch metrics
and every tensor of the final checkpoint).
"""

import signal
import subprocess
import sys

import pytest
import torch

import padnet
from padnet.train.run_files import load_checkpoint
from tests.helpers import (
    SAFETY_TIMEOUT_S,
    child_env,
    comparable_results,
    history_without_times,
    kill_when_paused,
    run_to_end,
    write_config,
)

# Subprocesses / end-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

# (pause point, epoch of the checkpoint on disk right after the kill; 0 = no checkpoint file yet)
KILL_POINTS = {
    "before-first-checkpoint": ("metrics.json@1", 0),  # epoch 1 trained, its checkpoint not yet started
    "mid-save-of-first-checkpoint": ("checkpoint.pt@1", 0),  # temp file written + fsynced, not renamed
    "mid-save-of-second-checkpoint": ("checkpoint.pt@2", 1),
    "after-a-checkpoint": ("metrics.json@2", 1),  # epoch 2 trained after epoch 1's checkpoint
    "after-the-last-checkpoint": ("results.json@1", 3),  # all epochs saved, results.json not yet written
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by every kill point."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root)
    done = run_to_end(config, root / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    return config, root / "run"


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_then_resume_matches_uninterrupted_run(point, reference, tmp_path):
    config, ref_dir = reference
    pause, saved_epoch = KILL_POINTS[point]
    run_dir = tmp_path / "run"

    kill_when_paused(config, run_dir, pause)
    assert not (run_dir / "results.json").exists()
    if saved_epoch == 0:
        assert not (run_dir / "checkpoint.pt").exists()
    else:
        assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == saved_epoch  # loadable, not torn
    if pause.startswith("checkpoint.pt"):
        assert list(run_dir.glob(".checkpoint.pt.*.tmp")), "the kill should have left the temp file behind"

    resumed = run_to_end(config, run_dir)  # the same command, no hook
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if saved_epoch:
        assert f"resuming {run_dir} from epoch {saved_epoch}" in (run_dir / "train.log").read_text()
    assert comparable_results(run_dir) == comparable_results(ref_dir)
    assert history_without_times(run_dir) == history_without_times(ref_dir)
    a, b = load_checkpoint(ref_dir / "checkpoint.pt"), load_checkpoint(run_dir / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not list(run_dir.glob(".*.tmp")), "temp files of the killed write must be cleaned up"


def test_sigterm_mid_checkpoint_then_resume_matches_uninterrupted_run(reference, tmp_path):
    config, ref_dir = reference
    run_dir = tmp_path / "run"
    kill_when_paused(config, run_dir, "checkpoint.pt@2", sig=signal.SIGTERM)
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1  # the first one, whole
    resumed = run_to_end(config, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable_results(run_dir) == comparable_results(ref_dir)
    assert history_without_times(run_dir) == history_without_times(ref_dir)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_export_leaves_the_old_file_or_none_never_a_torn_one(reference, tmp_path, sig):
    _, ref_dir = reference
    out = tmp_path / "model.safetensors"
    export = [sys.executable, "-m", "padnet", "export", "--run", str(ref_dir), "--out", str(out)]
    # export writes .model.unchecked.safetensors (atomically), checks it against the run, then renames it
    pause = ".model.unchecked.safetensors@1"
    kill_when_paused(None, None, pause, sig=sig, command=export)
    assert not out.exists()  # no file yet: none after the kill
    done = subprocess.run(export, env=child_env(), capture_output=True, text=True, timeout=SAFETY_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    old = out.read_bytes()
    kill_when_paused(None, None, pause, sig=sig, command=export)
    assert out.read_bytes() == old  # the old file, whole
    padnet.load(out)
