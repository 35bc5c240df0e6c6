"""The GLUE report: means and stds over seeds, the average only over tasks every method finished."""

import json

import pytest

from padnet.text import report
from padnet.train.config import config_from_dict


def fake_result(root, task, mode, seed, test):
    name = f"{task}-{mode}"
    r = {"name": name, "task": "glue", "seed": seed, "mode": mode, "target_dynamic_ratio": 0.5 if mode == "pad" else 1.0,
         "test": test, "parameters": {"stored": 10, "deployable": 8}, "time_per_epoch_s": 2.0,
         "partition": {"wall_time_s": 1.0} if mode == "pad" else {},
         "info": {"glue_task": task, "model_class": "Bert"},
         "config": {"glue": {"eval_split": "dev", "data_dir": None}}}
    path = root / name / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(r))


def test_summary_and_average(tmp_path):
    fake_result(tmp_path, "rte", "static", 0, {"accuracy": 0.6, "score": 0.6})
    fake_result(tmp_path, "rte", "static", 1, {"accuracy": 0.7, "score": 0.7})
    fake_result(tmp_path, "rte", "pad", 0, {"accuracy": 0.5, "score": 0.5})
    fake_result(tmp_path, "mrpc", "static", 0, {"accuracy": 0.8, "f1": 0.9, "score": 0.85})
    # mrpc has no PAD run yet: dense averages both tasks, PAD gets no average (not one over rte only).
    summary = report.summarize(report.collect(tmp_path))
    assert summary["methods"] == ["dense", "PAD-MoE k=0.5"]
    assert summary["average_over"] == ["mrpc", "rte"]
    assert summary["averages"] == {"dense": pytest.approx((0.85 + 0.65) / 2)}
    text = report.markdown(summary, [])
    assert "| RTE | acc | 65.0 ± 7.1 (n=2) | 50.0 (n=1) |" in text
    assert "| MRPC | acc | 80.0 (n=1) | — |" in text
    assert "| **average** | score | **75.0** | — |" in text


def test_paired_differences_match_seeds(tmp_path):
    for seed, (moe, pad) in enumerate([(0.60, 0.62), (0.70, 0.66), (0.50, 0.55)]):
        fake_result(tmp_path, "rte", "dynamic", seed, {"accuracy": moe, "score": moe})
        if seed != 2:  # PAD seed 2 not finished: only seeds both have are paired
            fake_result(tmp_path, "rte", "pad", seed, {"accuracy": pad, "score": pad})
    summary = report.summarize(report.collect(tmp_path))
    diffs = report.paired_differences(summary, "MoE")
    assert diffs["rte"]["PAD-MoE k=0.5"] == pytest.approx([0.02, -0.04])
    text = report.markdown(summary, [])
    assert "| RTE | -1.0 ± 4.2 (n=2) |" in text


def test_main_writes_report_plot_and_copies(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "text.md"
    for seed, seconds in enumerate([2.0, 2.0, 50.0]):  # one run slowed by other load on the machine
        fake_result(runs, "rte", "static", seed, {"accuracy": 0.6, "score": 0.6})
        path = runs / "rte-static" / f"seed{seed}" / "results.json"
        r = json.loads(path.read_text())
        r["time_per_epoch_s"] = seconds
        r["config"] = config_from_dict({"task": "glue"}, preflight=False).to_dict()  # the recipe line reads it
        r["config"]["glue"]["data_dir"] = None
        path.write_text(json.dumps(r))
    assert report.main([str(runs), "--out", str(out), "--copy-results", str(tmp_path / "docs" / "text")]) == 0
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = out.read_text()
    assert "![GLUE dev scores per task and method](text.png)" in text
    assert "| dense | 10 | 8 | RTE | 2 | — |" in text  # the median time, not the mean (18)
    assert json.loads((tmp_path / "docs" / "text" / "rte-static" / "seed2.json").read_text())["time_per_epoch_s"] == 50.0
    assert not list((tmp_path / "docs").rglob("*.tmp"))
