"""GLUE runs in ``padnet report``: one sub-task per GLUE task, one column per method, means and stds over
seeds, the average only over tasks every method finished, paired differences to the MoE."""

import json

import pytest

from padnet.cli import main
from padnet.report import build_report, collect, markdown
from padnet.train.config import config_from_dict


def fake_result(root, task, mode, seed, test):
    name = f"{task}-{mode}"
    r = {"name": name, "task": "glue", "seed": seed, "mode": mode, "main_metric": "score",
         "target_dynamic_ratio": 0.5 if mode == "pad" else 1.0, "test": test,
         "parameters": {"stored": 10, "deployable": 8}, "time_per_epoch_s": 2.0,
         "partition": {"wall_time_s": 1.0} if mode == "pad" else {},
         "info": {"glue_task": task, "model_class": "Bert"},
         "config": {"glue": {"eval_split": "dev", "data_dir": None}, "dynamic": {"kind": "moe"}}}
    path = root / name / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(r))
    return path


def test_summary_and_average(tmp_path):
    fake_result(tmp_path, "rte", "static", 0, {"accuracy": 0.6, "score": 0.6})
    fake_result(tmp_path, "rte", "static", 1, {"accuracy": 0.7, "score": 0.7})
    fake_result(tmp_path, "rte", "pad", 0, {"accuracy": 0.5, "score": 0.5})
    fake_result(tmp_path, "mrpc", "static", 0, {"accuracy": 0.8, "f1": 0.9, "score": 0.85})
    # mrpc has no PAD run yet: dense averages both tasks, PAD gets no average (not one over rte only).
    report = build_report(collect([tmp_path]))
    assert report.labels == ["dense", "PAD-MoE k=0.5"]
    assert report.subtasks == ["mrpc", "rte"]  # GLUE's order
    assert report.average_over == ["mrpc", "rte"]
    assert report.averages == {"dense": pytest.approx((0.85 + 0.65) / 2)}
    text = markdown(report, "t")
    assert "## Dev scores (x100, mean ± std over seeds)" in text
    assert "| RTE | acc | 65.0 ± 7.1 (n=2) | 50.0 (n=1) |" in text
    assert "| MRPC | acc | 80.0 (n=1) | — |" in text
    assert "|  | F1 | 90.0 (n=1) | — |" in text and "|  | score | 85.0 (n=1) | — |" in text
    assert "| **average** | score | **75.0** | — |" in text


def test_paired_differences_match_seeds(tmp_path):
    for seed, (moe, pad) in enumerate([(0.60, 0.62), (0.70, 0.66), (0.50, 0.55)]):
        fake_result(tmp_path, "rte", "dynamic", seed, {"accuracy": moe, "score": moe})
        if seed != 2:  # PAD seed 2 not finished: only seeds both have are paired
            fake_result(tmp_path, "rte", "pad", seed, {"accuracy": pad, "score": pad})
    report = build_report(collect([tmp_path]))
    assert report.baseline == "MoE"
    [diff] = report.differences
    assert diff.label == "PAD-MoE k=0.5" and diff.paired.differences == pytest.approx([0.02, -0.04])
    text = markdown(report, "t")
    # mean -1.0, std 4.2; 95 %: -1.0 ± 12.706 * 4.24 / sqrt(2) = [-39.1, +37.1]
    assert "| PAD-MoE k=0.5 | -1.0 | 4.2 | [-39.1, +37.1] | 2 |" in text
    assert "minus MoE (the fully dynamic MoE)" in text and "DY-Conv" not in text


def test_padnet_report_writes_report_plot_and_copies(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "text.md"
    for seed, seconds in enumerate([2.0, 2.0, 50.0]):  # one run slowed by other load on the machine
        path = fake_result(runs, "rte", "static", seed, {"accuracy": 0.6, "score": 0.6})
        r = json.loads(path.read_text())
        r["time_per_epoch_s"] = seconds
        r["config"] = config_from_dict({"task": "glue"}, preflight=False).to_dict()
        r["config"]["glue"]["data_dir"] = None
        path.write_text(json.dumps(r))
    assert main(["report", str(runs), "--out", str(out), "--copy-results", str(tmp_path / "docs" / "text")]) == 0
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = out.read_text()
    assert "![dev score (x100) per method](text.png)" in text
    assert "| method | mode | dynamic ratio | RTE dev accuracy (%) mean ± std |" in text
    assert "| dense | static |  | 60.0 ± 0.0 (n=3) | 8 | 10 | 2.0 |" in text  # the median time, not the mean (18)
    copied = tmp_path / "docs" / "text" / "rte-static" / "seed2" / "results.json"
    assert json.loads(copied.read_text())["time_per_epoch_s"] == 50.0
    assert json.loads((tmp_path / "docs" / "text" / "report.json").read_text())["task"] == "glue"
    assert not list((tmp_path / "docs").rglob("*.tmp"))


def test_mnli_mismatched_is_its_own_subtask_with_the_metric_key_the_run_used():
    from padnet.text.glue_task import metric_key
    from padnet.text.report import glue_task_of

    result = {"info": {"glue_task": "mnli"}, "config": {"glue": {"eval_split": "dev_mismatched"}}}
    assert glue_task_of(result) == metric_key("mnli", "dev_mismatched") == "mnli_mm"
    assert glue_task_of(result | {"config": {"glue": {"eval_split": "dev_matched"}}}) == "mnli"
    assert glue_task_of({"info": {"glue_task": "rte"}, "config": {"glue": {}}}) == metric_key("rte", None) == "rte"
