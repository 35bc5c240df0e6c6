"""Test launcher for torchrun: the real ``padnet`` CLI (``padnet.cli.main``), several commands in one
process group, plus test-only tasks and hooks.

    torchrun --standalone --nproc_per_node 2 tests/distributed/launch.py PLAN.json

PLAN.json is a list of steps ``{"argv": [...], "kill_after_epoch": null or int}``. Each step runs
``padnet.cli.main(argv)`` on every rank; the launcher starts the process group once (the CLI then
uses it and leaves it running), so one launch pays the start-up cost once. After every step each rank
writes ``PLAN.rank{r}.json`` (the exit codes so far) and, for a run that finished, ``RUN_DIR.rank{r}.pt``:
its final state dict, the indices its sampler handed out per epoch, and the MoE routing counts.

``kill_after_epoch=e``: rank 0 SIGKILLs itself right after writing the checkpoint of epoch e (a real
crash: torchrun sees a worker die and ends the others).

Test tasks: ``moe_tokens_test`` (a token classifier with one FFN, for dynamic.kind=moe; its loss
records how many tokens each expert got per training step) and ``nan_rank1_test`` (digits; the loss
turns NaN on rank 1 only, from its 6th call on).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from padnet import distributed
from padnet.cli import main
from padnet.data import DataConfig
from padnet.layers.router import NoisyTopKRouter
from padnet.train import TaskParts, register_task, trainer as trainer_module
from padnet.train.run_files import RunWriter
from padnet.train.vision import ModelConfig, build as build_vision, evaluate as evaluate_vision
from padnet.train_step import unwrap


# ----------------------------------------------------------------------------- test tasks
@dataclass
class TokensConfig:
    examples: int = 64
    vocab: int = 16
    length: int = 2  # tokens per example
    hidden: int = 8


class FFN(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * hidden, hidden)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TokenNet(nn.Module):
    def __init__(self, vocab: int, hidden: int, classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.ffn = FFN(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.ffn(h)
        return self.head(h.mean(1))


ROUTING: list[list[int]] = []  # tokens per expert, one row per training forward of this rank
_HOOKED: set[int] = set()


def _record_routing(router, inputs, routing):
    if router.training:
        counts = torch.bincount(routing.top_indices.reshape(-1), minlength=router.num_experts)
        ROUTING.append(counts.tolist())


def _tokens_loss(model, batch):
    for module in model.modules():
        if isinstance(module, NoisyTopKRouter) and id(module) not in _HOOKED:
            module.register_forward_hook(_record_routing)
            _HOOKED.add(id(module))
    tokens, labels = batch
    return F.cross_entropy(model(tokens), labels)


@torch.no_grad()
def _tokens_evaluate(model, batches):
    correct = total = 0
    loss = 0.0
    for tokens, labels in batches:
        logits = model(tokens)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        total += int(labels.numel())
    return {"accuracy": correct / total, "loss": loss / total}


def build_tokens(config) -> TaskParts:
    c = config.section("tokens", TokensConfig)
    g = torch.Generator().manual_seed(1234)  # the data never depends on the rank or the run seed
    tokens = torch.randint(0, c.vocab, (c.examples, c.length), generator=g)
    labels = tokens[:, 0] % 4
    data = torch.utils.data.TensorDataset(tokens, labels)
    return TaskParts(model=TokenNet(c.vocab, c.hidden, 4), train_dataset=data, eval_dataset=data,
                     loss_fn=_tokens_loss, evaluate=_tokens_evaluate)


def build_nan_rank1(config) -> TaskParts:
    parts = build_vision(config)
    calls = {"n": 0}

    def loss_fn(model, batch):
        images, targets = batch
        calls["n"] += 1
        loss = F.cross_entropy(model(images), targets)
        return loss * float("nan") if distributed.rank() == 1 and calls["n"] >= 6 else loss

    parts.loss_fn = loss_fn
    parts.evaluate = evaluate_vision
    return parts


register_task("moe_tokens_test", build_tokens, sections={"tokens": TokensConfig})
register_task("nan_rank1_test", build_nan_rank1, sections={"data": DataConfig, "model": ModelConfig})


# ----------------------------------------------------------------------------- hooks
SAMPLED: dict[int, list[int]] = {}  # epoch -> indices this rank's sampler handed out
KILL_AFTER_EPOCH: list[int | None] = [None]

_train_sampler = trainer_module.Trainer.train_sampler
_results = trainer_module.Trainer._results
_checkpoint = RunWriter.checkpoint


def train_sampler(self, dataset, epoch):
    sampler = _train_sampler(self, dataset, epoch)
    if isinstance(sampler, torch.utils.data.DistributedSampler):  # re-iterable: reseeds from (seed, epoch)
        SAMPLED[epoch] = list(sampler)
    return sampler


def results(self, model, parts, history, last_eval, partition_info):
    state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
    dump = {"state": state, "sampled": dict(SAMPLED), "routing": list(ROUTING), "world_size": distributed.world_size()}
    torch.save(dump, f"{self.run_dir}.rank{distributed.rank()}.pt")
    return _results(self, model, parts, history, last_eval, partition_info)


def checkpoint(self, name, obj):
    _checkpoint(self, name, obj)
    if KILL_AFTER_EPOCH[0] is not None and obj.get("epoch") == KILL_AFTER_EPOCH[0] and distributed.rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)


trainer_module.Trainer.train_sampler = train_sampler
trainer_module.Trainer._results = results
RunWriter.checkpoint = checkpoint


def run(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    torch.set_num_threads(1)
    owns = distributed.init_from_env("cpu")
    codes = []
    ok = False
    try:
        for step in plan:
            SAMPLED.clear()
            ROUTING.clear()
            KILL_AFTER_EPOCH[0] = step.get("kill_after_epoch")
            codes.append(main(step["argv"]))
            Path(f"{plan_path}.rank{distributed.rank()}.json").write_text(json.dumps(codes))
        ok = True
    finally:
        if owns:
            distributed.shutdown(sync=ok)  # no barrier after an error: the other rank may be gone
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
