"""One report system for every task (``padnet.report``): statistics over seeds, paired differences with a
95 % t-interval, metric and baseline names, the shared recipe, and the files ``padnet report`` writes."""

import json
import math

import pytest
from scipy import stats

from padnet.cli import main
from padnet.errors import RunError
from padnet.report import (
    Stat,
    build_report,
    collect,
    figure as plot_module,
    markdown,
    median,
    paired_difference,
    plot,
    shared_recipe,
    t_quantile_975,
    write_report,
)


def fake_result(root, name, mode, seed, value, kind="conv", metric="accuracy", task="image_classification",
                config=None, **extra):
    """A results.json as the trainer writes it, at root/name/seed<seed>/results.json."""
    r = {"name": name, "task": task, "mode": mode, "seed": seed, "scorer": "taylor" if mode == "pad" else None,
         "dynamic_ratio": {"static": 0.0, "dynamic": 1.0}.get(mode, 0.5), "main_metric": metric,
         "test": {metric: value}, "parameters": {"deployable": 100, "stored": 100}, "time_per_epoch_s": 1.0,
         "epochs": 1, "config": config or {"dynamic": {"kind": kind, "mode": mode}}, **extra}
    path = root / name / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))
    return path


def report_of(root, **kwargs):
    return build_report(collect([root]), [str(root)], **kwargs)


# ------------------------------------------------------------------------------------------ statistics
def test_paired_difference_matches_a_hand_computed_t_interval():
    # differences 0.02, -0.04, 0.05: mean 0.01, std sqrt(0.0042 / 2), half width t(2) * std / sqrt(3)
    d = paired_difference({0: 0.62, 1: 0.66, 2: 0.55, 5: 0.9}, {0: 0.60, 1: 0.70, 2: 0.50, 7: 0.1})
    assert d.seeds == (0, 1, 2) and d.n == 3  # seeds 5 and 7 have no partner
    assert d.differences == pytest.approx((0.02, -0.04, 0.05))
    assert d.mean == pytest.approx(0.01)
    assert d.std == pytest.approx(math.sqrt(0.0021))
    half = 4.302652729749464 * math.sqrt(0.0021) / math.sqrt(3)  # t(2) = 4.3027; half = 0.113839
    assert (d.low, d.high) == (pytest.approx(0.01 - half), pytest.approx(0.01 + half))
    assert d.low == pytest.approx(-0.10384, abs=1e-5) and d.high == pytest.approx(0.12384, abs=1e-5)
    one = paired_difference({0: 0.7, 1: 0.8}, {1: 0.75})
    assert one.n == 1 and one.mean == pytest.approx(0.05) and math.isnan(one.std) and math.isnan(one.low)
    assert paired_difference({0: 0.7}, {1: 0.7}) is None


# The table t_quantile_975 had before it took scipy's quantiles (df 1..30, 4 decimals).
OLD_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
            2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
            2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def test_t_quantiles_are_scipys_and_the_old_table_to_its_precision():
    for df in list(range(1, 61)) + [100, 1000, 10**6]:
        assert t_quantile_975(df) == stats.t.ppf(0.975, df), df
        assert type(t_quantile_975(df)) is float
    assert tuple(round(t_quantile_975(df), 4) for df in range(1, 31)) == OLD_T975
    with pytest.raises(ValueError, match="df=0 must be an integer >= 1"):
        t_quantile_975(0)


