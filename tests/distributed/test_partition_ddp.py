"""The partition under torch.distributed: every rank scores its shard, scores are summed across
ranks, and every rank ends with the mask one process would get from the union of the shards."""

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import padnet
from tests.test_partition import mse_loss, two_layer_problem

# Subprocesses / end-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, batches = two_layer_problem(seed=0)  # same init on every rank (same seed)
        padnet.partition(model, batches[rank::WORLD], mse_loss, 0.3, rounds=3)
        torch.save({"a": model.a.mask, "b": model.b.mask}, os.path.join(out_dir, f"mask{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_two_rank_partition_equals_single_process_union(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    masks = [torch.load(tmp_path / f"mask{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in ("a", "b"))

    model, batches = two_layer_problem(seed=0)
    padnet.partition(model, batches, mse_loss, 0.3, rounds=3)
    assert torch.equal(masks[0]["a"], model.a.mask) and torch.equal(masks[0]["b"], model.b.mask)


def nan_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, batches = two_layer_problem(seed=0)

        def loss(model_, batch):  # only rank 1 sees a non-finite loss
            value = mse_loss(model_, batch)
            return value * float("nan") if rank == 1 else value

        try:
            padnet.partition(model, batches[rank::WORLD], loss, 0.3, rounds=2)
        except padnet.PartitionError as err:
            (Path(out_dir) / f"raised{rank}.txt").write_text(str(err))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    context = mp.spawn(nan_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:  # a rank waiting forever in all_reduce: the bug this guards
            for process in context.processes:
                process.kill()
            pytest.fail("ranks did not finish: a failure on one rank left the other waiting")
    assert "scoring batch 0" in (tmp_path / "raised1.txt").read_text()
    assert "another rank" in (tmp_path / "raised0.txt").read_text()
