"""torch.distributed for the trainer: process-group setup from torchrun's environment, rank helpers,
the training sampler, and the few reductions the trainer needs.

Launch with torchrun (one process per GPU, or several CPU processes)::

    torchrun --standalone --nproc_per_node 4 -m padnet train --config FILE

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``init_from_env`` reads them and starts
the process group: ``nccl`` when the run's device is CUDA (process ``LOCAL_RANK`` drives
``cuda:LOCAL_RANK``), ``gloo`` on CPU. Without those variables, or with ``WORLD_SIZE=1``, nothing is
started and every helper here is the identity, so one process behaves exactly as before.

Every helper is a collective when a group with more than one process is running: call it on every
rank, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from ..errors import ConfigError

# The process identity, the device and the reductions a training step needs live in padnet.infra
# (serialization and padnet.step need them too, without importing the trainer); the names
# are re-exported here, where the trainer and its callers have always found them.
from ..infra import (  # noqa: F401
    DistributedSetupError,
    LaunchEnv,
    average_gradients,
    by_dtype_and_device,
    comm_device,
    is_distributed,
    is_initialized,
    is_main_process,
    launch_env,
    mean,
    rank,
    resolve_device,
    world_size,
)

BACKENDS = ("gloo", "nccl")


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device_name: str = "auto", backend: str | None = None) -> bool:
    """Start the process group torchrun describes. Returns True when this call started it (the
    caller then owns it and ends it with ``shutdown``); False when one is already running, when this
    process was not launched by torchrun, or when WORLD_SIZE is 1."""
    if is_initialized():
        return False
    env = launch_env()
    if env is None or env.world_size == 1:
        return False
    if not dist.is_available():
        raise DistributedSetupError(f"WORLD_SIZE={env.world_size} is set but this torch build has no torch.distributed")
    try:
        device = resolve_device(device_name)
    except ConfigError as err:  # under torchrun, a device this machine lacks is a launch problem
        raise DistributedSetupError("; ".join(err.problems)) from None
    backend = backend or backend_for(device)
    if backend not in BACKENDS:
        raise DistributedSetupError(f"backend={backend!r} is not supported; allowed: {', '.join(BACKENDS)}")
    if backend == "nccl" and device.type != "cuda":
        raise DistributedSetupError(f"backend='nccl' needs CUDA devices; "
                                    f"the run's device is {device_name!r} (use gloo)")
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size, **kwargs)
    return True


def shutdown(sync: bool = True) -> None:
    """End the process group (after a barrier when ``sync``: every rank has finished its writes)."""
    if not is_initialized():
        return
    try:
        if sync and world_size() > 1:
            barrier()
    finally:
        dist.destroy_process_group()


@contextmanager
def process_group(device_name: str = "auto") -> Iterator[bool]:
    """``init_from_env`` for the duration of a block; the group is ended on the way out if the
    block started it (with a barrier on success, without one on an error, which may be on one rank
    only)."""
    owns = init_from_env(device_name)
    try:
        yield owns
    except BaseException:
        if owns:
            shutdown(sync=False)
        raise
    if owns:
        shutdown(sync=True)


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# ------------------------------------------------------------------------------- data
def train_sampler(dataset, seed: int, epoch: int) -> DistributedSampler:
    """This rank's share of the data order of ``epoch``: one permutation per epoch (seeded with
    ``seed + epoch``, the same permutation ``RandomSampler`` with a generator seeded
    ``seed + epoch`` draws), truncated to a multiple of the world size, rank r taking every
    world-size-th index from r. The union over ranks is the one-process order (its first
    ``len // world * world`` indices)."""
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return sampler


# ------------------------------------------------------------------------------- reductions
def all_ranks_agree(flag: bool) -> bool:
    """True when ``flag`` is True on every rank."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Copy ``src``'s parameters and buffers (only buffers: ``buffers_only``) to every rank, in place."""
    if not is_distributed():
        return
    tensors = (b for _, b in module.named_buffers()) if buffers_only else _state_tensors(module)
    for tensor in tensors:
        _broadcast_inplace(tensor, src)


@torch.no_grad()
def replicas_identical(tensors: Iterable[torch.Tensor]) -> bool:
    """True on every rank when every rank holds exactly rank 0's values of ``tensors`` (same order,
    same shapes on every rank)."""
    if not is_distributed():
        return True
    same = True
    for tensor in tensors:
        reference = tensor.detach().clone()
        _broadcast_inplace(reference, 0)
        same = same and torch.equal(reference, tensor.detach())
    return all_ranks_agree(same)


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of ``module``, in a fixed order."""
    return list(_state_tensors(module))


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ------------------------------------------------------------------------------- internals
def _state_tensors(module: nn.Module):
    yield from (p.data for _, p in module.named_parameters())
    yield from (b for _, b in module.named_buffers())


def _broadcast_inplace(tensor: torch.Tensor, src: int) -> None:
    # gloo and nccl do not all take bool: send bools as uint8.
    if tensor.dtype == torch.bool or not tensor.is_contiguous():
        carrier = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
        dist.broadcast(carrier, src=src)
        tensor.copy_(carrier.to(tensor.dtype))
    else:
        dist.broadcast(tensor, src=src)
