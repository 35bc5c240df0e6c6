"""Run under torchrun (2 gloo processes) by ``test_accumulate_ddp.py``: one optimizer step of a
DistributedDataParallel model on 2 micro-batches per rank against one process stepping on the whole
batch, and how many gradient all-reduces each step made. Writes ``OUT.rank{r}.json``."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from padnet.train_step import StepRecipe, train_step
from tests.train.test_machines import NoNormNet, _loss


def stepped(model, micro_batches, steps=2):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    recipe = StepRecipe.for_model(model, _loss, optimizer)
    for _ in range(steps):
        loss = train_step(model, micro_batches, recipe, 1.0, where=lambda: "in the test")
    return loss


def main(out: str) -> None:
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(1)
    images, targets = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    mine = slice(8 * rank, 8 * rank + 8)  # this rank's 8 examples, in 2 micro-batches of 4
    micro = [(images[mine][i:i + 4], targets[mine][i:i + 4]) for i in (0, 4)]

    calls: list[int] = []

    def counted(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    torch.manual_seed(0)
    model = NoNormNet()
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(None, counted)
    loss = stepped(ddp, micro)
    accumulated_calls = len(calls)

    torch.manual_seed(0)
    oracle = NoNormNet()
    oracle_loss = stepped(oracle, [(images, targets)])
    diffs = {name: (p - q).abs().max().item() for (name, p), q in zip(model.named_parameters(), oracle.parameters())}
    scale = max(1.0, max(q.abs().max().item() for q in oracle.parameters()))

    calls.clear()
    stepped(ddp, micro[:1])  # as many steps without accumulation
    single_calls = len(calls)
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"diffs": diffs, "scale": scale, "loss": float(loss), "oracle_loss": float(oracle_loss),
                   "accumulated_calls": accumulated_calls, "single_calls": single_calls}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
