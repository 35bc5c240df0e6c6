"""The paper's recipes as configs (``configs/imagenet_r50_pad.yaml``, ``configs/glue_bert_pad_moe.yaml``):
each validates, holds the published settings, and runs two optimizer steps end to end on a tiny stand-in
(a few images in an ImageFolder; a 2-layer BERT on RTE-layout files) with only the data, the model size
and the lengths overridden."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from padnet.text.glue_task import GlueConfig
from padnet.train import load_config
from padnet.train.trainer import Trainer
from padnet.train.vision import ModelConfig
from tests.text.test_glue_cli import glue_dir, tiny_model_dir  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
IMAGENET, GLUE = ROOT / "configs" / "imagenet_r50_pad.yaml", ROOT / "configs" / "glue_bert_pad_moe.yaml"
SHORT = ["epochs=1", "progress=false", "tensorboard=false", "threads=1", "device=cpu", "num_workers=0",
         "partition.scoring_batches=1", "partition.rounds=2"]


def test_the_recipes_hold_the_published_settings():
    r50 = load_config(IMAGENET, preflight=False)
    model = r50.section("model", ModelConfig)
    assert (model.name, r50.dynamic.num_kernels, r50.dynamic.dynamic_ratio) == ("resnet50", 4, 0.3)
    assert (r50.optim.name, r50.optim.lr, r50.optim.momentum, r50.optim.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (r50.batch_size, r50.epochs, r50.partition.scoring_batches, r50.partition.batch_size) == (256, 100, 10, 256)
    assert (r50.dynamic.temperature_start, r50.dynamic.temperature_end, r50.dynamic.temperature_epochs) == (30, 1, 10)
    bert = load_config(GLUE, preflight=False)
    glue = bert.section("glue", GlueConfig)
    assert (glue.model, glue.max_length, bert.dynamic.kind, bert.dynamic.num_experts, bert.dynamic.top_k) == \
        ("bert-base-uncased", 128, "moe", 8, 2)
    assert (bert.dynamic.dynamic_ratio, bert.optim.name, bert.optim.lr, bert.batch_size, bert.epochs) == \
        (0.5, "adamw", 2e-5, 32, 3)
    assert bert.partition.scoring_batches * bert.partition.batch_size == 320


def _two_steps(config, run_dir: Path) -> list[dict]:
    Trainer(config, run_dir).train()
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["step"] for row in rows] == [2]
    return rows


@pytest.mark.slow
def test_the_imagenet_recipe_runs_two_steps_on_a_few_images(tmp_path):
    for split, count in (("train", 4), ("val", 2)):
        for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            folder = tmp_path / "imagenet" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 36), tuple(c + 5 * i for c in colour)).save(folder / f"{i}.png")
    config = load_config(IMAGENET, [*SHORT, f"data.root={tmp_path / 'imagenet'}", "data.image_size=32",
                                    "batch_size=4", "eval_batch_size=4", "partition.batch_size=4"])
    assert (config.precision, config.channels_last) == ("bf16", True)
    _two_steps(config, tmp_path / "run")  # 8 images in batches of 4


@pytest.mark.slow
def test_the_glue_recipe_runs_two_steps_on_a_tiny_bert(tmp_path, tiny_model_dir, glue_dir):  # noqa: F811
    config = load_config(GLUE, [*SHORT, f"glue.model={tiny_model_dir}", f"glue.data_dir={glue_dir}",
                                "glue.max_length=16", "glue.train_subset=8", "batch_size=4", "eval_batch_size=8",
                                "partition.batch_size=4", "partition.warmup_steps=1"])
    assert config.precision == "bf16"
    _two_steps(config, tmp_path / "run")  # 8 examples in batches of 4