def test_stat_is_the_mean_and_sample_std_and_the_median_is_statistics_median():
    s = Stat.of([0.1, 0.2, 0.6])
    assert (s.mean, s.std, s.n) == (pytest.approx(0.3), pytest.approx(math.sqrt(0.07)), 3)
    one = Stat.of([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and one.n == 1
    inf = Stat.of([math.inf, 1.0])  # no warning, no error: as the arithmetic gives it
    assert inf.mean == math.inf and math.isnan(inf.std)
    with pytest.raises(ValueError, match="at least one value"):
        Stat.of([])
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5 and math.isnan(median([]))


# ------------------------------------------------------------------------------------- names and labels
def test_fractions_are_shown_x100_under_a_heading_that_says_so(tmp_path):
    fake_result(tmp_path, "dense", "static", 0, 0.78, kind="moe", metric="score", task="other")
    fake_result(tmp_path, "moe", "dynamic", 0, 0.76, kind="moe", metric="score", task="other")
    text = markdown(report_of(tmp_path), "t")
    assert "| test score (x100) mean ± std |" in text and "(%)" not in text.split("## Paired")[0]
    assert "| 78.00 (n=1) |" in text and "| 0.78" not in text


def test_accuracy_is_a_percentage_and_other_metrics_are_shown_as_they_are(tmp_path):
    fake_result(tmp_path / "a", "static", "static", 0, 0.8)
    fake_result(tmp_path / "a", "dyconv", "dynamic", 0, 0.81)
    assert "| test accuracy (%) mean ± std |" in markdown(report_of(tmp_path / "a"), "t")
    assert "| 81.00 (n=1) |" in markdown(report_of(tmp_path / "a"), "t")
    fake_result(tmp_path / "b", "static", "static", 0, 0.4, metric="loss")
    text = markdown(report_of(tmp_path / "b"), "t")
    assert "| test loss mean ± std |" in text and "| 0.40 (n=1) |" in text and "x100)" not in text


def _legend(report, tmp_path, monkeypatch):
    labels = []
    def keep_legend(fig, path, **kwargs):  # instead of writing the PNG: the legend of the left plot
        labels.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts())

    monkeypatch.setattr(plot_module, "atomic_savefig", keep_legend)
    plot(report, tmp_path / "p.png")
    return labels


def test_the_fully_dynamic_baseline_of_moe_runs_is_the_moe(tmp_path, monkeypatch):
    for seed, (dense, moe, pad) in enumerate([(0.78, 0.76, 0.80), (0.70, 0.72, 0.75)]):
        fake_result(tmp_path, "dense", "static", seed, dense, kind="moe", metric="score")
        fake_result(tmp_path, "moe", "dynamic", seed, moe, kind="moe", metric="score")
        fake_result(tmp_path, "pad-moe", "pad", seed, pad, kind="moe", metric="score")
    report = report_of(tmp_path)
    assert report.baseline == "moe"
    text = markdown(report, "t")
    assert "minus moe (the fully dynamic MoE)" in text and "DY-Conv" not in text
    assert "| pad-moe | +3.50 | 0.71 | [-2.85, +9.85] | 2 |" in text  # differences 4 and 3 points
    assert _legend(report, tmp_path, monkeypatch) == ["static", "MoE (fully dynamic)", "PAD-MoE (taylor)"]


def test_the_fully_dynamic_baseline_of_conv_runs_is_dy_conv(tmp_path, monkeypatch):
    fake_result(tmp_path, "static", "static", 0, 0.80)
    fake_result(tmp_path, "dyconv", "dynamic", 0, 0.81)
    report = report_of(tmp_path)
    assert "minus dyconv (the fully dynamic DY-Conv)" in markdown(report, "t")
    assert _legend(report, tmp_path, monkeypatch) == ["static", "DY-Conv (fully dynamic)"]


def test_baseline_can_be_chosen_and_must_exist(tmp_path):
    for seed in (0, 1):
        fake_result(tmp_path, "static", "static", seed, 0.80 + seed / 100)
        fake_result(tmp_path, "dyconv", "dynamic", seed, 0.83)
    report = report_of(tmp_path, baseline="static")
    assert [(d.label, d.paired.mean) for d in report.differences] == [("dyconv", pytest.approx(0.025))]
    assert "minus static (baseline)" in markdown(report, "t")
    with pytest.raises(RunError, match="baseline='moe' is not a configuration of these runs; choose one of: "
                                       "static, dyconv"):
        report_of(tmp_path, baseline="moe")


# ------------------------------------------------------------------------------------------ the recipe
def test_the_shared_recipe_holds_only_what_every_run_shares():
    recipe, varies = shared_recipe([
        {"name": "a", "seed": 0, "epochs": 3, "optim": {"name": "sgd", "lr": 0.1}, "model": {"width": 16}},
        {"name": "b", "seed": 1, "epochs": 3, "optim": {"name": "sgd", "lr": 0.05}},
    ])
    assert recipe == {"epochs": 3, "optim": {"name": "sgd"}}
    assert varies == ["optim.lr", "model.width"]


def test_the_report_shows_the_shared_recipe_not_the_first_runs(tmp_path):
    for name, mode, lr in (("static", "static", 0.1), ("dyconv", "dynamic", 0.05)):
        fake_result(tmp_path, name, mode, 0, 0.8, config={"epochs": 3, "dynamic": {"kind": "conv", "mode": mode},
                                                          "optim": {"name": "sgd", "lr": lr}})
    text = markdown(report_of(tmp_path), "t").split("Shared recipe")[1]
    assert "(differing between runs: `dynamic.mode`, `optim.lr`)" in text
    assert "epochs: 3" in text and "name: sgd" in text and "lr:" not in text and "mode:" not in text


# ------------------------------------------------------------------------------- grouping and errors
def test_runs_are_grouped_by_label_with_mean_std_and_n(tmp_path):
    for seed, value in enumerate([0.80, 0.82, 0.84]):
        fake_result(tmp_path, "pad-0.3", "pad", seed, value)
    group = report_of(tmp_path).group(None, "pad-0.3")
    stat = group.stat("accuracy")
    assert group.seeds == [0, 1, 2] and stat.n == 3
    assert stat.mean == pytest.approx(0.82) and stat.std == pytest.approx(0.02)


def test_two_runs_of_one_configuration_and_seed_are_refused(tmp_path):
    fake_result(tmp_path / "a", "static", "static", 0, 0.8)
    fake_result(tmp_path / "b", "static", "static", 0, 0.7)
    with pytest.raises(RunError, match="are both seed 0 of 'static'"):
        build_report(collect([tmp_path / "a", tmp_path / "b"]))


def test_runs_of_several_tasks_need_a_task(tmp_path):
    fake_result(tmp_path, "static", "static", 0, 0.8)
    fake_result(tmp_path, "other", "static", 0, 0.8, task="other")
    with pytest.raises(RunError, match=r"several tasks \(image_classification, other\); report one at a time "
                                       "with --task NAME"):
        collect([tmp_path])
    assert [r.result["name"] for r in collect([tmp_path], task="other")] == ["other"]


def test_a_damaged_results_file_is_named(tmp_path):
    bad = tmp_path / "r" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"name": "r"}')
    with pytest.raises(RunError, match=f"{bad}: not a results file of a finished run \\(no seed, mode"):
        collect([tmp_path])


