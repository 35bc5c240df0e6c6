"""``padnet eval`` and ``padnet export``: a run's model rebuilt from its checkpoint, evaluated, and
exported as a checked ``.safetensors`` file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from torch import nn

from ..cost import stored_numel
from ..distributed import resolve_device
from ..errors import RunError, UsageError
from ..layers import dynamic_layers, pad_layers
from ..models.transformers_models import local_files_only
from ..serialization import load, save
from ..temperature import set_temperature
from ..train_step import autocast
from .checkpoint import CHECKPOINT, make_dynamic, read_training_checkpoint, restore_checked, seed_everything
from .config import RunConfig, config_from_dict
from .evaluation import DeviceLoader, dataset_size, deployable_parameters, eval_loader, evaluate
from .rundir import RUN_FILES
from .schedule import RunSchedule, derive_schedule
from .tasks import TaskParts, get_task


class ExportCheckError(RunError):
    """An exported model file did not reproduce its run's eval metrics; the file was not written."""


class RebuiltRun(NamedTuple):
    """A run's model rebuilt from its checkpoint, with what evaluating it needs."""

    checkpoint: Path
    state: dict
    config: RunConfig
    parts: TaskParts
    model: nn.Module  # on the config's device
    loader: DeviceLoader  # the task's eval loader

    def evaluate(self, model: nn.Module | None = None, precision: str | None = None) -> dict:
        """The eval metrics of the run's model (or ``model``), under autocast as the run evaluated
        (``config.precision``) unless ``precision`` says otherwise."""
        with autocast(self.loader.device.type, precision or self.config.precision):
            return evaluate(self.model if model is None else model, self.parts, self.loader, self.config.task)


def rebuild_run(run_dir: str | Path | None = None, checkpoint: str | Path | None = None,
                overrides: list[str] | None = None) -> RebuiltRun:
    """A run's model rebuilt from its checkpoint, at the attention temperature it evaluated with, with the
    task's eval loader: what ``padnet eval`` and ``padnet export`` start from, and what an analysis of a
    finished run (e.g. ``benchmarks/attention_spread.py``) reads.

    Args:
        run_dir: the run directory (its ``checkpoint.pt`` is read), unless ``checkpoint`` is given.
        checkpoint: a training checkpoint file.
        overrides: ``key=value`` config overrides (e.g. ``device=cpu``).
    """
    if checkpoint is None:
        if run_dir is None:
            raise UsageError("give a run directory or a checkpoint file")
        checkpoint = Path(run_dir) / CHECKPOINT
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint} (a run writes {CHECKPOINT} after its first epoch)")
    state = read_training_checkpoint(checkpoint)
    config = config_from_dict(state["config"], overrides, source=str(checkpoint), stored=True)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    with local_files_only(checkpoint):  # a hub model the checkpoint names comes from the local cache or not at all
        parts = get_task(config.task).builder(config)
    model = make_dynamic(parts.model, config)
    # A run with an EMA evaluated (and exports) the average of its weights.
    restore_checked(checkpoint, model, state, "ema" if config.ema is not None and "ema" in state else "model")
    model.to(device)
    set_temperature(model, _run_temperature(config, state, dataset_size(parts.train_dataset)))
    return RebuiltRun(checkpoint, state, config, parts, model, DeviceLoader(eval_loader(config, parts), device))


def _run_temperature(config: RunConfig, state: dict, train_examples: int) -> float:
    """The attention temperature the run evaluated with at its checkpoint: from the schedule the
    checkpoint stores; for older checkpoints, the one its last epoch recorded, or else the schedule
    derived as training derived it, with the steps per epoch of the run's number of processes."""
    step = int(state["global_step"])
    if "schedule" in state:  # checked by read_training_checkpoint
        return RunSchedule.from_dict(state["schedule"]).temperature_at(step)
    history = state.get("history") or []
    if history and isinstance(history[-1].get("temperature"), (int, float)):
        return float(history[-1]["temperature"])
    world = max(1, int(state.get("world_size", 1)))
    return derive_schedule(config, train_examples, world).temperature_at(step)


def _check_export_out(out) -> None:
    """``export`` writes a new ``.safetensors`` file and never over a run's own files (checkpoint.pt,
    config.yaml, results.json, ...) nor through a symbolic link."""
    if out is None:
        return
    out = Path(out)
    if out.suffix != ".safetensors" or out.name in RUN_FILES - {"model.safetensors"}:
        raise RunError(f"--out {out}: export writes a model file ending in .safetensors and never over a run's "
                       f"files ({', '.join(sorted(RUN_FILES - {'model.safetensors'}))}); choose another name")
    if out.is_symlink():
        raise RunError(f"--out {out} is a symbolic link; export does not write through links")
    if out.exists() and not out.is_file():
        raise RunError(f"--out {out} exists and is not a regular file")


def evaluate_run(run_dir: str | Path | None = None, checkpoint: str | Path | None = None,
                 overrides: list[str] | None = None) -> dict:
    """Rebuild a run's model from its checkpoint and evaluate it on the task's eval set.

    Args:
        run_dir: the run directory (its ``checkpoint.pt`` is read), unless ``checkpoint`` is given.
        checkpoint: a training checkpoint file.
        overrides: ``key=value`` config overrides (e.g. ``device=cpu``).
    """
    run = rebuild_run(run_dir, checkpoint, overrides)
    return {"checkpoint": str(run.checkpoint), "epoch": int(run.state["epoch"]), "name": run.config.label,
            **run.evaluate(), "deployable_params": deployable_parameters(run.model)}


