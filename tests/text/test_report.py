"""The GLUE report: means and stds over seeds, the average only over tasks every method finished."""

import json

import pytest

from padnet.text import report


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
    # mrpc has no PAD run yet: the average must leave mrpc out for every method.
    summary = report.summarize(report.collect(tmp_path))
    assert summary["methods"] == ["dense", "PAD-MoE k=0.5"]
    assert summary["average_over"] == ["rte"]
    assert summary["averages"]["dense"] == pytest.approx(0.65)
    assert summary["averages"]["PAD-MoE k=0.5"] == pytest.approx(0.5)
    text = report.markdown(summary, [])
    assert "| RTE | acc | 65.0 ± 7.1 (n=2) | 50.0 (n=1) |" in text
    assert "| MRPC | acc | 80.0 (n=1) | — |" in text
