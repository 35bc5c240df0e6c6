"""benchmarks/attention_spread.py on a tiny finished run: a constant attention has spread 0, a trained one
does not, every attention layer is measured, and a run without attention is refused by name."""

import pytest
import torch

from padnet.cli import main
from tests.helpers import benchmark_module

from .test_cli import write_config


def bench():
    return benchmark_module("attention_spread")


def finished_run(tmp_path, mode):
    run = tmp_path / mode
    config = write_config(tmp_path, mode, epochs=1, dynamic={"mode": mode})
    assert main(["train", "--config", str(config), "--set", f"run_dir={run}"]) == 0
    return run


def test_spread_is_zero_for_a_constant_attention_and_positive_for_a_trained_one(tmp_path, monkeypatch, capsys):
    b = bench()
    run = finished_run(tmp_path, "dynamic")
    capsys.readouterr()
    trained = b.spread_of(run, 40)
    model = b.rebuild_run(run).model
    names = [n for n, m in model.named_modules() if type(m).__name__ == "KernelAttention"]
    assert sorted(trained["layers"]) == sorted(names) and trained["examples"] == 40
    assert trained["max_relative"] > 0 and all(v["pooled_cv"] > 0 for v in trained["layers"].values())

    rebuild = b.rebuild_run

    def constant_attention(run_dir):  # FC1 = 0: alpha(x) = softmax(FC2's bias / tau) for every input
        rebuilt = rebuild(run_dir)
        with torch.no_grad():
            for m in rebuilt.model.modules():
                if type(m).__name__ == "KernelAttention":
                    m.fc1.weight.zero_()
        return rebuilt

    monkeypatch.setattr(b, "rebuild_run", constant_attention)
    constant = b.spread_of(run, 40)
    assert all(v["spread"] == 0 and v["relative"] == 0 for v in constant["layers"].values())
    assert all(sum(v["mean_alpha"]) == pytest.approx(1) for v in constant["layers"].values())  # softmax


def test_a_run_without_attention_is_refused(tmp_path, capsys):
    run = finished_run(tmp_path, "static")
    with pytest.raises(SystemExit, match="has no kernel attention"):
        bench().spread_of(run, 8)
    with pytest.raises(SystemExit):
        bench().main([str(run), "--examples", "1"])
    assert "--examples 1: a spread needs at least 2 images" in capsys.readouterr().err
