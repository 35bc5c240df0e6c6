"""A plain training loop for one run (torchvision references / transformers Trainer style).

``Trainer(config).train()`` does, in order: validate the run directory, seed, build the task
(``padnet.train.tasks``), convert the model (``config.dynamic``), for PAD runs partition it before
training on a scoring set drawn from the training data and optionally ``compact()`` it, then train
with SGD or AdamW, a per-step cosine schedule and DY-Conv temperature annealing, evaluate, and write
an atomic checkpoint after every epoch. A run directory holds:

    config.yaml        the resolved config            train.log        human-readable log
    partition.json/.txt the partition report (PAD)   summary.json/.txt padnet.summary of the model
    metrics.csv/.json  one row per epoch              tensorboard/     event files (if installed)
    checkpoint.pt      last finished epoch            results.json     written last: the run is finished

Resume: ``train()`` on a run directory holding ``checkpoint.pt`` continues from it and, on CPU, ends
bit-identically to an uninterrupted run: the checkpoint holds the model (mask included), optimizer,
scheduler, the RNG states and the metrics history, and the data order of epoch e comes from a
generator seeded with (seed, e), not from the global RNG.

Distributed (``padnet.train.distributed``): under torchrun (``WORLD_SIZE`` > 1) ``train()`` starts the
process group (gloo on CPU, nccl on CUDA) unless one is running, and every rank runs the same steps:
the model is built from the same seed and broadcast from rank 0; the partition runs on every rank,
each scoring its shard of the scoring set, with the scores summed across ranks (``padnet.partition``),
so every rank gets the same mask (checked); the model is compacted and only then wrapped in
``DistributedDataParallel`` (gradients averaged over ranks: the effective batch is
``batch_size x world size``); each rank reads its share of every epoch's permutation
(``DistributedSampler`` seeded with (seed, epoch)); the per-step loss is averaged over ranks, so a NaN
on one rank stops every rank at the same step; every rank evaluates the whole eval set, rank 0's
metrics are kept; only rank 0 writes files. A checkpoint holds every rank's RNG state, so a resumed
run with the same number of processes continues exactly. In one process none of this runs.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ..errors import ModelFileError, NonFiniteLossError, RunError, shorten
from ..convert import compact, convert, dynamic_layers, pad_layers
from ..layers import DynamicConvCompute, MoECompute, aux_loss
from ..layers.conv_strategy import conv_strategy, conv_strategy_picks, load_conv_strategy_picks
from ..temperature import TemperatureSchedule, set_temperature
from . import distributed
from .config import ConfigError, RunConfig, config_from_dict
from .io import RunWriter, _cut, is_main_process, load_checkpoint, open_append_nofollow
from .rundir import check_run_dir_name, claim, padnet_version
from .tasks import TaskParts, get_task

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
CHECKPOINT_FORMAT = "padnet.train.checkpoint"
# Keys that may differ between a run and its resumption without changing its results.
# (Not ``threads``: the number of threads changes the order of float reductions, so the results.)
RESUME_FREE_KEYS = {"run_dir", "progress", "tensorboard", "log_every", "num_workers", "device"}


class RunDirError(RunError):
    """The run directory holds a different run."""


class ExportCheckError(RunError):
    """An exported model file did not reproduce its run's eval metrics; the file was not written."""


# --------------------------------------------------------------------------------------- helpers
def to_device(batch, device):
    """Move tensors, and tensors inside dicts/lists/tuples, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if hasattr(batch, "to") and callable(batch.to):  # e.g. transformers.BatchEncoding
        return batch.to(device)
    return batch


class _OnDevice:
    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            yield to_device(batch, self.device)

    def __len__(self):
        return len(self.loader)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """RNG states as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
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
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def make_dynamic(model: nn.Module, config: RunConfig) -> nn.Module:
    """Apply ``config.dynamic`` to a static model (no-op for mode=static)."""
    settings = config.dynamic.convert_config()
    return model if settings is None else convert(model, config=settings)


def restore_model(model: nn.Module, state_dict: dict, compacted: bool) -> None:
    """Load a trained state into a freshly converted model: masks first, then compact, then weights."""
    for name, layer in pad_layers(model):
        key = f"{name}.mask" if name else "mask"
        if key not in state_dict:
            raise ValueError(f"checkpoint has no mask for PAD layer {name!r} (key {key!r})")
        layer.set_mask(state_dict[key].to(torch.bool))
        if compacted:
            layer.compact()
    model.load_state_dict(state_dict)


