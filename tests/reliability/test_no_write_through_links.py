"""padnet never writes through a symbolic link it finds where it writes (issue 14): TensorBoard's run
subdirectory and event files, ``padnet report --out/--plot/--copy-results`` of every task. Each is
refused with one line naming the link, before anything is written, and the link's target is untouched."""

import json

import pytest

from padnet.cli import main
from padnet.train import Trainer, config_from_dict
from tests.helpers import TINY_RUN

pytest.importorskip("torch.utils.tensorboard")


def _config(run_dir, **updates):
    return config_from_dict({**TINY_RUN, "epochs": 1, **updates, "run_dir": str(run_dir)})


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """runs/ holding one finished tiny run."""
    root = tmp_path_factory.mktemp("runs")
    Trainer(_config(root / "a")).train()
    return root


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("where", ["directory", "event file"])
def test_tensorboard_is_not_written_through_a_link(tmp_path, capsys, where):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    Trainer(_config(run_dir, epochs=2)).train(stop_after_epoch=1)  # an interrupted run, TensorBoard off
    if where == "directory":
        link = run_dir / "tensorboard"
        link.symlink_to(elsewhere, target_is_directory=True)
    else:
        (run_dir / "tensorboard").mkdir()
        link = run_dir / "tensorboard" / "events.out.tfevents.1.host.1.0"
        link.symlink_to(elsewhere / "victim")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({**TINY_RUN, "epochs": 2}))
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--set", f"run_dir={run_dir}", "--set", "tensorboard=true"]) == 2
    assert f"{link} is a symbolic link; padnet does not write through links" in _one_line(capsys)
    assert not list(elsewhere.iterdir())


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_report_out_or_plot_that_is_a_link_is_refused(tmp_path, finished_runs, capsys, option):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out, link = tmp_path / "report.md", tmp_path / ("report.md" if option == "--out" else "plot.png")
    link.symlink_to(victim)
    capsys.readouterr()
    args = ["report", str(finished_runs), "--out", str(out)] + (["--plot", str(link)] if option == "--plot" else [])
    assert main(args) == 2
    assert f"{link} is a symbolic link; padnet does not write through links" in _one_line(capsys)
    assert victim.read_text() == "keep me\n" and link.is_symlink()
    assert not out.with_suffix(".png").exists() or option == "--out"  # nothing written before the refusal
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_report_copy_results_through_a_linked_directory_is_refused(tmp_path, finished_runs, capsys):
    dest, elsewhere = tmp_path / "copies", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / "a").symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    assert main(["report", str(finished_runs), "--copy-results", str(dest)]) == 2
    assert f"{dest / 'a'} is a symbolic link; padnet does not write through links" in _one_line(capsys)
    assert not list(elsewhere.iterdir())


def test_report_still_writes_atomically_without_links(tmp_path, finished_runs):
    out, dest = tmp_path / "docs" / "r.md", tmp_path / "docs" / "copies"
    out.parent.mkdir()
    assert main(["report", str(finished_runs), "--out", str(out), "--copy-results", str(dest)]) == 0
    assert out.read_text().startswith("# Results") and out.with_suffix(".png").is_file()
    assert json.loads((dest / "a" / "results.json").read_text())["name"]
    assert not list(tmp_path.rglob("*.tmp"))


def _glue_result(root, name="rte-static"):
    r = {"name": name, "task": "glue", "seed": 0, "mode": "static", "target_dynamic_ratio": 1.0, "main_metric": "score",
         "test": {"accuracy": 0.6, "score": 0.6}, "parameters": {"stored": 10, "deployable": 8},
         "time_per_epoch_s": 2.0, "partition": {}, "info": {"glue_task": "rte", "model_class": "Bert"},
         "config": config_from_dict({"task": "glue"}, preflight=False).to_dict()}
    r["config"]["glue"]["data_dir"] = None
    path = root / "r" / "seed0" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(r))


@pytest.mark.parametrize("case", ["linked-dir", "linked-out", "escaping-name"])
def test_glue_report_never_writes_through_links_or_outside_its_directory(tmp_path, capsys, case):
    runs, dest, elsewhere = tmp_path / "runs", tmp_path / "copies", tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    _glue_result(runs, name="../escaped" if case == "escaping-name" else "rte-static")
    out = tmp_path / "text.md"
    if case == "linked-dir":
        (dest / "r").symlink_to(elsewhere, target_is_directory=True)
    if case == "linked-out":
        out.symlink_to(elsewhere / "victim.md")
    code = main(["report", str(runs), "--out", str(out), "--copy-results", str(dest)])
    if case == "escaping-name":
        # Copies keep the run's place under the reported directory, whatever the run calls itself.
        assert code == 0 and (dest / "r" / "seed0" / "results.json").is_file()
        assert not (tmp_path / "escaped").exists() and not list(tmp_path.glob("*/escaped*"))
    else:
        assert code == 2
        link = dest / "r" if case == "linked-dir" else out
        assert f"{link} is a symbolic link; padnet does not write through links" in _one_line(capsys)
    assert not list(elsewhere.iterdir())
