"""Cost of the Iterative Mode Partition against training steps of the same model, in one run.

Requirement (issue 3): partition with 10 batches and 5 rounds costs at most what 60 training steps
cost. Prints both wall times and their ratio.

    python benchmarks/partition_cost.py [--arch resnet18] [--batch 32] [--size 32]
    python benchmarks/partition_cost.py --quick    # 4 batches of 16 against 4 training steps: ~2 minutes

``--quick`` measures the ratio the speed issues track (partition of 4 batches x 5 rounds / 4 training
steps, 5-7x: each round scores every batch with a forward and a backward, and ranks the scores) at
batch 16 (4 minutes at batch 32 on this project's CPU).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

import padnet


def small_input_resnet(arch: str, num_classes: int) -> torch.nn.Module:
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # 32x32 inputs: no 7x7/2 stem, no max-pool
    model.maxpool = torch.nn.Identity()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="4 batches against 4 training steps")
    args = parser.parse_args()
    if args.quick:
        args.batches = args.train_steps = 4
        args.batch = 16

    torch.manual_seed(args.seed)
    model = padnet.convert(small_input_resnet(args.arch, 10))
    data = [
        (torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,)))
        for _ in range(args.batches)
    ]

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1])

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    loss_fn(model, data[0]).backward()  # warm-up of the allocator and kernels, not timed
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for step in range(args.train_steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, data[step % len(data)]).backward()
        optimizer.step()
    train_s = time.perf_counter() - start
    optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    report = padnet.partition(model, data, loss_fn, 0.3, rounds=args.rounds)
    partition_s = time.perf_counter() - start

    print(f"model: {args.arch} (PAD DY-Conv, K=4), batch {args.batch}, {args.size}x{args.size}, "
          f"threads {torch.get_num_threads()}")
    print("| measurement | wall time (s) |\n|---|---|")
    print(f"| {args.train_steps} training steps (SGD) | {train_s:.2f} |")
    print(f"| partition: {args.batches} batches x {args.rounds} rounds | {partition_s:.2f} |")
    ratio = partition_s / train_s
    target = " (target <= 1.00)" if (args.batches, args.train_steps, args.rounds) == (10, 60, 5) else ""
    print(f"\npartition / {args.train_steps} training steps = {ratio:.2f}{target}; "
          f"dynamic ratio reached {report.dynamic_ratio:.4f}")


if __name__ == "__main__":
    main()