def _restore_checked(path: Path, model: nn.Module, state: dict) -> None:
    """``restore_model`` from a checkpoint, a mismatch reported as a ``ModelFileError`` naming the file."""
    try:
        restore_model(model, state["model"], bool(state["compacted"]))
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise ModelFileError(path, f"does not fit this run's model (another config or padnet version?): "
                                   f"{_cut(str(err), 500)}") from None


def deployable_parameters(model: nn.Module) -> int:
    from ..summary import summary

    # A model without dynamic layers deploys all its parameters; summary counts them as "other".
    return int(summary(_unwrap(model)).deployable_params)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"device={name!r} but CUDA is not available; allowed here: 'cpu', 'auto'"])
    return torch.device(name)


# --------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, bar=None):
        """``bar``: a tqdm-like bar (``reset``, ``update``, ``set_postfix_str``) that shows the whole run
        as one bar, in place of a bar per epoch and the log lines on the console (``train.log`` keeps
        them); the demo uses it."""
        self.config = config
        self.bar = bar
        self.run_dir = Path(run_dir or config.run_dir)
        self.writer = RunWriter(self.run_dir)
        self.logger = logging.getLogger(f"padnet.run.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)

    # ------------------------------------------------------------------ hooks (DDP goes here)
    def train_sampler(self, dataset, epoch: int):
        """Data order of ``epoch``: a generator seeded with (seed, epoch), independent of the global
        RNG, so a resumed run sees the same order. Under DDP, this rank's share of the same
        permutation (``DistributedSampler`` with ``set_epoch``)."""
        if distributed.is_distributed():
            return distributed.train_sampler(dataset, self.config.seed * 1_000_003, epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return RandomSampler(dataset, generator=generator)

    def train_loader(self, parts: TaskParts, epoch: int, batch_size: int | None = None) -> DataLoader:
        sampler = self.train_sampler(parts.train_dataset, epoch)
        # The loader's own generator seeds worker processes; tie it to the epoch as well.
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch + 7_919)
        return DataLoader(
            parts.train_dataset, batch_size=batch_size or self.config.batch_size, sampler=sampler,
            collate_fn=parts.collate_fn, num_workers=self.config.num_workers, drop_last=True,
            generator=generator, persistent_workers=False,
        )

    def eval_loader(self, parts: TaskParts) -> DataLoader:
        generator = torch.Generator().manual_seed(0)  # keeps eval from drawing on the global RNG
        return DataLoader(parts.eval_dataset, batch_size=self.config.eval_batch_size, shuffle=False,
                          collate_fn=parts.collate_fn, num_workers=self.config.num_workers, generator=generator)

    # ------------------------------------------------------------------ setup
    def _open_log(self) -> None:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        if is_main_process():
            file_handler = logging.StreamHandler(open_append_nofollow(self.run_dir / "train.log"))
            file_handler.setFormatter(fmt)
            self.logger.addHandler(file_handler)
            if self.bar is None:
                console = logging.StreamHandler(sys.stderr)
                console.setFormatter(logging.Formatter("%(message)s"))
                self.logger.addHandler(console)

    def _close_log(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)

    def _bar_note(self, text: str) -> None:
        if self.bar is not None and is_main_process():
            self.bar.set_postfix_str(text)

    def _check_run_dir(self) -> None:
        saved = self.run_dir / "config.yaml"
        if not saved.is_file():
            return
        import yaml

        previous = yaml.safe_load(saved.read_text()) or {}
        try:
            # Through today's schema, so a key added since (with its default) is not a difference.
            previous = config_from_dict(previous, source=str(saved), preflight=False).to_dict()
        except ConfigError:
            pass  # a key removed since, or a value no longer valid: compare as written
        differ = self._config_differences(previous)
        if differ:
            raise RunDirError(
                f"{self.run_dir} holds a run with a different config (keys: {', '.join(differ)}); "
                "use another run_dir, or delete that directory to start over"
            )

    def _config_differences(self, previous: dict) -> list[str]:
        current = self.config.to_dict()
        return sorted(
            _diff_keys({k: v for k, v in previous.items() if k not in RESUME_FREE_KEYS},
                       {k: v for k, v in current.items() if k not in RESUME_FREE_KEYS})
        )

    def _check_checkpoint(self) -> dict | None:
        """The run directory's checkpoint, if any, checked against this run before anything is written:
        its format, the padnet version that wrote it, and the config stored in it (config.yaml can be
        edited or missing; a checkpoint copied from another run carries that run's recipe)."""
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return None
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ModelFileError(path, f"not a padnet training checkpoint (format={shorten(state.get('format'))})")
        version = state.get("padnet_version")
        if version is not None and version != padnet_version():
            raise RunDirError(f"{path} was written by padnet {shorten(version)}, this is padnet {padnet_version()}: "
                              "resume it with that version, or start a new run_dir")
        stored = state.get("config")
        if not isinstance(stored, dict):
            raise ModelFileError(path, "damaged padnet training checkpoint: its config is not a mapping")
        try:
            stored = config_from_dict(stored, source=str(path), preflight=False).to_dict()
        except ConfigError:
            pass  # a key removed since, or a value no longer valid: compare as written
        differ = self._config_differences(stored)
        if differ:
            raise RunDirError(
                f"{path} holds a run with a different config than this one (keys: {', '.join(differ)}): it was "
                "copied or written by another run; use another run_dir, or delete the checkpoint to start over"
            )
        return state

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over the trainable parameters, at the base learning rate."""
        o = self.config.optim
        params = [p for p in model.parameters() if p.requires_grad]
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                   weight_decay=o.weight_decay)
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def _build_optimizer(self, model: nn.Module, steps_per_epoch: int):
        o = self.config.optim
        optimizer = self._make_optimizer(model)
        total = self.config.epochs * steps_per_epoch
        warmup = int(round(o.warmup_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if o.scheduler == "constant":
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ------------------------------------------------------------------ run
    def train(self, stop_after_epoch: int | None = None) -> dict | None:
        """Run (or resume, or skip if finished) and return the results dict.

        ``stop_after_epoch=e`` stops right after epoch e's checkpoint, as if the process had been
        killed there, and returns None (for tests of resume, and to split a run across sessions)."""
        self._stop_after = stop_after_epoch
        # Under torchrun: start the process group unless the caller (e.g. the CLI) already did.
        owns_group = distributed.init_from_env(self.config.device)
        ok = False
        try:
            if owns_group:
                self.writer = RunWriter(self.run_dir)  # now knows its rank
            results = self._run()
            ok = True
            return results
        finally:
            if owns_group:
                distributed.shutdown(sync=ok)

    def _run(self) -> dict | None:
        # The run directory must be padnet's (or new); rank 0 checks it and holds its lock for the whole
        # run, and tells the other ranks whether it could, so all ranks stop together on a refusal.
        check_run_dir_name(self.run_dir)
        lock, refused = None, None
        if is_main_process():
            try:
                lock = claim(self.run_dir)
            except (RunError, OSError) as err:
                refused = err
        if distributed.is_distributed():
            message = distributed.broadcast_object(None if refused is None else str(refused))
            if message is not None and refused is None:
                raise RunError(f"rank 0 could not claim the run directory: {message}")
        if refused is not None:
            raise refused
        try:
            results_path = self.run_dir / RESULTS
            if results_path.is_file():
                import json

                self._check_run_dir()
                return json.loads(results_path.read_text())
            self._check_run_dir()
            self._check_tensorboard_dir()
            self._resume_state = self._check_checkpoint()
            # Everything that can be checked before the run directory is written is checked here: a
            # refused config leaves no config.yaml behind, so the corrected command is not "a different run".
            prepared = self._prepare()
            self.writer.yaml("config.yaml", self.config.to_dict())
            self._open_log()
            try:
                with conv_strategy(self.config.conv_strategy):
                    return self._train(*prepared)
            except NonFiniteLossError as err:
                self.logger.error(str(err))
                raise
            finally:
                self._close_log()
        finally:
            if lock is not None:
                lock.release()

    def _prepare(self):
        """Seed, build the task's data and model, convert it, and check the sizes that need the data
        (batch sizes against the training set). Writes nothing."""
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        world = distributed.world_size()
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())  # cuda:LOCAL_RANK (init_from_env)
        seed_everything(config.seed)
        task = get_task(config.task)
        parts = task.builder(config)
        model = make_dynamic(parts.model, config)
        per_rank = len(parts.train_dataset) // world
        steps_per_epoch = per_rank // config.batch_size
        if steps_per_epoch < 1:
            if world > 1:
                raise ConfigError([f"batch_size={config.batch_size} (per process) is larger than one process's share of "
                                   f"the training set ({len(parts.train_dataset)} examples / {world} processes = {per_rank}); "
                                   f"allowed: <= {per_rank}, or fewer processes"])
            raise ConfigError([f"batch_size={config.batch_size} is larger than the training set "
                               f"({len(parts.train_dataset)} examples); allowed: <= {len(parts.train_dataset)}"])
        scoring = config.partition.batch_size
        if config.dynamic.mode == "pad" and scoring is not None and scoring > per_rank:
            raise ConfigError([f"partition.batch_size={scoring} is larger than the training set "
                               f"({per_rank} examples{' per process' if world > 1 else ''}); allowed: <= {per_rank} "
                               "or null (the training batch size)"])
        return device, world, parts, model, steps_per_epoch

    def _train(self, device, world, parts, model, steps_per_epoch) -> dict:
        config, log = self.config, self.logger
        tau = TemperatureSchedule(config.dynamic.temperature_start, config.dynamic.temperature_end,
                                  config.dynamic.temperature_epochs)
        has_moe = any(isinstance(m, MoECompute) for m in model.modules())
        has_dyconv = any(isinstance(m, DynamicConvCompute) for m in model.modules())

        checkpoint_path = self.run_dir / CHECKPOINT
        state = self._resume_state
        if state is not None and state.get("conv_strategy_picks"):
            load_conv_strategy_picks(state["conv_strategy_picks"])  # compute as the interrupted run did
        partition_info: dict = {}
        if state is not None:
            _restore_checked(checkpoint_path, model, state)
            model.to(device)
            partition_info = state.get("partition", {})
            log.info(f"resuming {self.run_dir} from epoch {state['epoch']} (step {state['global_step']})")
            saved_world = int(state.get("world_size", 1))
            if saved_world != world:
                log.warning(f"the checkpoint was written by a run of {saved_world} process(es), this one has {world}: "
                            "the data order and the effective batch size change, so the resumed run will not "
                            "match an uninterrupted one")
        else:
            log.info(f"run {config.label} -> {self.run_dir}  (task {config.task}, seed {config.seed}, "
                     f"{len(parts.train_dataset)} train / {len(parts.eval_dataset)} eval examples)")
            model.to(device)
            if world > 1:
                # Every rank built the model from the same seed; make sure, whatever the task does.
                distributed.broadcast_module(model)
            if config.dynamic.mode == "pad":
                self._bar_note("partition")
                partition_info = self._partition(model, parts, device, tau, steps_per_epoch)
        if world > 1:
            log.info(f"distributed: {world} processes ({distributed.backend_for(device)}), batch_size "
                     f"{config.batch_size} per process, effective batch {config.batch_size * world}")
        compacted = bool(pad_layers(model)) and all(layer.compacted for _, layer in pad_layers(model))
        optimizer, scheduler = self._build_optimizer(model, steps_per_epoch)
        history: list[dict] = []
        start_epoch = global_step = 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = list(state["history"])
            start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
            rng_ranks = state.get("rng_ranks")
            if world > 1 and rng_ranks is not None and len(rng_ranks) == world:
                set_rng_state(rng_ranks[distributed.rank()])
            else:
                set_rng_state(state["rng"])
        self._write_summary(model)
        model = self._wrap(model, device)

        tb = self._tensorboard(global_step)
        eval_loader = _OnDevice(self.eval_loader(parts), device)
        if self.bar is not None and is_main_process():
            self.bar.reset(total=config.epochs * steps_per_epoch)
            self.bar.update(global_step)
        last_eval = {k[5:]: v for k, v in history[-1].items() if k.startswith("eval_")} if history else {}
        try:
            for epoch in range(start_epoch, config.epochs):
                model.train()
                loader = self.train_loader(parts, epoch)
                bar = _progress(loader, config.progress and self.bar is None and is_main_process(),
                                f"epoch {epoch + 1}/{config.epochs}")
                self._bar_note(f"epoch {epoch + 1}/{config.epochs}")
                loss_sum, steps, started = 0.0, 0, time.perf_counter()
                for batch in bar:
                    batch = to_device(batch, device)
                    temperature = tau.at_step(global_step, steps_per_epoch)
                    if has_dyconv:
                        set_temperature(model, temperature)
                    loss = parts.loss_fn(model, batch)
                    if has_moe:
                        loss = loss + aux_loss(_unwrap(model))
                    # The mean over ranks (the loss itself in one process): non-finite on every rank
                    # when it is on any, so all ranks stop at this step instead of waiting for each other.
                    step_loss = distributed.mean(loss.detach())
                    if not torch.isfinite(step_loss):
                        raise NonFiniteLossError(
                            f"non-finite loss ({float(step_loss)}{_over_ranks(world)}) at epoch {epoch + 1}, step {global_step}: the run stopped. "
                            + (f"The last good checkpoint ({checkpoint_path}, end of epoch {epoch}) is kept. "
                               if epoch > 0 else "No checkpoint was written yet. ")
                            + "Lower optim.lr or set optim.grad_clip and start a new run_dir, or resume this one to retry."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.optim.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    global_step += 1
                    steps += 1
                    loss_sum += float(step_loss)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{loss_sum / steps:.4f}", refresh=False)
                    if self.bar is not None and is_main_process():
                        self.bar.update(1)
                    if global_step % config.log_every == 0:
                        # tau only where a softmax DY-Conv uses it (not for MoE or static models).
                        log.info(f"epoch {epoch + 1} step {global_step} loss {loss_sum / steps:.4f} "
                                 f"lr {scheduler.get_last_lr()[0]:.5f}" + (f" tau {temperature:.3f}" if has_dyconv else ""))
                    if tb is not None:
                        tb.add_scalar("train/loss", float(step_loss), global_step)
                epoch_time = time.perf_counter() - started
                if world > 1:
                    # DDP hands rank 0's buffers to every rank before each forward, but the last step's
                    # BatchNorm statistics are each rank's own: make every replica rank 0's again.
                    distributed.broadcast_module(_unwrap(model), buffers_only=True)
                row = {"epoch": epoch + 1, "step": global_step, "train_loss": loss_sum / max(steps, 1),
                       "lr": scheduler.get_last_lr()[0], "temperature": tau.at_step(global_step, steps_per_epoch),
                       "epoch_time_s": epoch_time}
                if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                    if has_dyconv:
                        set_temperature(model, tau.at_step(global_step, steps_per_epoch))
                    # Every rank evaluates the whole eval set with the same weights (metrics such as
                    # MCC or Spearman do not split into per-shard sums); rank 0's numbers are kept.
                    last_eval = distributed.broadcast_object(self._evaluate(_unwrap(model), parts, eval_loader))
                    row.update({f"eval_{k}": v for k, v in last_eval.items()})
                history.append(row)
                self._bar_note(f"epoch {epoch + 1}/{config.epochs} loss {row['train_loss']:.3f}"
                               + "".join(f" {k[5:]} {v:.3f}" for k, v in row.items() if k in ("eval_accuracy", "eval_score")))
                log.info("epoch {epoch} done in {epoch_time_s:.1f}s: train_loss {train_loss:.4f}".format(**row)
                         + "".join(f", {k} {v:.4f}" for k, v in row.items() if k.startswith("eval_") and isinstance(v, float)))
                if tb is not None:
                    for k, v in row.items():
                        if k.startswith("eval_") and isinstance(v, (int, float)):
                            tb.add_scalar(f"eval/{k[5:]}", v, global_step)
                    tb.add_scalar("train/epoch_time_s", epoch_time, global_step)
                    tb.flush()
                self.writer.metrics(history)
                rng_state = get_rng_state()
                checkpoint = {
                    "format": CHECKPOINT_FORMAT, "version": 1, "padnet_version": padnet_version(), "epoch": epoch + 1, "global_step": global_step,
                    "model": _unwrap(model).state_dict(), "compacted": compacted,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state, "history": history, "partition": partition_info,
                    "config": config.to_dict(),
                    "conv_strategy_picks": conv_strategy_picks() if config.conv_strategy == "autotune" else {},
                }
                if world > 1:  # every rank's RNG (dropout, router noise), so a resumed run continues each
                    checkpoint.update(world_size=world, rng_ranks=distributed.gather_objects(rng_state))
                self.writer.checkpoint(CHECKPOINT, checkpoint)
                if self._stop_after is not None and epoch + 1 >= self._stop_after and epoch + 1 < config.epochs:
                    log.info(f"stopping after epoch {epoch + 1} as asked; resume with the same command")
                    return None
        finally:
            if tb is not None:
                tb.close()

        self._write_summary(model)  # again: the trained scale factors (phi), not those after the partition
        results = self._results(model, parts, history, last_eval, partition_info)
        if world > 1:
            results["distributed"] = {
                "world_size": world, "backend": distributed.backend_for(device),
                "batch_size_per_process": config.batch_size, "effective_batch_size": config.batch_size * world,
                "replicas_identical": distributed.replicas_identical(distributed.module_tensors(_unwrap(model))),
            }
            if not results["distributed"]["replicas_identical"]:
                log.warning("the ranks' final weights differ: a layer changed parameters or buffers outside "
                            "DistributedDataParallel's gradient averaging")
        self.writer.json(RESULTS, results)
        log.info(f"finished: {parts.main_metric} {results['test'].get(parts.main_metric)}  "
                 f"deployable parameters {results['parameters']['deployable']:,}")
        return results

    def _partition(self, model, parts, device, tau, steps_per_epoch) -> dict:
        from ..partition import get_scorer, partition

        config, p, log = self.config, self.config.partition, self.logger
        if p.warmup_steps:
            self._warmup(model, parts, device, tau, steps_per_epoch)
        set_temperature(model, tau.at_step(0, steps_per_epoch))
        batches = []
        if get_scorer(p.scorer).needs_batches:
            # The scoring set: the first batches of a fixed, seeded draw from the training data.
            loader = self.train_loader(parts, epoch=-1, batch_size=p.batch_size or config.batch_size)
            for i, batch in enumerate(loader):
                if i == p.scoring_batches:
                    break
                batches.append(to_device(batch, device))
        # Under DDP each rank scores its shard (the sampler above) and padnet.partition sums the scores
        # over ranks before ranking them.
        report = partition(model, batches, parts.loss_fn, config.dynamic.dynamic_ratio, rounds=p.rounds,
                           schedule=p.schedule, scope=p.scope, scorer=p.scorer, seed=config.seed)
        world = distributed.world_size()
        if world > 1 and not distributed.replicas_identical([layer.mask for _, layer in pad_layers(model)]):
            raise RuntimeError("the partition gave different masks on different ranks (the models or the score "
                               "reduction differ between ranks); refusing to train replicas with different masks")
        self.writer.json("partition.json", report.to_dict())
        self.writer.text("partition.txt", report.table() + "\n")
        shards = f" per process x {world} processes" if world > 1 else ""
        log.info(f"partition ({p.scorer}, {len(batches)} scoring batches{shards}): dynamic ratio {report.dynamic_ratio:.4f} "
                 f"in {report.wall_time_s:.1f}s")
        if p.static_init == "dynamic_mean":
            for _, layer in pad_layers(model):
                layer.static_from_dynamic()
            log.info("partition: static entries set to lambda_d / lambda_s x the mean of the dynamic kernels")
        if p.compact:
            compact(model)
        info = {"dynamic_ratio": report.dynamic_ratio, "wall_time_s": report.wall_time_s,
                "scoring_batches": len(batches) * world}
        if world > 1:
            info["scoring_batches_per_process"] = len(batches)
        return info

    def _warmup(self, model, parts, device, tau, steps_per_epoch) -> None:
        """Fully dynamic steps before the partition: a throwaway optimizer of the same kind at the base
        learning rate. (Not the training schedule: its first steps are the learning-rate ramp, whose
        factor 1/warmup would leave the experts almost equal and the taylor scores mostly noise.)"""
        optimizer = self._make_optimizer(model)
        has_moe = any(isinstance(m, MoECompute) for m in model.modules())
        model.train()
        step = 0
        while step < self.config.partition.warmup_steps:
            for batch in self.train_loader(parts, epoch=-2 - step):
                set_temperature(model, tau.at_step(0, steps_per_epoch))
                loss = parts.loss_fn(model, to_device(batch, device))
                if has_moe:
                    loss = loss + aux_loss(model)
                step_loss = distributed.mean(loss.detach())  # all ranks stop together on a NaN
                if not torch.isfinite(step_loss):
                    raise NonFiniteLossError(f"non-finite loss ({float(step_loss)}{_over_ranks(distributed.world_size())}) "
                                             f"in partition warm-up step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(model.parameters())  # no DDP wrapper yet: average by hand
                optimizer.step()
                step += 1
                if step == self.config.partition.warmup_steps:
                    break
        # Running statistics (BatchNorm) saw each rank's own batches: take rank 0's everywhere.
        distributed.broadcast_module(model)
        self.logger.info(f"partition warm-up: {step} fully dynamic steps at lr {optimizer.param_groups[0]['lr']:g}")

    def _wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around the converted, partitioned and compacted model (the
        identity in one process). ``find_unused_parameters`` stays False: every padnet layer puts every
        parameter in the graph on every step (an MoE expert with no tokens runs an empty matmul), so
        DDP need not walk the graph after each forward to look for unused ones."""
        if not distributed.is_distributed():
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=False)

    def _evaluate(self, model, parts, loader) -> dict:
        model.eval()
        with torch.no_grad():
            metrics = parts.evaluate(model, loader)
        model.train()
        if parts.main_metric not in metrics:
            raise KeyError(f"task {self.config.task!r}: evaluate() returned {sorted(metrics)}, without its "
                           f"main_metric {parts.main_metric!r}")
        metrics = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in metrics.items()}
        bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            # Like a non-finite training loss: stop, keep the last good checkpoint, write no results.
            raise NonFiniteLossError(
                f"non-finite evaluation metrics ({', '.join(f'{k}={metrics[k]}' for k in bad)}): the run stopped "
                "and no checkpoint or results were written for this epoch. Lower optim.lr or set optim.grad_clip "
                "and start a new run_dir."
            )
        return metrics

    def _check_tensorboard_dir(self) -> None:
        """``<run_dir>/tensorboard`` is a real directory holding no symbolic link: TensorBoard's writer
        opens its event files by name, following links, so a link there (the directory or an event file)
        would make it write elsewhere. Refused with ``RunError`` naming the link."""
        if not (self.config.tensorboard and is_main_process()):
            return
        from .io import refuse_links

        tb_dir = self.run_dir / "tensorboard"
        refuse_links(tb_dir, self.run_dir)
        if tb_dir.exists() and not tb_dir.is_dir():
            raise RunError(f"{tb_dir} exists and is not a directory; padnet writes TensorBoard event files there "
                           "(remove it, or set tensorboard: false)")
        if tb_dir.is_dir():
            for entry in tb_dir.iterdir():
                refuse_links(entry)

    def _tensorboard(self, global_step: int):
        if not (self.config.tensorboard and is_main_process()):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.logger.info("tensorboard is not installed; skipping TensorBoard logging")
            return None
        self._check_tensorboard_dir()  # again, just before the writer opens its file
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=global_step or None)

    def _write_summary(self, model) -> None:
        from ..summary import summary

        if dynamic_layers(_unwrap(model)):
            s = summary(_unwrap(model))
            self.writer.json("summary.json", s.to_dict())
            self.writer.text("summary.txt", s.table() + "\n")
        else:
            total = sum(p.numel() for p in model.parameters())
            self.writer.json("summary.json", {"deployable_params": total, "stored_params": total, "layers": []})
            self.writer.text("summary.txt", f"static model: {total:,} parameters\n")

    def _results(self, model, parts, history, last_eval, partition_info) -> dict:
        config = self.config
        mode = config.dynamic.mode
        ratio = {"static": 0.0, "dynamic": 1.0}.get(mode, partition_info.get("dynamic_ratio"))
        times = [row["epoch_time_s"] for row in history]
        return {
            "name": config.label,
            "task": config.task,
            "seed": config.seed,
            "mode": mode,
            "dynamic_ratio": ratio,
            "target_dynamic_ratio": config.dynamic.dynamic_ratio if mode == "pad" else ratio,
            "scorer": config.partition.scorer if mode == "pad" else None,
            "epochs": config.epochs,
            "main_metric": parts.main_metric,
            "test": last_eval,
            "parameters": {
                "deployable": deployable_parameters(model),
                "stored": sum(p.numel() for p in model.parameters()),
            },
            "time_per_epoch_s": sum(times) / len(times) if times else None,
            "partition": partition_info,
            "info": parts.info,
            "config": config.to_dict(),
            "padnet_version": padnet_version(),
        }


