"""Plug-in tasks reach every command: ``imports:`` in a config, ``--import`` on the command line, and
an installed entry point of the group ``padnet.tasks``; a sweep reports its overall progress."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from padnet import cli
from padnet.plugins import PluginError, import_plugins
from padnet.train.sweep import SweepClock
from padnet.train.tasks import get_task, known_tasks

PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F
    from torch import nn

    from padnet.train.tasks import TaskParts, register_task


    @dataclass
    class ParityConfig:
        examples: int = 64


    def build(config):
        c = config.section("parity", ParityConfig)
        g = torch.Generator().manual_seed(7)
        x = torch.randn(c.examples, 4, generator=g)
        y = (x[:, 0] > 0).long()
        data = torch.utils.data.TensorDataset(x, y)
        torch.manual_seed(config.seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def loss_fn(model, batch):
            return F.cross_entropy(model(batch[0]), batch[1])

        @torch.no_grad()
        def evaluate(model, batches):
            pairs = [(model(x), y) for x, y in batches]
            logits, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
            return {"accuracy": float((logits.argmax(1) == y).float().mean()),
                    "loss": float(F.cross_entropy(logits, y))}

        return TaskParts(model=model, train_dataset=data, eval_dataset=data, loss_fn=loss_fn, evaluate=evaluate)


    register_task("TASKNAME", build, sections={"parity": ParityConfig})
''')


def _plugin(tmp_path, module: str, task: str):
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("TASKNAME", task))
    return tmp_path


def _config(tmp_path, task: str, **extra) -> str:
    config = {"task": task, "run_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 16, "progress": False,
              "tensorboard": False, "optim": {"lr": 0.1}, "parity": {"examples": 64}} | extra
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def clean_modules():
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("userplugin_"):
            del sys.modules[name]
    sys.path[:] = path


def test_import_on_the_command_line_reaches_train_and_eval(tmp_path, monkeypatch, capsys, clean_modules):
    monkeypatch.chdir(_plugin(tmp_path, "userplugin_cli", "parity_cli"))
    config = _config(tmp_path, "parity_cli")
    assert cli.main(["train", "--config", config]) == 2  # without the plug-in the task is unknown
    assert "task='parity_cli' is not supported" in capsys.readouterr().err
    # A bare name is an installed module: the file in the current directory is not searched for.
    assert cli.main(["train", "--import", "userplugin_cli", "--config", config]) == 2
    assert "no installed module of that name (the current directory is never searched)" in capsys.readouterr().err
    assert "userplugin_cli" not in sys.modules
    assert cli.main(["train", "--import", "userplugin_cli.py", "--config", config]) == 0  # the file, named
    trained = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    capsys.readouterr()
    assert cli.main(["eval", "--import", "./userplugin_cli.py", "--run", str(tmp_path / "run")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == trained["accuracy"]


def test_imports_in_the_config_are_stored_with_the_run(tmp_path, monkeypatch, capsys, clean_modules):
    (tmp_path / "plugins").mkdir()
    config_dir = _plugin(tmp_path / "plugins", "userplugin_cfg", "parity_cfg")
    monkeypatch.chdir(tmp_path)  # not the plug-in's directory: found from the config's directory
    config = _config(config_dir, "parity_cfg", imports=["userplugin_cfg"])
    assert cli.main(["train", "--config", config]) == 0
    stored = yaml.safe_load((config_dir / "run" / "config.yaml").read_text())
    assert stored["imports"] == ["userplugin_cfg"]
    trained = json.loads((config_dir / "run" / "results.json").read_text())["test"]
    capsys.readouterr()
    monkeypatch.chdir(config_dir)  # standing beside the plug-in is not naming it
    del sys.modules["userplugin_cfg"]
    assert cli.main(["eval", "--run", str(config_dir / "run")]) == 2
    assert ("this run was trained with plug-in 'userplugin_cfg', which is not installed; a stored run's plug-in "
            "files are never imported from where they lie: name the file again with --import "
            "path/to/userplugin_cfg.py") in capsys.readouterr().err
    assert "userplugin_cfg" not in sys.modules
    assert cli.main(["eval", "--import", str(config_dir / "userplugin_cfg.py"), "--run", str(config_dir / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == trained["accuracy"]


def test_eval_never_imports_code_that_a_run_directory_carries(tmp_path, monkeypatch, capsys, clean_modules):
    """A run directory from elsewhere whose stored config names a module lying beside its checkpoint:
    padnet eval does not import it from there (it would run the directory's code)."""
    (tmp_path / "plugins").mkdir()
    config_dir = _plugin(tmp_path / "plugins", "userplugin_carried", "parity_carried")
    monkeypatch.chdir(tmp_path)
    config = _config(config_dir, "parity_carried", imports=["userplugin_carried"])
    assert cli.main(["train", "--config", config]) == 0
    run = config_dir / "run"
    (run / "userplugin_carried.py").write_text((config_dir / "userplugin_carried.py").read_text()
                                                + "\nraise SystemExit('the run directory ran its code')\n")
    (config_dir / "userplugin_carried.py").unlink()
    del sys.modules["userplugin_carried"]
    sys.path[:] = [p for p in sys.path if p not in (str(config_dir.resolve()), str(run.resolve()))]
    capsys.readouterr()
    assert cli.main(["eval", "--run", str(run)]) == 2
    assert "this run was trained with plug-in 'userplugin_carried', which is not installed" in capsys.readouterr().err
    monkeypatch.chdir(run)  # and not from inside the run directory either
    assert cli.main(["eval", "--run", "."]) == 2
    assert "this run was trained with plug-in 'userplugin_carried'" in capsys.readouterr().err


def test_a_plugin_that_exits_while_imported_is_one_clear_error(tmp_path, monkeypatch, capsys, clean_modules):
    (tmp_path / "userplugin_exit.py").write_text("raise SystemExit(0)\n")
    config = _config(tmp_path, "parity_exit", imports=["userplugin_exit"])
    assert cli.main(["train", "--config", config]) == 2  # not 0: the command did nothing
    err = capsys.readouterr().err
    assert "plug-in 'userplugin_exit' exited while being imported (SystemExit: 0)" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_python_m_padnet_imports_nothing_from_the_current_directory(tmp_path):
    """A copied run directory's plug-in and a module shadowing an optional dependency, lying where the
    user stands: ``python -m padnet`` (which puts the current directory on sys.path) runs neither."""
    marker = tmp_path / "ran"
    for module in ("datasets", "userplugin_evil"):
        (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write({module!r})\n")
    (tmp_path / "glue.yaml").write_text(yaml.safe_dump(
        {"task": "glue", "glue": {"task": "sst2", "data_dir": None}, "run_dir": str(tmp_path / "run")}))
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(
        {"task": "parity_evil", "imports": ["userplugin_evil"], "run_dir": str(tmp_path / "run2")}))
    for config in ("glue.yaml", "plugin.yaml"):
        proc = subprocess.run([sys.executable, "-m", "padnet", "train", "--config", config, "--import",
                               "userplugin_evil"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists(), marker.read_text()


def test_entry_point_group_padnet_tasks(tmp_path, monkeypatch, clean_modules):
    _plugin(tmp_path, "userplugin_ep", "parity_ep")
    dist = tmp_path / "userplugin_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userplugin-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[padnet.tasks]\nparity_ep = userplugin_ep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "parity_ep" in known_tasks()
    assert get_task("parity_ep").name == "parity_ep"


def test_plugin_errors_name_the_module(tmp_path, monkeypatch, capsys, clean_modules):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PluginError, match="cannot import plug-in module 'userplugin_missing'"):
        import_plugins(["userplugin_missing"])
    with pytest.raises(PluginError, match="must be a Python module name"):
        import_plugins(["not a module"])
    (tmp_path / "userplugin_broken.py").write_text("raise RuntimeError('boom')\n")
    config = _config(tmp_path, "parity_x", imports=["userplugin_broken"])
    assert cli.main(["train", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "plug-in module 'userplugin_broken' failed while importing: RuntimeError: boom" in err


def test_sweep_clock_reports_runs_elapsed_and_estimate():
    now = [0.0]
    clock = SweepClock(4, clock=lambda: now[0])
    assert clock.line() == "0/4 runs done, 0m00s elapsed"
    now[0] = 60.0
    clock.done()
    assert clock.line() == "1/4 runs done, 1m00s elapsed, about 3m00s left"
    now[0] = 3 * 3600.0
    clock.done(), clock.done(), clock.done()
    assert clock.line() == "4/4 runs done, 3h00m elapsed, done"
