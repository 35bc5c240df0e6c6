"""A run directory belongs to padnet (issue 14): nothing of the user's is overwritten, two processes never
share one, a resumed run is the run its checkpoint holds, and written files are what a plain write would give."""

import json
import os
import stat
import subprocess

import pytest
import torch

from padnet.cli import main
from padnet.errors import PadnetError, RunError
from padnet.files import atomic_write_bytes
from padnet.train import Trainer, config_from_dict
from padnet.train.rundir import LOCK, MARKER
from padnet.train.sweep import load_sweep
from tests.helpers import HOOK_LINE, SAFETY_TIMEOUT_S, TINY_RUN, child_env, paused, train_command, write_config

# Subprocesses / end-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

ONE_EPOCH = {**TINY_RUN, "epochs": 1}


def _config(run_dir, **updates):
    return config_from_dict({**ONE_EPOCH, **updates, "run_dir": str(run_dir)})


def test_a_non_empty_directory_that_is_not_a_run_is_refused_and_left_alone(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    files = {"metrics.csv": "my,own\n1,2\n", "summary.txt": "my notes\n", "partition.json": "{}\n",
             "config.yaml": "mine: true\n"}
    for name, text in files.items():
        (user / name).write_text(text)
    config = write_config(tmp_path, epochs=1)
    assert main(["train", "--config", str(config), "--set", f"run_dir={user}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"run_dir {user} is not empty and is not a padnet run directory" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in user.iterdir()) == sorted(files)  # no marker, no lock, no log
    assert {p.name: p.read_text() for p in user.iterdir()} == files


@pytest.mark.parametrize("run_dir", ["", ".", "./"])
def test_empty_or_current_directory_run_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch, run_dir,
                                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, epochs=1)
    before = sorted(os.listdir(tmp_path))
    assert main(["train", "--config", str(config), "--set", f"run_dir={run_dir}"]) == 2
    assert "run_dir=" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(RunError, match="the current directory"):
        Trainer(_config("x"), run_dir=str(tmp_path)).train()
    assert sorted(os.listdir(tmp_path)) == before


def test_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
    """Two real processes: the first pauses inside its first checkpoint write (holding the lock); the
    second is refused with the first one's pid and touches nothing."""
    config = write_config(tmp_path)
    run_dir = tmp_path / "run"
    first = subprocess.Popen(paused(train_command(config, run_dir)),
                             env=child_env(PADNET_TEST_PAUSE_WRITE="checkpoint.pt@1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:
            if line.startswith(HOOK_LINE):
                break
        else:
            pytest.fail(f"the first run never paused (rc {first.wait()})")
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
        second = subprocess.run(train_command(config, run_dir), env=child_env(), capture_output=True, text=True,
                                timeout=SAFETY_TIMEOUT_S)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"run_dir {run_dir} is in use by process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    # The holder is gone (killed): the lock went with it, and the same command resumes.
    done = subprocess.run(train_command(config, run_dir), env=child_env(), capture_output=True, text=True,
                          timeout=SAFETY_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run_dir / "results.json").is_file() and (run_dir / MARKER).is_file() and (run_dir / LOCK).is_file()


def test_resume_checks_the_checkpoint_own_config(tmp_path):
    Trainer(_config(tmp_path / "a", epochs=2), run_dir=tmp_path / "a").train(stop_after_epoch=1)
    copy = tmp_path / "b"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes((tmp_path / "a" / "checkpoint.pt").read_bytes())
    with pytest.raises(RunError, match=r"checkpoint.pt holds a run with a different config than this one "
                                       r"\(keys: optim.lr, seed\)"):
        Trainer(_config(copy, epochs=2, seed=5, optim={"name": "sgd", "lr": 0.01})).train()
    assert sorted(p.name for p in copy.iterdir()) == sorted([LOCK, MARKER, "checkpoint.pt"])  # no config.yaml written
    # threads changes results, so it may not change on resume either
    with pytest.raises(RunError, match=r"\(keys: threads\)"):
        Trainer(_config(tmp_path / "a", epochs=2, threads=2)).train()


def test_resume_refuses_a_checkpoint_of_another_padnet_version(tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(_config(run_dir, epochs=2)).train(stop_after_epoch=1)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["padnet_version"] == __import__("padnet").__version__
    state["padnet_version"] = "0.0.1"
    torch.save(state, run_dir / "checkpoint.pt")
    config = write_config(tmp_path, epochs=2)
    assert main(["train", "--config", str(config), "--set", f"run_dir={run_dir}"]) == 2
    assert "was written by padnet '0.0.1', this is padnet" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.yaml", "results.json", "metrics.csv"])
def test_export_never_writes_over_a_run_file(tmp_path, name, capsys):
    run_dir = tmp_path / "run"
    Trainer(_config(run_dir)).train()
    before = (run_dir / name).read_bytes()
    assert main(["export", "--run", str(run_dir), "--out", str(run_dir / name)]) == 2
    assert "never over a run's files" in capsys.readouterr().err
    assert (run_dir / name).read_bytes() == before


def test_log_is_not_written_through_a_symlink(tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(_config(run_dir, epochs=2)).train(stop_after_epoch=1)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run_dir / "train.log").unlink()
    (run_dir / "train.log").symlink_to(target)
    config = write_config(tmp_path, epochs=2)
    assert main(["train", "--config", str(config), "--set", f"run_dir={run_dir}"]) == 2
    assert "train.log is a symbolic link" in capsys.readouterr().err
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
        Trainer(_config(tmp_path / "run")).train()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~umask
    for name in ("config.yaml", "checkpoint.pt", "results.json", "metrics.csv", "train.log", MARKER):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", ""])
def test_sweep_run_names_stay_under_output_dir(tmp_path, name):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps({"base": ONE_EPOCH, "output_dir": str(tmp_path / "out"),
                                 "runs": [{"name": name, "set": {}}]}))
    with pytest.raises(PadnetError, match=r"runs\[0\].name=.* must be one plain directory name"):
        load_sweep(sweep)


@pytest.mark.parametrize("overrides, fragment", [
    ({"batch_size": 1000}, "batch_size=1000 is larger than the training set (48 examples)"),
    ({"partition": {"scoring_batches": 1, "rounds": 2, "batch_size": 1_000_000_000}},
     "partition.batch_size=1000000000 must be less than or equal to 1048576"),
    ({"partition": {"scoring_batches": 1, "rounds": 2, "batch_size": 500}},
     "partition.batch_size=500 is larger than the training set (48 examples)"),
    ({"seed": 10**30}, "seed=1000000000000000000000000000000 must be less than or equal to 4294967295"),
])
def test_size_checks_run_before_the_run_directory_is_written(tmp_path, overrides, fragment, capsys):
    run_dir = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({**ONE_EPOCH, **overrides, "run_dir": str(run_dir)}))
    assert main(["train", "--config", str(config)]) == 2
    assert fragment in capsys.readouterr().err
    assert not (run_dir / "config.yaml").exists()
    # so the corrected command is not refused as "a different config"
    config.write_text(json.dumps({**ONE_EPOCH, "run_dir": str(run_dir)}))
    assert main(["train", "--config", str(config)]) == 0