def _over_ranks(world: int) -> str:
    return f", mean over {world} processes" if world > 1 else ""


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# --------------------------------------------------------------------------------------- eval
class RebuiltRun(NamedTuple):
    """A run's model rebuilt from its checkpoint, with what evaluating it needs."""

    checkpoint: Path
    state: dict
    config: RunConfig
    parts: TaskParts
    model: nn.Module  # on the config's device
    loader: _OnDevice  # the task's eval loader
    trainer: Trainer

    def evaluate(self, model: nn.Module | None = None) -> dict:
        return self.trainer._evaluate(self.model if model is None else model, self.parts, self.loader)


def _rebuild_run(run_dir, checkpoint, overrides) -> RebuiltRun:
    if checkpoint is None:
        if run_dir is None:
            raise ValueError("give a run directory or a checkpoint file")
        checkpoint = Path(run_dir) / CHECKPOINT
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint} (a run writes {CHECKPOINT} after its first epoch)")
    state = load_checkpoint(checkpoint)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(checkpoint, f"not a padnet training checkpoint (format={shorten(state.get('format'))})")
    if not isinstance(state["config"], dict):
        raise ModelFileError(checkpoint, "damaged padnet training checkpoint: its config is not a mapping")
    config = config_from_dict(state["config"], overrides, source=str(checkpoint))
    seed_everything(config.seed)
    device = resolve_device(config.device)
    from ..models.hf import local_files_only

    with local_files_only(checkpoint):  # a hub model the checkpoint names comes from the local cache or not at all
        parts = get_task(config.task).builder(config)
    model = make_dynamic(parts.model, config)
    _restore_checked(checkpoint, model, state)
    model.to(device)
    set_temperature(model, _run_temperature(config, state, len(parts.train_dataset)))
    trainer = Trainer(config, run_dir or checkpoint.parent)
    return RebuiltRun(checkpoint, state, config, parts, model, _OnDevice(trainer.eval_loader(parts), device), trainer)


