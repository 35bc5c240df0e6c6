"""Hugging Face integration: PEFT-style model directories and ``transformers.Trainer`` hooks.

``save_pretrained(model, directory)`` writes what ``transformers`` tools expect beside padnet's own
record: ``config.json`` (the model's transformers config, ``architectures`` naming its class),
``padnet_config.json`` (how padnet converted it: the ``convert`` settings, the form, the compacted
layers) and ``model.safetensors`` (a ``padnet.save`` file). ``from_pretrained(directory)`` rebuilds the
model from ``config.json`` with ``AutoModel*.from_config`` (no remote code, nothing downloaded) and loads
the weights strictly through ``padnet.load``.

``PadnetTrainer`` is a ``transformers.Trainer`` whose loss adds ``padnet.aux_loss(model)`` (the MoE
load-balancing losses); ``PartitionCallback`` runs ``padnet.partition`` inside a Trainer run once its
fully dynamic warm-up steps are done. Needs the ``text`` extra (``pip install 'padnet[text]'``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from .arch import build_on_meta
from .errors import ModelFileError, UsageError
from .files import atomic_write_bytes
from .layers import aux_loss, pad_layers
from .models.transformers_models import auto_record, from_auto_config, model_loss
from .partition import PartitionReport, partition
from .serialization import check_build_memory, load, read_record, save

CONFIG_NAME, PADNET_CONFIG_NAME, WEIGHTS_NAME = "config.json", "padnet_config.json", "model.safetensors"
PADNET_KEYS = ("padnet_version", "padnet_config", "form", "compacted", "temperatures")


# ----------------------------------------------------------------------------- model directories
def save_pretrained(model: nn.Module, save_directory) -> Path:
    """Write a Hugging Face ``model`` (plain, converted, compacted or deployed) to ``save_directory``:
    ``config.json``, ``padnet_config.json`` and ``model.safetensors``, each atomically.

    Args:
        model: a ``transformers.PreTrainedModel``, converted by ``padnet.convert`` or not.
        save_directory: the directory to write (created if absent).

    Returns the directory.
    """
    if not hasattr(model, "config") or not hasattr(model.config, "to_json_string"):
        raise UsageError(f"save_pretrained takes a transformers model; got {type(model).__name__} (use padnet.save)")
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = auto_record(model)
    weights = save(model, directory / WEIGHTS_NAME, arch={"name": "transformers.auto", "kwargs": {"config": config}})
    record = read_record(weights)
    _write_json(directory / CONFIG_NAME, config)
    _write_json(directory / PADNET_CONFIG_NAME, {k: record.get(k) for k in PADNET_KEYS})
    return directory


def _write_json(path: Path, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def from_pretrained(directory, map_location="cpu") -> nn.Module:
    """The model ``save_pretrained`` wrote to ``directory``, in the form it was saved in (training,
    compacted or deployed), weights loaded strictly. Runs no code from the directory.

    Args:
        directory: a directory written by ``save_pretrained``.
        map_location: the device the weights go to.

    Raises ``ModelFileError`` naming the file that is missing, malformed or disagrees with the weights.
    """
    directory = Path(directory)
    config, padnet_config = (_read_json(directory / name) for name in (CONFIG_NAME, PADNET_CONFIG_NAME))
    weights = directory / WEIGHTS_NAME
    stored = {k: read_record(weights).get(k) for k in PADNET_KEYS if k != "padnet_version"}
    wanted = {k: padnet_config.get(k) for k in stored}
    if wanted != stored:
        differ = [k for k in stored if wanted[k] != stored[k]]
        raise ModelFileError(directory / PADNET_CONFIG_NAME, f"{', '.join(differ)} disagree with {WEIGHTS_NAME}")

    def build():
        # On the meta device first: config.json sizes every tensor, so a few bytes of JSON could otherwise
        # allocate gigabytes before the weights are compared with anything.
        try:
            check_build_memory(weights, build_on_meta(from_auto_config, config=config), f"{CONFIG_NAME}'s model")
            return from_auto_config(config)
        except ModelFileError:
            raise
        except Exception as exc:  # transformers' own errors about the config: one line naming the file
            raise ModelFileError(directory / CONFIG_NAME, f"cannot build the model it describes "
                                                          f"({type(exc).__name__}: {str(exc)[:300]})") from None

    return load(weights, model_factory=build, map_location=map_location)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(path, "no such file (a directory written by padnet.hf.save_pretrained holds "
                                   f"{CONFIG_NAME}, {PADNET_CONFIG_NAME} and {WEIGHTS_NAME})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(path, f"not a JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFileError(path, f"a JSON {type(value).__name__}, not an object")
    return value


# ----------------------------------------------------------------------------- Trainer
class PadnetTrainer(Trainer):
    """``transformers.Trainer`` whose training loss adds ``padnet.aux_loss(model)``: the load-balancing
    losses of the MoE layers' last forward (each times its ``aux_loss_coef``; zero without MoE layers)."""

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None,
                     **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch,
                                             **kwargs)  # and whatever a later transformers adds
        loss = loss + aux_loss(model).to(loss.device)
        return (loss, outputs) if return_outputs else loss


