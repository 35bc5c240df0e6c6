"""A sweep shares its runs with other processes: a run another process holds is reported in progress
(with its pid), skipped, and listed at the end; the next sweep picks it up."""

import json
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


def test_a_changed_recipe_is_never_reported_as_current(tmp_path, capsys):
    write_config(tmp_path, "base", epochs=1, dynamic={"mode": "static"})
    sweep = tmp_path / "sweep.yaml"
    out = tmp_path / "out"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "output_dir": str(out), "seeds": [0, 1],
                                     "runs": [{"name": "a"}]}))
    assert main(["sweep", "--config", str(sweep)]) == 0
    capsys.readouterr()
    changed = ["--set", "optim.lr=0.01"]
    # The edited recipe: listed in the dry run, refused without a choice, and nothing runs.
    assert main(["sweep", "--config", str(sweep), "--dry-run", *changed]) == 0
    assert "finished with a different recipe: optim.lr 0.05 -> 0.01" in capsys.readouterr().out
    stamp = (out / "a" / "seed0" / "results.json").stat().st_mtime_ns
    assert main(["sweep", "--config", str(sweep), *changed]) == 2
    err = capsys.readouterr().err
    assert "2 finished run(s) ran another recipe" in err and "--rerun-changed" in err and "--keep-stale" in err
    assert (out / "a" / "seed0" / "results.json").stat().st_mtime_ns == stamp
    # Kept on purpose: marked stale, and the report says so.
    assert main(["sweep", "--config", str(sweep), "--keep-stale", "--only", "a", "--seeds", "0", *changed]) == 0
    assert (out / "a" / "seed0" / "stale.json").is_file() and not (out / "a" / "seed1" / "stale.json").exists()
    assert main(["report", str(out)]) == 0
    report = capsys.readouterr().out
    kept = out / "a" / "seed0"
    assert f"**Warning:** stale (kept with an older recipe by padnet sweep --keep-stale): {kept}" in report
    # Run again: seed 1 with the new recipe, so the two seeds of "a" now ran different recipes.
    assert main(["sweep", "--config", str(sweep), "--rerun-changed", "--seeds", "1", *changed]) == 0
    config = json.loads((out / "a" / "seed1" / "results.json").read_text())["config"]
    assert config["optim"]["lr"] == 0.01
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "**Warning:** a: its seeds ran different recipes (keys: optim.lr)" in capsys.readouterr().out
    # A run kept stale is left alone by a plain sweep and run again by --rerun-changed.
    assert main(["sweep", "--config", str(sweep), "--dry-run", *changed]) == 0
    assert f"stale: optim.lr 0.05 -> 0.01 {kept}" in capsys.readouterr().out.replace("  ", " ")
    assert main(["sweep", "--config", str(sweep), *changed]) == 0
    assert main(["sweep", "--config", str(sweep), "--rerun-changed", *changed]) == 0
    assert not (kept / "stale.json").exists()
    assert json.loads((kept / "results.json").read_text())["config"]["optim"]["lr"] == 0.01
