"""`padnet report`'s table and plot name the metric and the fully dynamic baseline of the runs they show."""

from padnet.train.sweep import dynamic_host_label, markdown_table, plot, summarize


def fake_result(name, mode, kind, metric, value, seed=0):
    return {"name": name, "mode": mode, "scorer": "taylor" if mode == "pad" else None, "seed": seed,
            "dynamic_ratio": {"static": 0.0, "dynamic": 1.0}.get(mode, 0.5), "main_metric": metric,
            "test": {metric: value}, "parameters": {"deployable": 100}, "time_per_epoch_s": 1.0, "epochs": 1,
            "config": {"dynamic": {"kind": kind, "mode": mode}}}


def test_text_runs_show_their_metric_unscaled_and_the_moe_as_baseline(tmp_path):
    rows = summarize([fake_result("dense", "static", "moe", "score", 0.78),
                      fake_result("moe", "dynamic", "moe", "score", 0.76),
                      fake_result("pad-moe", "pad", "moe", "score", 0.80)])
    table = markdown_table(rows)
    assert "| test score mean ± std |" in table and "accuracy (%)" not in table
    assert "| 0.80 ± n/a |" in table  # the score as it is, not x100
    assert dynamic_host_label(rows) == "MoE (fully dynamic)"
    assert plot(rows, tmp_path / "p.png").stat().st_size > 1000


def test_vision_runs_keep_accuracy_in_percent_and_dy_conv_as_baseline():
    rows = summarize([fake_result("static", "static", "conv", "accuracy", 0.8),
                      fake_result("dyconv", "dynamic", "conv", "accuracy", 0.81)])
    table = markdown_table(rows)
    assert "| test accuracy (%) mean ± std |" in table and "| 81.00 ± n/a |" in table
    assert dynamic_host_label(rows) == "DY-Conv (fully dynamic)"