def export_run(run_dir: str | Path | None = None, checkpoint: str | Path | None = None,
               out: str | Path | None = None, overrides: list[str] | None = None, rtol: float = 1e-4,
               check: bool = True, onnx: bool = False) -> dict:
    """Rebuild a run's model, deploy it (``padnet.deploy`` when it holds PAD layers; other models are
    saved as they are), save it with ``padnet.save`` and check the file: the model ``padnet.load``
    rebuilds from it must give the run's eval metrics (eval loss within ``rtol``, the same main metric).
    The file is written beside ``out`` and renamed to it only once the check passes, so a failed export
    leaves an earlier file at ``out`` untouched.

    The run's metrics are the ones it stored for the checkpoint's epoch when they stand for a fresh
    evaluation of the same weights (see ``stored_eval``); otherwise the rebuilt model is evaluated first.

    Args:
        run_dir: the run directory, unless ``checkpoint`` is given.
        checkpoint: a training checkpoint file.
        out: the ``.safetensors`` file to write; default ``<run dir>/model.safetensors``.
        overrides: ``key=value`` config overrides.
        rtol: the relative tolerance on the eval loss.
        check: False skips loading and evaluating the written file (faster by one evaluation of the eval
            set and a load; the file is then not shown to reproduce the run: ``"exported": null``).
        onnx: also write the deployed model as ONNX beside ``out`` (``.onnx``, ``padnet.export_onnx``),
            checked in onnxruntime on the first evaluation batch (unless ``check`` is False).
    """
    from ..deploy import deploy  # looked up when called, so a test can substitute a broken deploy

    _check_export_out(out)
    run = rebuild_run(run_dir, checkpoint, overrides)
    model = run.model
    out = Path(out) if out is not None else run.checkpoint.parent / "model.safetensors"
    if out.resolve() == run.checkpoint.resolve():
        raise RunError(f"--out {out} is the checkpoint being exported; export never writes over a run's files")
    # The exported file holds float32 weights: the check compares both models in float32.
    before = (stored_eval(run, overrides) or run.evaluate(precision="fp32")) if check else stored_eval(run, overrides)
    model.eval()
    form = "deployed" if pad_layers(model) else "training" if dynamic_layers(model) else "plain"
    if form == "deployed":
        deploy(model, allow_unpartitioned=True)  # the run partitioned it (kappa = 1 keeps every entry)
    # Recorded in the file: padnet predict needs nothing else. (setattr: nn.Module's __setattr__ is typed for
    # parameters and submodules, not this plain attribute.)
    setattr(model, "padnet_predict", run.parts.predict)
    unchecked = save(model.cpu(), out.with_name(f".{out.stem}.unchecked{out.suffix}"))
    try:
        if check:
            exported = load(unchecked).to(resolve_device(run.config.device))
            after = run.evaluate(exported, precision="fp32")
            assert before is not None  # with check, the run's evaluation or a fresh one (above)
            _check_reproduced(before, after, run.parts.main_metric, rtol, out)
        else:
            exported, after = model, None
        path = unchecked.replace(out)
    finally:
        unchecked.unlink(missing_ok=True)
    result = {"checkpoint": str(run.checkpoint), "path": str(path), "form": form, "file_bytes": path.stat().st_size,
              "stored_params": stored_numel(exported), "deployable_params": deployable_parameters(exported),
              "main_metric": run.parts.main_metric, "run": before, "exported": after}
    if onnx:
        from ..onnx_export import export_onnx

        batch = next(iter(run.loader))
        example = batch[0] if isinstance(batch, (list, tuple)) else batch
        result["onnx"] = export_onnx(exported.cpu(), example.cpu(), path.with_suffix(".onnx"), check=check)
    return result


def stored_eval(run: RebuiltRun, overrides: list[str] | None) -> dict | None:
    """The evaluation the run stored for its checkpoint's epoch, when it stands for a fresh one of the same
    weights: no config override, the checkpoint's last epoch evaluated, in one process, on the device type
    the rebuilt model is on (the floats of another device differ), in float32, eagerly and in the default
    memory format, as the rebuilt model evaluates. None otherwise."""
    state, history, config = run.state, run.state.get("history") or [], run.config
    device = next(run.model.parameters()).device.type
    if overrides or not history or int(state.get("world_size", 1)) != 1 or state.get("eval_device") != device:
        return None
    if config.precision != "fp32" or config.compile or config.channels_last:
        return None
    last = history[-1]
    metrics = {k[len("eval_"):]: v for k, v in last.items() if k.startswith("eval_")}
    return metrics if last.get("epoch") == state["epoch"] and run.parts.main_metric in metrics else None


def _check_reproduced(before: dict, after: dict, main: str, rtol: float, out: Path) -> None:
    """``ExportCheckError`` unless the exported model's metrics are the run's."""
    loss_ok = "loss" not in before or math.isclose(after["loss"], before["loss"], rel_tol=rtol, abs_tol=rtol)
    if after[main] != before[main] or not loss_ok:
        raise ExportCheckError(
            f"the exported model does not reproduce the run: {main} {after[main]} vs {before[main]}, eval loss "
            f"{after.get('loss')} vs {before.get('loss')} (rtol {rtol}); {out} was not written")
