"""padnet.hf: save_pretrained / from_pretrained of converted, compacted and deployed models (outputs
equal), the Trainer's loss with the MoE balance loss, and the partition inside a Trainer run."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import padnet  # noqa: E402
from padnet import hf  # noqa: E402
from padnet.errors import ModelFileError  # noqa: E402
from padnet.layers import pad_layers  # noqa: E402
from tests.helpers import random_pad_form  # noqa: E402

VOCAB = 64


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def pad_bert(form):
    model = padnet.convert(tiny_bert(), dynamic="moe", num_experts=2, top_k=1)
    with torch.no_grad():
        for _, layer in pad_layers(model):
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    return random_pad_form(model, form, 0.4, 0.3)


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("form", ["training", "compacted", "deployed"])
def test_save_pretrained_round_trip(tmp_path, form):
    model = pad_bert(form)
    hf.save_pretrained(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors",
                                                                    "padnet_config.json"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["model_type"] == "bert"
    padnet_config = json.loads((tmp_path / "out" / "padnet_config.json").read_text())
    assert padnet_config["padnet_config"]["dynamic"] == "moe"
    assert padnet_config["form"] == ("deployed" if form == "deployed" else "training")
    loaded = hf.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, VOCAB, (3, 9))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), atol=0, rtol=0)


def test_from_pretrained_refuses_disagreeing_or_missing_files(tmp_path):
    hf.save_pretrained(pad_bert("compacted"), tmp_path)
    meta = tmp_path / "padnet_config.json"
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps(record | {"compacted": []}))
    with pytest.raises(ModelFileError, match="padnet_config.json.*compacted disagree with model.safetensors"):
        hf.from_pretrained(tmp_path)
    meta.unlink()
    with pytest.raises(ModelFileError, match="padnet_config.json: no such file"):
        hf.from_pretrained(tmp_path)


class Sentences(torch.utils.data.Dataset):
    def __init__(self, n=32, length=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, length), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()  # learnable: the first token's parity

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def trainer(model, tmp_path, steps, callbacks=()):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
    )
    return hf.PadnetTrainer(model=model, args=args, train_dataset=Sentences(), callbacks=list(callbacks))


def test_trainer_loss_adds_the_balance_loss(tmp_path):
    model = padnet.convert(tiny_bert(), dynamic="moe", num_experts=4, top_k=2, aux_loss_coef=0.5)
    batch = {"input_ids": Sentences().ids[:8], "labels": Sentences().labels[:8]}
    model.eval()  # no router noise: the two forwards below route alike
    loss = trainer(model, tmp_path, 1).compute_loss(model, batch)
    aux = padnet.aux_loss(model)
    assert aux > 0
    torch.testing.assert_close(loss, model(**batch).loss + aux)


def test_partition_callback_partitions_after_the_warm_up_then_trains(tmp_path):
    model = padnet.convert(tiny_bert(), dynamic="moe", num_experts=2, top_k=1)
    callback = hf.PartitionCallback(dynamic_ratio=0.3, warmup_steps=2, scoring_batches=2, rounds=2)
    seen = []

    class Watch(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append((state.global_step, [layer.mask.float().mean().item() for _, layer in pad_layers(model)]))

    run = trainer(model, tmp_path, 4, [callback, Watch()])
    run.train()
    assert callback.report is not None and callback.report.dynamic_ratio == pytest.approx(0.3, abs=0.01)
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    assert all(kappa == 1.0 for kappa in seen[0][1])  # fully dynamic during the warm-up
    assert seen[1][1] == seen[3][1] and min(seen[3][1]) < 1.0  # partitioned at step 2, the mask frozen after
    masks = [layer.mask.clone() for _, layer in pad_layers(model)]
    padnet.deploy(padnet.compact(model))
    hf.save_pretrained(model, tmp_path / "trained")
    loaded = hf.from_pretrained(tmp_path / "trained")
    deployed = [m for m in loaded.modules() if isinstance(m, padnet.layers.protocol.DeployedPartiallyDynamic)]
    assert len(deployed) == len(masks)
    assert all(torch.equal(layer.dynamic_index, m.reshape(-1).nonzero().squeeze(1))
               for layer, m in zip(deployed, masks))
    ids = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), atol=0, rtol=0)


def test_partition_callback_says_so_when_training_ends_before_its_warm_up(tmp_path):
    model = padnet.convert(tiny_bert(), dynamic="moe", num_experts=2, top_k=1)
    callback = hf.PartitionCallback(dynamic_ratio=0.3, warmup_steps=5, scoring_batches=2, rounds=2)
    with pytest.warns(RuntimeWarning, match="ended after 2 optimizer steps, before the warm-up of 5 steps: the model "
                                            "was never partitioned"):
        trainer(model, tmp_path, 2, [callback]).train()
    assert callback.report is None
