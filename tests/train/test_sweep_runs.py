"""A sweep shares its runs with other processes: a run another process holds is reported in progress
(with its pid), skipped, and listed at the end; the next sweep picks it up."""

import os

import yaml

from padnet.cli import main
from padnet.train.rundir import claim, lock_holder
from tests.helpers import write_config


def _sweep(tmp_path):
    write_config(tmp_path, "base", epochs=1)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": "base.yaml", "output_dir": str(tmp_path / "out"), "seeds": [0],
        "runs": [{"name": "a", "set": {"dynamic.mode": "static"}}, {"name": "b", "set": {"dynamic.mode": "static"}}],
    }))
    return sweep


def test_lock_holder_names_the_process_and_writes_nothing(tmp_path):
    assert lock_holder(tmp_path / "never-claimed") is None and not (tmp_path / "never-claimed").exists()
    lock = claim(tmp_path / "run")
    try:
        assert lock_holder(tmp_path / "run") == str(os.getpid())
    finally:
        lock.release()
    assert lock_holder(tmp_path / "run") is None


def test_a_sweep_skips_a_run_another_process_holds_and_goes_on(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    held = tmp_path / "out" / "a" / "seed0"
    lock = claim(held)  # as another process would: a flock on its own open file
    try:
        assert main(["sweep", "--config", str(sweep), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"in progress (pid {os.getpid()}) {held}" in out and "1 in progress elsewhere" in out
        assert main(["sweep", "--config", str(sweep)]) == 0
        out = capsys.readouterr().out
        assert (tmp_path / "out" / "b" / "seed0" / "results.json").is_file()
        assert not (held / "results.json").exists()
        assert "skipped 1 run(s) another process is running" in out and f"{held}: in progress (pid" in out
    finally:
        lock.release()
    assert main(["sweep", "--config", str(sweep)]) == 0
    assert (held / "results.json").is_file()
    assert "skipped" not in capsys.readouterr().out


def test_a_run_taken_between_the_status_and_its_start_is_skipped_too(tmp_path, capsys, monkeypatch):
    import padnet.train.sweep as sweep_module

    sweep = _sweep(tmp_path)
    held = tmp_path / "out" / "a" / "seed0"
    monkeypatch.setattr(sweep_module, "run_status", lambda config: "pending")  # the status read before the claim
    lock = claim(held)
    try:
        assert main(["sweep", "--config", str(sweep)]) == 0
    finally:
        lock.release()
    out = capsys.readouterr().out
    assert f"skipped {held}: in progress (pid {os.getpid()})" in out
    assert (tmp_path / "out" / "b" / "seed0" / "results.json").is_file() and not (held / "results.json").exists()