class PartitionCallback(TrainerCallback):
    """Runs ``padnet.partition`` once, after ``warmup_steps`` optimizer steps of fully dynamic training
    (at the start when 0): upcycled PAD-MoE experts all equal the dense weight, so the partition has
    nothing to rank before they have trained apart (docs/method.md#partition). Training then goes on with the
    mask frozen: entries the mask turns static get no gradient, so the model trains as its compacted
    form would; call ``padnet.compact``/``padnet.deploy`` after training (compacting in the run would
    leave the optimizer holding the old kernels).

    Args:
        dynamic_ratio: kappa, the fraction of entries that stay dynamic.
        warmup_steps: fully dynamic optimizer steps before the partition.
        scoring_batches: how many batches of the Trainer's training loader make the scoring set, or the
            batches themselves (dicts of tensors).
        loss_fn: ``loss_fn(model, batch) -> loss``; default: the model's own loss (``model(**batch).loss``).
        rounds, scorer, seed: as ``padnet.partition`` takes them.
        static_init: ``"keep"`` or ``"dynamic_mean"`` (W_s at the new static entries from the trained
            kernels' mean, ``PartiallyDynamic.static_from_dynamic``).

    After the run, ``report`` holds the ``padnet.PartitionReport``.
    """

    def __init__(self, dynamic_ratio: float, warmup_steps: int = 0, scoring_batches: int | Iterable = 10,
                 loss_fn: Callable[[nn.Module, dict], torch.Tensor] = model_loss, rounds: int = 5,
                 scorer: str = "taylor", seed: int = 0, static_init: str = "keep"):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise UsageError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
        if static_init not in ("keep", "dynamic_mean"):
            raise UsageError(f"static_init={static_init!r}; allowed: 'keep', 'dynamic_mean'")
        self.dynamic_ratio, self.warmup_steps, self.scoring_batches = dynamic_ratio, warmup_steps, scoring_batches
        self.loss_fn, self.rounds, self.scorer, self.seed, self.static_init = loss_fn, rounds, scorer, seed, static_init
        self.report: PartitionReport | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.warmup_steps == 0:
            self._partition(kwargs["model"], kwargs.get("train_dataloader"))

    def on_step_end(self, args, state, control, **kwargs):
        if self.report is None and state.global_step >= self.warmup_steps:
            self._partition(kwargs["model"], kwargs.get("train_dataloader"))

    def on_train_end(self, args, state, control, **kwargs):
        if self.report is None:
            warnings.warn(f"PartitionCallback: training ended after {state.global_step} optimizer steps, before the "
                          f"warm-up of {self.warmup_steps} steps: the model was never partitioned (every entry is "
                          "still dynamic); lower warmup_steps or train longer", RuntimeWarning, stacklevel=2)

    def _partition(self, model: nn.Module, loader) -> None:
        if not pad_layers(model):
            raise UsageError(f"PartitionCallback: {type(model).__name__} has no PAD layer "
                             "(padnet.convert(..., pad=True))")
        self.report = partition(model, self._batches(model, loader), self.loss_fn, self.dynamic_ratio,
                                rounds=self.rounds, scorer=self.scorer, seed=self.seed)
        if self.static_init == "dynamic_mean":
            for _, layer in pad_layers(model):
                layer.static_from_dynamic()

    def _batches(self, model: nn.Module, loader) -> list:
        if not isinstance(self.scoring_batches, int):
            batches = list(self.scoring_batches)
        elif loader is None:
            raise UsageError("PartitionCallback: the Trainer gave no train_dataloader; pass scoring_batches=[batches]")
        else:
            batches = []
            for batch in loader:
                if len(batches) == self.scoring_batches:
                    break
                batches.append(batch)
        device = next(model.parameters()).device
        return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