# ------------------------------------------------------------------------------------------ the files
def test_padnet_report_of_several_directories_writes_markdown_plot_json_and_copies(tmp_path, capsys):
    sweep_a, sweep_b, docs = tmp_path / "a", tmp_path / "b", tmp_path / "docs"
    for seed in (0, 1):
        fake_result(sweep_a, "static", "static", seed, 0.80)
        fake_result(sweep_b, "dyconv", "dynamic", seed, 0.82 + seed / 100)
    (docs / "copies").mkdir(parents=True)
    (docs / "copies" / "NOTES.md").write_text("## Notes\n\nHand-written.\n")
    assert main(["report", str(sweep_a), str(sweep_b), "--out", str(docs / "r.md"),
                 "--copy-results", str(docs / "copies")]) == 0
    text = (docs / "r.md").read_text()
    assert text.startswith("# Results: a and others\n") and "![test accuracy (%) per run](r.png)" in text
    assert "| static | -2.50 | 0.71 | [-8.85, +3.85] | 2 |" in text  # 12.706 * 0.7071 / sqrt(2) = 6.35
    assert text.index("Hand-written.") < text.index("Per-seed values")
    assert (docs / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((docs / "copies" / "report.json").read_text())
    assert summary["baseline"] == "dyconv" and summary["differences"][0]["high"] == pytest.approx(0.0385, abs=1e-4)
    assert summary["groups"][0]["metrics"]["accuracy"]["std"] == 0.0
    assert sorted(p.relative_to(docs / "copies").as_posix() for p in (docs / "copies").rglob("results.json")) == [
        "dyconv/seed0/results.json", "dyconv/seed1/results.json", "static/seed0/results.json",
        "static/seed1/results.json"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_one_seed_has_no_std_and_json_has_no_nan(tmp_path):
    fake_result(tmp_path / "runs", "static", "static", 0, 0.8)
    fake_result(tmp_path / "runs", "dyconv", "dynamic", 0, 0.9)
    report, text = write_report([tmp_path / "runs"], json_path=tmp_path / "s.json")
    assert "| 80.00 (n=1) |" in text and "| static | -10.00 | n/a | n/a | 1 |" in text
    summary = (tmp_path / "s.json").read_text()
    assert "NaN" not in summary and json.loads(summary)["differences"][0]["low"] is None


# ------------------------------------------------------------------ CondConv and the paper's ablations
def test_condconv_and_pad_ablations_are_named_and_dy_conv_stays_the_baseline(tmp_path, monkeypatch):
    pad = lambda **d: {"dynamic": {"kind": "conv", "mode": "pad", **d.get("dynamic", {})},  # noqa: E731
                       "partition": {"rounds": d.get("rounds", 5)}}
    for seed in (0, 1):
        fake_result(tmp_path, "static", "static", seed, 0.80)
        fake_result(tmp_path, "dyconv", "dynamic", seed, 0.83 + seed / 100)
        fake_result(tmp_path, "condconv", "dynamic", seed, 0.82,
                    config={"dynamic": {"kind": "conv", "mode": "dynamic", "routing": "sigmoid"}})
        fake_result(tmp_path, "pad", "pad", seed, 0.84, config=pad())
        fake_result(tmp_path, "oneshot", "pad", seed, 0.84, config=pad(rounds=1))
        fake_result(tmp_path, "fixed", "pad", seed, 0.84, config=pad(dynamic={"lambda_mode": "none"}))
    report = report_of(tmp_path)
    assert report.baseline == "dyconv"  # two fully dynamic configurations: the paper's baseline is DY-Conv
    text = markdown(report, "t")
    assert "minus dyconv (the fully dynamic DY-Conv)" in text
    assert "| condconv | -1.50 | 0.71 | [-7.85, +4.85] | 2 |" in text
    assert "| oneshot | pad (taylor, one-shot) |" in text and "| fixed | pad (taylor, lambda: fixed) |" in text
    assert "| pad | pad (taylor) |" in text
    assert report_of(tmp_path, baseline="condconv").baseline_group.method == "CondConv"
    assert _legend(report, tmp_path, monkeypatch) == [
        "static", "DY-Conv (fully dynamic)", "CondConv (fully dynamic)", "PAD (taylor, lambda: fixed)",
        "PAD (taylor, one-shot)", "PAD (taylor)"]


def test_the_figure_shows_each_paired_difference_with_its_interval(tmp_path, monkeypatch):
    for seed, (dy, pad) in enumerate([(0.80, 0.82), (0.81, 0.84), (0.79, 0.80)]):
        fake_result(tmp_path, "static", "static", seed, dy - 0.05)
        fake_result(tmp_path, "dyconv", "dynamic", seed, dy)
        fake_result(tmp_path, "pad", "pad", seed, pad)
    panels = []
    monkeypatch.setattr(plot_module, "atomic_savefig", lambda fig, path, **kw: panels.extend(fig.axes))
    plot(report_of(tmp_path), tmp_path / "p.png")
    assert len(panels) == 3
    ticks = [t.get_text() for t in panels[2].get_yticklabels()]
    assert ticks == ["pad", "static"]  # bottom to top: the first configuration (static) at the top
    # pad - dyconv: +2, +3, +1 points: mean +2, the interval [2 - 2.48, 2 + 2.48] (t(2) * 1 / sqrt(3))
    (line,) = [ln for ln in panels[2].lines if ln.get_marker() == "o" and ln.get_ydata()[0] == 0]
    assert line.get_xdata()[0] == pytest.approx(2.0)