def _run_temperature(config: RunConfig, state: dict, train_examples: int) -> float:
    """The attention temperature the run evaluated with at its checkpoint: the one its last epoch
    recorded; for older checkpoints, recomputed from the schedule with the run's steps per epoch,
    which a run of several processes divides by their number."""
    history = state.get("history") or []
    if history and isinstance(history[-1].get("temperature"), (int, float)):
        return float(history[-1]["temperature"])
    world = max(1, int(state.get("world_size", 1)))
    steps_per_epoch = max(1, train_examples // world // config.batch_size)
    tau = TemperatureSchedule(config.dynamic.temperature_start, config.dynamic.temperature_end,
                              config.dynamic.temperature_epochs)
    return tau.at_step(int(state["global_step"]), steps_per_epoch)


def _check_export_out(out) -> None:
    """``export`` writes a new ``.safetensors`` file and never over a run's own files (checkpoint.pt,
    config.yaml, results.json, ...) nor through a symbolic link."""
    if out is None:
        return
    from .rundir import RUN_FILES

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
    """Rebuild a run's model from its checkpoint and evaluate it on the task's eval set."""
    run = _rebuild_run(run_dir, checkpoint, overrides)
    return {"checkpoint": str(run.checkpoint), "epoch": int(run.state["epoch"]), "name": run.config.label,
            **run.evaluate(), "deployable_params": deployable_parameters(run.model)}


def export_run(run_dir: str | Path | None = None, checkpoint: str | Path | None = None,
               out: str | Path | None = None, overrides: list[str] | None = None, rtol: float = 1e-4) -> dict:
    """Rebuild a run's model, deploy it (``padnet.deploy`` when it holds PAD layers; other models are
    saved as they are), save it with ``padnet.save`` and check the file: the model ``padnet.load``
    rebuilds from it must give the run's eval metrics (eval loss within ``rtol``, the same main metric).
    The file is written beside ``out`` and renamed to it only once the check passes, so a failed export
    leaves an earlier file at ``out`` untouched. Default ``out``: ``<run dir>/model.safetensors``."""
    from ..cost import stored_numel
    from ..deploy import deploy
    from ..serialization import load, save

    _check_export_out(out)
    run = _rebuild_run(run_dir, checkpoint, overrides)
    model = run.model
    out = Path(out) if out is not None else run.checkpoint.parent / "model.safetensors"
    if out.resolve() == run.checkpoint.resolve():
        raise RunError(f"--out {out} is the checkpoint being exported; export never writes over a run's files")
    before = run.evaluate()
    model.eval()
    form = "deployed" if pad_layers(model) else "training" if dynamic_layers(model) else "plain"
    if form == "deployed":
        deploy(model)
    unchecked = save(model.cpu(), out.with_name(f".{out.stem}.unchecked{out.suffix}"))
    try:
        loaded = load(unchecked).to(resolve_device(run.config.device))
        after = run.evaluate(loaded)
        main = run.parts.main_metric
        loss_ok = "loss" not in before or math.isclose(after["loss"], before["loss"], rel_tol=rtol, abs_tol=rtol)
        if after[main] != before[main] or not loss_ok:
            raise ExportCheckError(
                f"the exported model does not reproduce the run: {main} {after[main]} vs {before[main]}, eval loss "
                f"{after.get('loss')} vs {before.get('loss')} (rtol {rtol}); {out} was not written")
        path = unchecked.replace(out)
    finally:
        unchecked.unlink(missing_ok=True)
    return {"checkpoint": str(run.checkpoint), "path": str(path), "form": form, "file_bytes": path.stat().st_size,
            "stored_params": stored_numel(loaded), "deployable_params": deployable_parameters(loaded),
            "main_metric": main, "run": before, "exported": after}
