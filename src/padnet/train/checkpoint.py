"""A training checkpoint: the model a run trains and how it comes back from one.

``checkpoint.pt`` (``torch.save`` of tensors and plain values; read back with ``weights_only=True``)
holds the model's state dict (masks included), whether its PAD layers were compacted, the optimizer
and scheduler states (and the GradScaler's for ``precision: fp16``, the EMA weights for ``ema``), the
RNG states (every rank's, under torchrun), the metrics history, the partition report, the config and
the run's schedule (``padnet.train.schedule``).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..convert import convert
from ..errors import ModelFileError, cut, shorten
from ..serialization import restore_pad_layers
from .config import RunConfig
from .run_files import TRAINING_CHECKPOINT, load_checkpoint
from .schedule import RunSchedule

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = TRAINING_CHECKPOINT


# --------------------------------------------------------------------------------------- model
def make_dynamic(model: nn.Module, config: RunConfig) -> nn.Module:
    """Apply ``config.dynamic`` to a static model (no-op for mode=static)."""
    settings = config.dynamic.convert_config()
    return model if settings is None else convert(model, config=settings)


def restore_model(model: nn.Module, state_dict: dict, compacted: bool) -> None:
    """Load a trained state into a freshly converted model: masks first, then compact
    (``padnet.serialization.restore_pad_layers``, as ``padnet.load`` does), then weights."""
    restore_pad_layers(model, state_dict.get, lambda name: compacted)
    model.load_state_dict(state_dict)


def restore_checked(path: Path, model: nn.Module, state: dict, weights: str = "model") -> None:
    """``restore_model`` from a checkpoint's ``weights`` ("model", or "ema": the weights' moving average),
    a mismatch reported as a ``ModelFileError`` naming the file."""
    try:
        restore_model(model, state[weights], bool(state["compacted"]))
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise ModelFileError(path, f"does not fit this run's model (another config or padnet version?): "
                                   f"{cut(err, 500)}") from None


def read_training_checkpoint(path: Path) -> dict:
    """A padnet training checkpoint, its format, config and schedule checked; ``ModelFileError`` otherwise."""
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(path, f"not a padnet training checkpoint (format={shorten(state.get('format'))})")
    if not isinstance(state.get("config"), dict):
        raise ModelFileError(path, "damaged padnet training checkpoint: its config is not a mapping")
    if "schedule" in state:
        try:
            RunSchedule.from_dict(state["schedule"])
        except ValueError as err:
            raise ModelFileError(path, f"damaged padnet training checkpoint: {err}") from None
    return state


# --------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """RNG states as tensors and plain values (loadable with weights_only=True)."""
    # legacy=True (the default) named: numpy's annotations give a dict for get_state() without it. The global
    # RandomState is an MT19937, whose legacy state is the tuple (name, keys, pos, has_gauss, cached_gaussian).
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states ``get_rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng(state: dict, world: int, rank: int) -> None:
    """This process's RNG states from a checkpoint: its own rank's when the checkpoint holds every
    rank's for a run of as many processes, rank 0's otherwise."""
    rng_ranks = state.get("rng_ranks")
    if world > 1 and rng_ranks is not None and len(rng_ranks) == world:
        set_rng_state(rng_ranks[rank])
    else:
        set_rng_state(state["rng"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
