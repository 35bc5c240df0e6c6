"""torch.distributed for padnet: which process this is under torchrun (``launch_env``, ``rank``,
``world_size``, ``is_main_process``: the one that writes files), its device (``resolve_device``), the
process-group setup, the training sampler, and the few reductions a training step needs.

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

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from .errors import ConfigError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEVICES = ("cpu", "cuda", "auto")


# ------------------------------------------------------------------------------- processes
class DistributedSetupError(RuntimeError):
    """The torchrun environment or the devices do not allow the requested distributed run."""


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun told this process."""

    rank: int
    world_size: int
    local_rank: int


def launch_env(environ: Mapping[str, Any] | None = None) -> LaunchEnv | None:
    """The torchrun environment of this process, or None when it was not launched by torchrun
    (no ``WORLD_SIZE``). Raises ``DistributedSetupError`` naming the bad variable and value."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    values = {}
    for key in ENV_KEYS:
        raw = environ.get(key, "0")  # RANK and LOCAL_RANK default to 0; WORLD_SIZE is there (above)
        try:
            values[key] = int(raw)
        except (TypeError, ValueError):
            raise DistributedSetupError(
                f"{key}={raw!r} is not an integer; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK to integers "
                "(launch with torchrun, or unset WORLD_SIZE for one process)"
            ) from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1:
        raise DistributedSetupError(f"WORLD_SIZE={world} must be >= 1")
    if not 0 <= rank < world:
        raise DistributedSetupError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    if not 0 <= local < world:
        raise DistributedSetupError(f"LOCAL_RANK={local} must be in [0, WORLD_SIZE={world})")
    return LaunchEnv(rank, world, local)


def is_initialized() -> bool:
    """True when a torch.distributed process group is running."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    """True in rank 0, and in a process outside any process group: the one that writes files."""
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """The run's device for ``device`` = ``cpu`` / ``cuda`` / ``auto``; under torchrun with several
    processes, CUDA means ``cuda:LOCAL_RANK``.

    Raises ``ConfigError`` for another name, or for ``cuda`` on a machine without CUDA, and
    ``DistributedSetupError`` when torchrun started more processes on this machine than it has GPUs."""
    if name not in DEVICES:
        raise ConfigError([f"device={name!r} is not supported; allowed: 'cpu', 'cuda', 'auto'"])
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError([f"device={name!r} but CUDA is not available; allowed here: 'cpu', 'auto'"])
    env = launch_env()
    if env is None or env.world_size == 1:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise DistributedSetupError(
            f"LOCAL_RANK={env.local_rank} but this machine has {count} visible CUDA device(s): launch at most "
            f"--nproc_per_node {count} processes per machine (one per GPU), or set device=cpu"
        )
    return torch.device("cuda", env.local_rank)


# --------------------------------------------------------------------------------------- reductions
def is_distributed() -> bool:
    """True when a process group of more than one process is running (DDP paths on)."""
    return world_size() > 1


def mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself in one process). A NaN or inf on any rank
    makes the result non-finite on every rank, so a check on it stops all ranks together."""
    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """All-reduce and average ``.grad`` of the parameters that have one on some rank (a missing grad
    counts as zero there; a parameter without a grad on every rank keeps ``None``, as in one process),
    for training steps outside a DistributedDataParallel wrapper."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    # A parameter may have a gradient on one rank and none on another: agree on which ones take part.
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int64, device=comm_device())
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    params = [p for p, flag in zip(params, has_grad.tolist()) if flag]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for grads in by_dtype_and_device([p.grad for p in params if p.grad is not None]):  # (every one, set above)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def comm_device() -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def by_dtype_and_device(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


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
    device_id = None
    if device.type == "cuda":
        torch.cuda.set_device(device)
        device_id = device
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            device_id=device_id)
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
    sampler: DistributedSampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                                                     shuffle=True, seed=seed, drop_last=True)
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
