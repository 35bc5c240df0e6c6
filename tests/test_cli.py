"""End to end from the CLI: train (static and PAD) with interruption and resume, eval, sweep, report."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import padnet
from padnet.cli import main
from padnet.train import Trainer, load_config
from padnet.train.run_files import load_checkpoint
from tests.helpers import TINY_RUN, assert_close_f64, history_without_times, write_config as write_tiny_config

# Subprocesses / end-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

# The reliability suite's tiny run, two epochs, static unless a test says otherwise, on the suite's threads.
TINY = {**{k: v for k, v in TINY_RUN.items() if k != "threads"}, "epochs": 2,
        "dynamic": {"mode": "static", "temperature_epochs": 1}}


def write_config(tmp_path, name, **updates):
    return write_tiny_config(tmp_path, name, base=TINY, **updates)


@pytest.mark.parametrize("mode", ["static", "pad"])
def test_train_resume_matches_uninterrupted_run(tmp_path, mode, capsys):
    config = write_config(tmp_path, mode, dynamic={"mode": mode, "dynamic_ratio": 0.3})
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["train", "--config", str(config), "--set", f"run_dir={full}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_dir"] == str(full)
    for name in ("config.yaml", "checkpoint.pt", "metrics.csv", "metrics.json", "results.json", "summary.json",
                 "train.log"):
        assert (full / name).is_file(), name
    results = json.loads((full / "results.json").read_text())
    assert results["epochs"] == 2 and 0 <= results["test"]["accuracy"] <= 1
    assert results["parameters"]["deployable"] > 0
    if mode == "pad":
        assert abs(results["dynamic_ratio"] - 0.3) < 0.01
        assert (full / "partition.json").is_file()

    # Interrupted after epoch 1's checkpoint, then resumed from the CLI with the same command.
    assert Trainer(load_config(config, [f"run_dir={split}"])).train(stop_after_epoch=1) is None
    assert load_checkpoint(split / "checkpoint.pt")["epoch"] == 1 and not (split / "results.json").exists()
    assert main(["train", "--config", str(config), "--set", f"run_dir={split}"]) == 0
    assert "resuming" in (split / "train.log").read_text()
    resumed = json.loads((split / "results.json").read_text())
    assert resumed["test"] == results["test"]
    assert history_without_times(split) == history_without_times(full)
    a, b = load_checkpoint(full / "checkpoint.pt")["model"], load_checkpoint(split / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # eval rebuilds the model from the checkpoint and gets the same accuracy
    capsys.readouterr()
    assert main(["eval", "--run", str(full)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == results["test"]["accuracy"]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    config = write_config(tmp_path, "s", epochs=1, dynamic={"mode": "pad", "dynamic_ratio": 0.3})
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        Trainer(load_config(config, [f"run_dir={tmp_path / name}", f"seed={seed}"])).train()
        runs[name] = history_without_times(tmp_path / name)
        runs[name + "mask"] = json.loads((tmp_path / name / "partition.json").read_text())["layers"]
    assert runs["a"] == runs["b"] and runs["amask"] == runs["bmask"]
    assert runs["a"] != runs["c"]


def test_version_names_padnet_and_torch(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"padnet {padnet.__version__} (torch {torch.__version__})\n"


def test_config_errors_exit_2_with_all_problems(tmp_path, capsys):
    config = write_config(tmp_path, "bad", bogus=1, optim={"lr": -1},
                          data={"name": "fashion_mnist", "root": str(tmp_path / "nope")})
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'bogus'" in err and "optim.lr=-1 must be greater than 0" in err
    assert "apt-get install -y dataset-fashion-mnist" in err
    assert not (tmp_path / "runs").exists()


def test_run_dir_with_other_config_is_refused(tmp_path, capsys):
    config = write_config(tmp_path, "r", epochs=1, run_dir=str(tmp_path / "run"))
    assert main(["train", "--config", str(config)]) == 0
    # A run written before a config key existed (here partition.static_init) is still the same run.
    saved = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["partition"]["static_init"]
    saved.write_text(yaml.safe_dump(old))
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), "--set", "optim.lr=0.01"]) == 2
    assert "different config (keys: optim.lr)" in capsys.readouterr().err
    # config.yaml is read as strictly as a config the user passes (a run directory may come from elsewhere).
    saved.write_text(saved.read_text() + "seed: 1\n")
    assert main(["train", "--config", str(config)]) == 2
    assert f"{saved} is not valid YAML: line" in capsys.readouterr().err


def test_sweep_skips_finished_and_report_writes_table_and_plot(tmp_path, capsys):
    base = write_config(tmp_path, "base", epochs=1)
    sweep = tmp_path / "sweep.yaml"
    out = tmp_path / "sweep"
    sweep.write_text(yaml.safe_dump({
        "base": "base.yaml", "output_dir": str(out), "seeds": [0, 1],
        "runs": [{"name": "static", "set": {"dynamic.mode": "static"}},
                 {"name": "pad-0.5", "set": {"dynamic.mode": "pad", "dynamic.dynamic_ratio": 0.5}}],
    }))
    assert base.exists()
    # --only splits a sweep between processes: here the static runs first, then the rest.
    assert main(["sweep", "--config", str(sweep), "--only", "stat*"]) == 0
    assert sorted(p.parent.parent.name for p in out.rglob("results.json")) == ["static", "static"]
    assert main(["sweep", "--config", str(sweep), "--only", "nothing-*"]) == 2
    assert "--only nothing-* matches no run" in capsys.readouterr().err
    assert main(["sweep", "--config", str(sweep), "--only", "pad-*", "--seeds", "1"]) == 0
    assert (out / "pad-0.5" / "seed1" / "results.json").is_file() and not (out / "pad-0.5" / "seed0").exists()
    assert main(["sweep", "--config", str(sweep), "--seeds", "7"]) == 2
    assert "--seeds 7 matches no run" in capsys.readouterr().err
    assert main(["sweep", "--config", str(sweep)]) == 0
    assert len(list(out.rglob("results.json"))) == 4
    stamp = (out / "pad-0.5" / "seed1" / "results.json").stat().st_mtime_ns
    assert main(["sweep", "--config", str(sweep)]) == 0
    assert "4 finished" in capsys.readouterr().out
    assert (out / "pad-0.5" / "seed1" / "results.json").stat().st_mtime_ns == stamp

    md, copies = tmp_path / "docs" / "vision.md", tmp_path / "docs" / "vision"
    assert main(["report", str(out), "--out", str(md), "--copy-results", str(copies)]) == 0
    text = md.read_text()
    assert "| static | static |" in text and "| pad-0.5 | pad (taylor) |" in text
    static = [json.loads(p.read_text())["test"]["accuracy"] for p in out.glob("static/seed*/results.json")]
    mean = 100 * sum(static) / 2
    assert f"{mean:.2f} ±" in text
    assert md.with_suffix(".png").stat().st_size > 1000
    assert len(list(copies.rglob("results.json"))) == 4


@pytest.mark.parametrize("granularity", ["element", "channel"])
def test_export_writes_a_deployed_file_that_reproduces_the_run(tmp_path, capsys, granularity):
    import padnet
    from padnet.train.rebuild import rebuild_run

    config = write_config(tmp_path, "e", epochs=1,
                          dynamic={"mode": "pad", "dynamic_ratio": 0.3, "granularity": granularity})
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["form"] == "deployed" and out["path"] == str(run / "model.safetensors")
    assert (out["exported"]["accuracy"] == out["run"]["accuracy"]
            == json.loads((run / "results.json").read_text())["test"]["accuracy"])
    # The file loads on its own (no config, no model factory) and gives the training form's outputs.
    loaded = padnet.load(run / "model.safetensors").eval()
    deployed = [m for m in loaded.modules() if type(m).__name__ == "DeployedPADConv2d"]
    assert deployed and all(m.granularity == granularity for m in deployed)
    assert loaded.padnet_config["granularity"] == granularity
    model = rebuild_run(run, None, None).model.eval()
    # Both forms in float64 (the stored float32 values are exact there): the same function, whatever the
    # CPU's vector unit sums in which order.
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close_f64(loaded.double()(x), model.double()(x))
    results = json.loads((run / "results.json").read_text())
    assert out["stored_params"] == out["deployable_params"] == results["parameters"]["deployable"]
    assert out["deployable_params"] < padnet.summary(model).stored_params


def test_export_reuses_the_runs_own_evaluation_and_can_skip_its_check(tmp_path, capsys, monkeypatch):
    from padnet.train import rebuild

    config = write_config(tmp_path, "e", epochs=1)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"run_dir={run}"]) == 0
    # What the run stored for its checkpoint is exactly what a fresh evaluation of the same weights gives.
    rebuilt = rebuild.rebuild_run(run)
    assert rebuild.stored_eval(rebuilt, None) == rebuilt.evaluate()
    assert rebuild.stored_eval(rebuilt, ["device=cpu"]) is None  # an override may change what is evaluated
    calls = []
    evaluate = rebuild.RebuiltRun.evaluate
    monkeypatch.setattr(rebuild.RebuiltRun, "evaluate", lambda self, model=None, **kwargs: calls.append(model) or
                        evaluate(self, model, **kwargs))
    capsys.readouterr()
    assert main(["export", "--run", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(calls) == 1 and calls[0] is not None  # only the written file is evaluated
    assert out["run"] == out["exported"] == rebuild.stored_eval(rebuilt, None)
    calls.clear()
    assert main(["export", "--run", str(run), "--set", "device=cpu"]) == 0
    assert len(calls) == 2 and calls[0] is None  # an override: the rebuilt model is evaluated first
    calls.clear()
    capsys.readouterr()
    target = tmp_path / "unchecked.safetensors"
    assert main(["export", "--run", str(run), "--no-check", "--out", str(target)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert calls == [] and out["exported"] is None and target.is_file()


def test_export_of_a_static_run_and_errors(tmp_path, capsys, monkeypatch):
    import sys

    config = write_config(tmp_path, "s", epochs=1)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "static.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["form"] == "plain"
    with pytest.raises(SystemExit, match="give --run DIR or --checkpoint FILE"):
        main(["export"])
    assert main(["export", "--run", str(tmp_path / "nowhere")]) == 2
    assert f"no checkpoint at {tmp_path / 'nowhere' / 'checkpoint.pt'}" in capsys.readouterr().err

    # A deployment that changes the model is caught; no file is written and an earlier one is kept.
    config = write_config(tmp_path, "p", epochs=1, dynamic={"mode": "pad", "dynamic_ratio": 0.3})
    assert main(["train", "--config", str(config), "--set", f"run_dir={tmp_path / 'pad'}"]) == 0
    deploy_module = sys.modules["padnet.deploy"]
    real = deploy_module.deploy

    def broken(model, **kwargs):
        real(model, **kwargs)
        for name, p in model.named_parameters():
            if name.endswith("dynamic_values"):
                p.data.mul_(3)
        return model

    monkeypatch.setattr(deploy_module, "deploy", broken)
    assert main(["export", "--run", str(tmp_path / "pad")]) == 1
    assert "does not reproduce the run: accuracy" in capsys.readouterr().err
    assert not list((tmp_path / "pad").glob("*.safetensors"))
    (tmp_path / "pad" / "model.safetensors").write_bytes(b"earlier")
    assert main(["export", "--run", str(tmp_path / "pad")]) == 1
    assert (tmp_path / "pad" / "model.safetensors").read_bytes() == b"earlier"
    assert not [p for p in (tmp_path / "pad").glob(".*") if p.name not in (".padnet-run", ".padnet-run.lock")]


def test_demo_trains_four_runs_exports_times_and_plots(tmp_path, capsys):
    # Without Fashion-MNIST at --data the demo says so and runs on scikit-learn's digits (about 40 s).
    assert main(["demo", "--data", str(tmp_path / "no-fmnist"), "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "Falling back to scikit-learn's 8x8 digits" in captured.err
    lines = captured.out.splitlines()
    assert ("| run | test accuracy (%) | deployable params | model file | inference vs static "
            "| time / epoch (s) |") in lines
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines if line.startswith(("| static |", "| dy-conv |", "| pad-0.3 |", "| pad-0.3-channel |"))}
    assert list(rows) == ["static", "dy-conv", "pad-0.3", "pad-0.3-channel"]
    assert rows["static"][3] == "1.00x"
    for name, cells in rows.items():
        results = json.loads((tmp_path / "demo" / name / "seed0" / "results.json").read_text())
        # the table's accuracy is the exported file's, which export_run checked equals the run's
        assert cells[0] == f"{100 * results['test']['accuracy']:.2f}"
        assert int(cells[1].replace(",", "")) == results["parameters"]["deployable"]
        assert (tmp_path / "demo" / name / "seed0" / "model.safetensors").is_file()
    params = {name: int(cells[1].replace(",", "")) for name, cells in rows.items()}
    assert params["static"] < params["pad-0.3"] < params["dy-conv"]
    assert params["static"] < params["pad-0.3-channel"] < params["dy-conv"]
    channel = yaml.safe_load((tmp_path / "demo" / "pad-0.3-channel" / "seed0" / "config.yaml").read_text())
    assert channel["dynamic"]["granularity"] == "channel"
    reading = [line for line in lines if line.startswith("PAD (kappa 0.3) ")]
    assert len(reading) == 1 and "of its parameters" in reading[0] and "With channel masks PAD infers at" in reading[0]
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000
    assert any(line.strip().startswith("padnet export --run ") for line in lines)


def test_demo_config_file_is_the_demo_recipe():
    from padnet.demo import DEMO_BASE

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "fmnist_demo.yaml").read_text())
    for key in ("epochs", "batch_size", "threads", "eval_batch_size", "model", "optim"):
        assert raw[key] == DEMO_BASE[key], key
    assert raw["dynamic"]["temperature_epochs"] == DEMO_BASE["dynamic"]["temperature_epochs"]
    assert raw["partition"]["rounds"] == DEMO_BASE["partition"]["rounds"]
