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

Distributed (``padnet.distributed``): under torchrun (``WORLD_SIZE`` > 1) ``train()`` starts the
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

The shape is torchvision's classification reference: ``Trainer._train`` sets up (``_set_up``: a fresh
start with the partition, or a restore from the checkpoint), then per epoch ``_train_one_epoch``,
``_evaluate_epoch``, ``_save_checkpoint``, and finally ``_finish`` (the results). The pieces that hold
no run state live beside it: ``steps`` (the one training step, shared with the partition warm-up, and
``evaluate``), ``schedule`` (steps per epoch, learning rate and temperature, derived once and stored
in the checkpoint), ``checkpoint`` (RNG states, restoring the model) and ``rebuild`` (``padnet eval``
and ``padnet export``).
"""


from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast, overload

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, RandomSampler

from .. import distributed
from ..data.transforms import describe as describe_preprocessing
from ..deploy import compact
from ..distributed import is_main_process, resolve_device
from ..errors import ConfigError, NonFiniteLossError, RunError, shorten
from ..files import open_append_nofollow, refuse_links
from ..layers import dynamic_layers, pad_layers
from ..layers.conv_strategy import conv_strategy, conv_strategy_picks, load_conv_strategy_picks
from ..partition import get_scorer, partition
from ..strict_yaml import read_yaml
from ..summary import summary
from ..temperature import set_temperature
from ..train_step import StepRecipe, autocast, train_step, unwrap
from .checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    get_rng_state,
    make_dynamic,
    read_training_checkpoint,
    restore_checked,
    restore_rng,
    seed_everything,
)
from .config import RunConfig
from .evaluation import DeviceLoader, dataset_size, deployable_parameters, eval_loader, evaluate, progress, to_device
from .recipe import recipe_changes
from .run_files import RunWriter
from .rundir import check_run_dir_name, claim, padnet_version, remove_unused
from .schedule import RunSchedule, derive_schedule
from .tasks import TaskParts, get_task

if TYPE_CHECKING:  # TensorBoard is optional (the vision extra): imported where the writer opens
    from torch.utils.tensorboard import SummaryWriter

RESULTS = "results.json"


class RunDirError(RunError):
    """The run directory holds a different run."""


@dataclass
class _Run:
    """What one run's epochs share: made by ``_prepare``, completed by ``_set_up`` (fresh, or restored
    from the checkpoint), advanced by every epoch."""

    parts: TaskParts
    device: torch.device
    world: int  # the number of processes
    schedule: RunSchedule
    model: nn.Module  # wrapped in DistributedDataParallel by ``_set_up`` under torchrun
    # Set by ``_set_up``, before any epoch reads them (unset until then: no None for every reader to rule out).
    optimizer: torch.optim.Optimizer = field(init=False, repr=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False, repr=False)
    step: StepRecipe = field(init=False, repr=False)
    eval_loader: DeviceLoader = field(init=False, repr=False)
    train_model: nn.Module = field(init=False, repr=False)  # what the steps call: ``model``, compiled or not
    eval_model: nn.Module = field(init=False, repr=False)  # evaluation calls: the unwrapped model or its EMA
    tb: SummaryWriter | None = None  # TensorBoard's writer, when enabled and installed
    scaler: torch.amp.GradScaler | None = None  # precision: fp16
    ema: AveragedModel | None = None  # the weights' moving average (config.ema)
    partition_info: dict = field(default_factory=dict)
    compacted: bool = False
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    global_step: int = 0
    last_eval: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------- trainer
class Trainer:
    """One run: ``Trainer(config).train()`` trains (or resumes, or returns a finished run's results).

    Args:
        config: the run's config (``padnet.train.load_config``).
        run_dir: the run directory, in place of ``config.run_dir``.
        bar: a tqdm-like bar (``reset``, ``update``, ``set_postfix_str``) that shows the whole run as one
            bar, in place of a bar per epoch and the log lines on the console (``train.log`` keeps
            them); the demo uses it.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, bar=None):
        self.config = config
        self.bar = bar
        self.run_dir = Path(run_dir or config.run_dir)
        self.writer = RunWriter(self.run_dir)
        # A logger of this run's own, outside logging's global registry (getLogger would keep one per
        # Trainer for the life of the process): released with the Trainer; its handlers close after train().
        self.logger = logging.Logger("padnet.run", logging.INFO)
        self.logger.propagate = False
        self._stop_after: int | None = None
        self._resume_state: dict | None = None  # the run directory's checkpoint, when resuming

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
        return eval_loader(self.config, parts)

    # ------------------------------------------------------------------ run
    @overload
    def train(self, stop_after_epoch: None = None) -> dict: ...

    @overload
    def train(self, stop_after_epoch: int | None) -> dict | None: ...

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
        fresh = not self.run_dir.exists()
        lock = self._claim_run_dir()
        try:
            results_path = self.run_dir / RESULTS
            if results_path.is_file():
                self._check_run_dir()
                return json.loads(results_path.read_text())
            # Everything that can be checked before the run directory is written is checked here: a
            # refused config leaves no config.yaml behind, so the corrected command is not "a different run",
            # and a new run directory refused here (a data error, say) is removed again.
            try:
                self._check_run_dir()
                self._check_tensorboard_dir()
                self._resume_state = self._check_checkpoint()
                run = self._prepare()
            except BaseException:
                if fresh and lock is not None:
                    remove_unused(self.run_dir)
                raise
            self.writer.yaml("config.yaml", self.config.to_dict())
            self._open_log()
            try:
                with conv_strategy(self.config.conv_strategy):
                    return self._train(run)
            except NonFiniteLossError as err:
                self.logger.error(str(err))
                raise
            finally:
                self._close_log()
        finally:
            if lock is not None:
                lock.release()

    def _claim_run_dir(self):
        """The run directory must be padnet's (or new); rank 0 checks it and holds its lock (returned) for
        the whole run, and tells the other ranks whether it could, so all ranks stop together on a refusal."""
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
        return lock

    def _prepare(self) -> _Run:
        """Seed, build the task's data and model, convert it, and derive the schedule, which checks the
        sizes that need the data (batch sizes against the training set). Writes nothing."""
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        world = distributed.world_size()
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())  # cuda:LOCAL_RANK (init_from_env)
        seed_everything(config.seed)
        parts = get_task(config.task).builder(config)
        model = make_dynamic(parts.model, config)
        train_examples = dataset_size(parts.train_dataset)
        schedule = derive_schedule(config, train_examples, world)
        per_rank = train_examples // world
        scoring = config.partition.batch_size
        if config.dynamic.mode == "pad" and scoring is not None and scoring > per_rank:
            raise ConfigError([f"partition.batch_size={scoring} is larger than the training set "
                               f"({per_rank} examples{' per process' if world > 1 else ''}); allowed: <= {per_rank} "
                               "or null (the training batch size)"])
        return _Run(parts, device, world, schedule, model)

    def _train(self, run: _Run) -> dict | None:
        """Set up (fresh or resumed), then epoch after epoch: train, evaluate, save a checkpoint; then
        the results (None when asked to stop early)."""
        self._set_up(run)
        try:
            for epoch in range(run.start_epoch, self.config.epochs):
                row = self._train_one_epoch(run, epoch)
                self._evaluate_epoch(run, row)
                self._end_epoch(run, row)
                self._save_checkpoint(run, epoch)
                if self._stop_after is not None and self._stop_after <= epoch + 1 < self.config.epochs:
                    self.logger.info(f"stopping after epoch {epoch + 1} as asked; resume with the same command")
                    return None
        finally:
            if run.tb is not None:
                run.tb.close()
        return self._finish(run)

    # ------------------------------------------------------------------ set-up
    def _set_up(self, run: _Run) -> None:
        """The model on its device, partitioned (a fresh PAD run) or restored (a resumed one), its
        optimizer and schedulers, the DDP wrapper, TensorBoard and the eval loader."""
        state = self._resume_state
        if state is not None:
            self._restore(run, state)
        else:
            self._start(run)
        if run.world > 1:
            self.logger.info(f"distributed: {run.world} processes ({distributed.backend_for(run.device)}), "
                             f"batch_size {self.config.batch_size} per process, "
                             f"effective batch {self.config.batch_size * run.world}")
        config = self.config
        layers = pad_layers(run.model)
        run.compacted = bool(layers) and all(layer.compacted for _, layer in layers)
        if config.channels_last:  # before the optimizer: its state takes the parameters' format
            run.model.to(memory_format=torch.channels_last)
        run.optimizer = self._make_optimizer(run.model)
        schedule = run.schedule
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: schedule.lr_factor(step))
        if config.precision == "fp16":
            run.scaler = torch.amp.GradScaler(run.device.type)
        if config.ema is not None:
            # A copy of the model (the partitioned, compacted one) whose parameters follow the weights'
            # moving average; its buffers (BatchNorm statistics, masks) are copied at every update.
            run.ema = AveragedModel(run.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema.decay), use_buffers=False)
        if state is not None:
            self._restore_training(run, state)
        self._write_summary(run.model)
        run.step = StepRecipe.for_model(run.model, run.parts.loss_fn, run.optimizer, scheduler=run.scheduler,
                                        grad_clip=config.optim.grad_clip, precision=config.precision,
                                        device_type=run.device.type, scaler=run.scaler)
        run.model = self._wrap(run.model, run.device)
        evaluated = unwrap(run.model) if run.ema is None else run.ema.module
        # torch.compile wraps the modules the steps and the evaluation call; run.model stays the module whose
        # state the checkpoint holds. A DDP model is compiled wrapped (DDP's hooks split the graph per bucket).
        # dynamic=True: sizes and floats (the annealed temperature) are symbolic from the first compile, so
        # the graphs do not depend on the values seen before (with the default, the first compile
        # specializes them and a change recompiles: a resumed run would compute with other kernels than an
        # uninterrupted one, and differ in the last bits).
        run.train_model = _compiled(run.model) if config.compile else run.model
        run.eval_model = _compiled(evaluated) if config.compile else evaluated
        run.tb = self._tensorboard(run.global_step)
        run.eval_loader = DeviceLoader(self.eval_loader(run.parts), run.device,
                                       torch.channels_last if config.channels_last else None)
        if self.bar is not None and is_main_process():
            self.bar.reset(total=self.config.epochs * schedule.steps_per_epoch)
            self.bar.update(run.global_step)

    def _start(self, run: _Run) -> None:
        """A fresh run: the model on its device, the same on every rank, partitioned for a PAD run."""
        config = self.config
        self.logger.info(f"run {config.label} -> {self.run_dir}  (task {config.task}, seed {config.seed}, "
                         f"{dataset_size(run.parts.train_dataset)} train / "
                         f"{dataset_size(run.parts.eval_dataset)} eval examples)")
        record = run.parts.info.get("preprocessing")
        if record is not None and record.get("kind") == "image":
            self.logger.info(f"preprocessing: {describe_preprocessing(record, run.parts.info.get('augment'))}")
        run.model.to(run.device)
        if run.world > 1:
            # Every rank built the model from the same seed; make sure, whatever the task does.
            distributed.broadcast_module(run.model)
        if config.dynamic.mode == "pad":
            self._bar_note("partition")
            run.partition_info = self._partition(run)

    def _restore(self, run: _Run, state: dict) -> None:
        """A resumed run: the model (masks, compaction, weights) from the checkpoint, on its device."""
        if state.get("conv_strategy_picks"):
            load_conv_strategy_picks(state["conv_strategy_picks"])  # compute as the interrupted run did
        restore_checked(self.run_dir / CHECKPOINT, run.model, state)
        run.model.to(run.device)
        run.partition_info = state.get("partition", {})
        self.logger.info(f"resuming {self.run_dir} from epoch {state['epoch']} (step {state['global_step']})")
        saved_world = int(state.get("world_size", 1))
        if saved_world != run.world:
            self.logger.warning(f"the checkpoint was written by a run of {saved_world} process(es), this one has "
                                f"{run.world}: the data order and the effective batch size change, so the resumed "
                                "run will not match an uninterrupted one")

    def _restore_training(self, run: _Run, state: dict) -> None:
        """Where the checkpoint left off: optimizer, learning-rate scheduler, history, step and RNG."""
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if run.scaler is not None:
            run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None:
            run.ema.module.load_state_dict(state["ema"])
            run.ema.n_averaged.fill_(int(state["ema_updates"]))
        run.history = list(state["history"])
        run.start_epoch, run.global_step = int(state["epoch"]), int(state["global_step"])
        run.last_eval = {k[5:]: v for k, v in run.history[-1].items() if k.startswith("eval_")} if run.history else {}
        restore_rng(state, run.world, distributed.rank())

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over the trainable parameters, at the base learning rate."""
        o = self.config.optim
        params = [p for p in model.parameters() if p.requires_grad]
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                   weight_decay=o.weight_decay)
        return torch.optim.AdamW(params, lr=o.lr, betas=(o.betas[0], o.betas[1]), weight_decay=o.weight_decay)

    def _wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around the converted, partitioned and compacted model (the
        identity in one process). ``find_unused_parameters`` stays False: every padnet layer puts every
        parameter in the graph on every step (an MoE expert with no tokens runs an empty matmul), so
        DDP need not walk the graph after each forward to look for unused ones."""
        if not distributed.is_distributed():
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=False)

    # ------------------------------------------------------------------ partition
    def _partition(self, run: _Run) -> dict:
        config, p, log = self.config, self.config.partition, self.logger
        if p.warmup_steps:
            self._warmup(run)
        model = run.model
        set_temperature(model, run.schedule.temperature_at(0))
        batches = self._scoring_batches(run) if get_scorer(p.scorer).needs_batches else []
        # Under DDP each rank scores its shard (the sampler above) and padnet.partition sums the scores
        # over ranks before ranking them.
        report = partition(model, batches, run.parts.loss_fn, config.dynamic.dynamic_ratio, rounds=p.rounds,
                           schedule=p.schedule, scope=p.scope, scorer=p.scorer, seed=config.seed)
        world = run.world
        if world > 1 and not distributed.replicas_identical([layer.mask for _, layer in pad_layers(model)]):
            raise RuntimeError("the partition gave different masks on different ranks (the models or the score "
                               "reduction differ between ranks); refusing to train replicas with different masks")
        self.writer.json("partition.json", report.to_dict())
        self.writer.text("partition.txt", report.table() + "\n")
        shards = f" per process x {world} processes" if world > 1 else ""
        units = f" (of the {report.granularity}s: {report.unit_ratio:.4f})" if report.granularity != "element" else ""
        log.info(f"partition ({p.scorer}, {len(batches)} scoring batches{shards}): "
                 f"dynamic ratio {report.dynamic_ratio:.4f}{units} in {report.wall_time_s:.1f}s")
        if p.static_init == "dynamic_mean":
            for _, layer in pad_layers(model):
                layer.static_from_dynamic()
            log.info("partition: static entries set to lambda_d / lambda_s x the mean of the dynamic kernels")
        if p.compact:
            compact(model, allow_unpartitioned=True)  # partitioned above (kappa = 1 keeps every entry)
        info = {"dynamic_ratio": report.dynamic_ratio, "wall_time_s": report.wall_time_s,
                "scoring_batches": len(batches) * world}
        if world > 1:
            info["scoring_batches_per_process"] = len(batches)
        return info

    def _scoring_batches(self, run: _Run) -> list:
        """The scoring set: the first batches of a fixed, seeded draw from the training data (this rank's
        shard of it under DDP)."""
        p = self.config.partition
        loader = self.train_loader(run.parts, epoch=-1, batch_size=p.batch_size or self.config.batch_size)
        batches = []
        for i, batch in enumerate(loader):
            if i == p.scoring_batches:
                break
            batches.append(to_device(batch, run.device))
        return batches

    def _warmup(self, run: _Run) -> None:
        """Fully dynamic steps before the partition: a throwaway optimizer of the same kind at the base
        learning rate. (Not the training schedule: its first steps are the learning-rate ramp, whose
        factor 1/warmup would leave the experts almost equal and the taylor scores mostly noise.)"""
        model, total = run.model, self.config.partition.warmup_steps
        recipe = StepRecipe.for_model(model, run.parts.loss_fn, self._make_optimizer(model))
        temperature = run.schedule.temperature_at(0)
        model.train()
        step = 0
        while step < total:
            for batch in self.train_loader(run.parts, epoch=-2 - step):
                train_step(model, [to_device(batch, run.device)], recipe, temperature,
                           where=lambda: f"in partition warm-up step {step}")
                step += 1
                if step == total:
                    break
        # Running statistics (BatchNorm) saw each rank's own batches: take rank 0's everywhere.
        distributed.broadcast_module(model)
        lr = recipe.optimizer.param_groups[0]["lr"]
        self.logger.info(f"partition warm-up: {step} fully dynamic steps at lr {lr:g}")

    # ------------------------------------------------------------------ one epoch
    def _train_one_epoch(self, run: _Run, epoch: int) -> dict:
        """Train one epoch; returns its row of the metrics history (without eval metrics yet)."""
        config = self.config
        run.model.train()
        loader = self.train_loader(run.parts, epoch)
        bar = progress(loader, config.progress and self.bar is None and is_main_process(),
                       f"epoch {epoch + 1}/{config.epochs}")
        self._bar_note(f"epoch {epoch + 1}/{config.epochs}")
        loss_sum, steps, started = 0.0, 0, time.perf_counter()
        micro_batches: list = []
        memory_format = torch.channels_last if config.channels_last else None
        for batch in bar:
            if steps == run.schedule.steps_per_epoch:  # micro-batches past the epoch's last whole step
                break
            micro_batches.append(to_device(batch, run.device, memory_format))
            if len(micro_batches) < config.accumulate_steps:
                continue
            temperature = run.schedule.temperature_at(run.global_step)
            step_loss = train_step(run.train_model, micro_batches, run.step, temperature,
                                   where=lambda: self._failed_step(run, epoch))
            micro_batches = []
            if run.ema is not None:
                run.ema.update_parameters(unwrap(run.model))
            run.global_step += 1
            steps += 1
            loss_sum += float(step_loss)
            self._after_step(run, bar, epoch, loss_sum / steps, float(step_loss), temperature)
        epoch_time = time.perf_counter() - started
        if run.world > 1:
            # DDP hands rank 0's buffers to every rank before each forward, but the last step's
            # BatchNorm statistics are each rank's own: make every replica rank 0's again.
            distributed.broadcast_module(unwrap(run.model), buffers_only=True)
        return {"epoch": epoch + 1, "step": run.global_step, "train_loss": loss_sum / max(steps, 1),
                "lr": run.scheduler.get_last_lr()[0], "temperature": run.schedule.temperature_at(run.global_step),
                "epoch_time_s": epoch_time}

    def _failed_step(self, run: _Run, epoch: int) -> str:
        """Where a non-finite loss stopped the run, and what is left of it."""
        kept = (f"The last good checkpoint ({self.run_dir / CHECKPOINT}, end of epoch {epoch}) is kept. "
                if epoch > 0 else "No checkpoint was written yet. ")
        return (f"at epoch {epoch + 1}, step {run.global_step}: the run stopped. {kept}"
                "Lower optim.lr or set optim.grad_clip and start a new run_dir, or resume this one to retry.")

    def _after_step(self, run: _Run, bar, epoch: int, mean_loss: float, step_loss: float, temperature: float) -> None:
        """The progress bars, the log line every ``log_every`` steps and TensorBoard's loss."""
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        if self.bar is not None and is_main_process():
            self.bar.update(1)
        if run.global_step % self.config.log_every == 0:
            # tau only where a softmax DY-Conv uses it (not for MoE or static models).
            self.logger.info(f"epoch {epoch + 1} step {run.global_step} loss {mean_loss:.4f} "
                             f"lr {run.scheduler.get_last_lr()[0]:.5f}"
                             + (f" tau {temperature:.3f}" if run.step.has_dyconv else ""))
        if run.tb is not None:
            run.tb.add_scalar("train/loss", step_loss, run.global_step)

    def _evaluate_epoch(self, run: _Run, row: dict) -> None:
        """Evaluate after every ``eval_every`` epochs and the last one, adding ``eval_*`` to ``row``."""
        epoch = row["epoch"]
        if epoch % self.config.eval_every and epoch != self.config.epochs:
            return
        if run.step.has_dyconv:
            set_temperature(run.eval_model, row["temperature"])
        # Every rank evaluates the whole eval set with the same weights (metrics such as MCC or Spearman
        # do not split into per-shard sums); rank 0's numbers are kept.
        with autocast(run.device.type, self.config.precision):
            metrics = evaluate(run.eval_model, run.parts, run.eval_loader, self.config.task)
        run.last_eval = distributed.broadcast_object(metrics)
        row.update({f"eval_{k}": v for k, v in run.last_eval.items()})

    def _end_epoch(self, run: _Run, row: dict) -> None:
        """The epoch's row into the history, the log, TensorBoard and metrics.csv/.json."""
        config = self.config
        run.history.append(row)
        self._bar_note(f"epoch {row['epoch']}/{config.epochs} loss {row['train_loss']:.3f}"
                       + "".join(f" {k[5:]} {v:.3f}" for k, v in row.items() if k in ("eval_accuracy", "eval_score")))
        self.logger.info("epoch {epoch} done in {epoch_time_s:.1f}s: train_loss {train_loss:.4f}".format(**row)
                         + "".join(f", {k} {v:.4f}" for k, v in row.items()
                                   if k.startswith("eval_") and isinstance(v, float)))
        if run.tb is not None:
            for k, v in row.items():
                if k.startswith("eval_") and isinstance(v, (int, float)):
                    run.tb.add_scalar(f"eval/{k[5:]}", v, run.global_step)
            run.tb.add_scalar("train/epoch_time_s", row["epoch_time_s"], run.global_step)
            run.tb.flush()
        self.writer.metrics(run.history)

    def _save_checkpoint(self, run: _Run, epoch: int) -> None:
        """``checkpoint.pt`` at the end of ``epoch`` (see ``padnet.train.checkpoint``)."""
        config = self.config
        rng_state = get_rng_state()
        checkpoint = {
            "format": CHECKPOINT_FORMAT, "version": 1, "padnet_version": padnet_version(), "epoch": epoch + 1,
            "global_step": run.global_step, "model": unwrap(run.model).state_dict(), "compacted": run.compacted,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "rng": rng_state, "history": run.history, "partition": run.partition_info,
            "config": config.to_dict(), "schedule": run.schedule.to_dict(),
            "conv_strategy_picks": conv_strategy_picks() if config.conv_strategy == "autotune" else {},
            "eval_device": run.device.type,  # the device type the history's evaluations ran on
        }
        if run.scaler is not None:
            checkpoint["scaler"] = run.scaler.state_dict()
        if run.ema is not None:
            checkpoint.update(ema=run.ema.module.state_dict(), ema_updates=int(run.ema.n_averaged))
        if run.world > 1:  # every rank's RNG (dropout, router noise), so a resumed run continues each
            checkpoint.update(world_size=run.world, rng_ranks=distributed.gather_objects(rng_state))
        self.writer.checkpoint(CHECKPOINT, checkpoint)

    # ------------------------------------------------------------------ results
    def _finish(self, run: _Run) -> dict:
        """``summary.json`` again and ``results.json``, written last: the run is finished."""
        self._write_summary(run.model)  # again: the trained scale factors (phi), not those after the partition
        results = self._results(run.model, run.parts, run.history, run.last_eval, run.partition_info)
        if run.world > 1:
            results["distributed"] = self._distributed_results(run)
        self.writer.json(RESULTS, results)
        self.logger.info(f"finished: {run.parts.main_metric} {results['test'].get(run.parts.main_metric)}  "
                         f"deployable parameters {results['parameters']['deployable']:,}")
        return results

    def _distributed_results(self, run: _Run) -> dict:
        config = self.config
        identical = distributed.replicas_identical(distributed.module_tensors(unwrap(run.model)))
        if not identical:
            self.logger.warning("the ranks' final weights differ: a layer changed parameters or buffers outside "
                                "DistributedDataParallel's gradient averaging")
        return {"world_size": run.world, "backend": distributed.backend_for(run.device),
                "batch_size_per_process": config.batch_size, "effective_batch_size": config.batch_size * run.world,
                "replicas_identical": identical}

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

    def _write_summary(self, model) -> None:
        if dynamic_layers(unwrap(model)):
            s = summary(unwrap(model))
            self.writer.json("summary.json", s.to_dict())
            self.writer.text("summary.txt", s.table() + "\n")
        else:
            total = sum(p.numel() for p in model.parameters())
            self.writer.json("summary.json", {"deployable_params": total, "stored_params": total, "layers": []})
            self.writer.text("summary.txt", f"static model: {total:,} parameters\n")

    # ------------------------------------------------------------------ logs and TensorBoard
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

    def _tensorboard(self, global_step: int) -> SummaryWriter | None:
        if not (self.config.tensorboard and is_main_process()):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.logger.info("tensorboard is not installed; skipping TensorBoard logging")
            return None
        self._check_tensorboard_dir()  # again, just before the writer opens its file
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=global_step or None)

    # ------------------------------------------------------------------ run directory checks
    def _check_run_dir(self) -> None:
        """``config.yaml``, if any, holds this run's config (but the keys a resumed run may change)."""
        saved = self.run_dir / "config.yaml"
        if not saved.is_file():
            return
        differ = self._config_differences(read_yaml(saved), saved)
        if differ:
            raise RunDirError(
                f"{self.run_dir} holds a run with a different config (keys: {', '.join(differ)}); "
                "use another run_dir, or delete that directory to start over"
            )

    def _check_checkpoint(self) -> dict | None:
        """The run directory's checkpoint, if any, checked against this run before anything is written:
        its format, the padnet version that wrote it, and the config stored in it (config.yaml can be
        edited or missing; a checkpoint copied from another run carries that run's recipe)."""
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return None
        state = read_training_checkpoint(path)
        version = state.get("padnet_version")
        if version is not None and version != padnet_version():
            raise RunDirError(f"{path} was written by padnet {shorten(version)}, this is padnet {padnet_version()}: "
                              "resume it with that version, or start a new run_dir")
        differ = self._config_differences(state["config"], path)
        if differ:
            raise RunDirError(
                f"{path} holds a run with a different config than this one (keys: {', '.join(differ)}): it was "
                "copied or written by another run; use another run_dir, or delete the checkpoint to start over"
            )
        return state

    def _config_differences(self, previous: dict, source: Path) -> list[str]:
        """The keys, but ``RESUME_FREE_KEYS``, whose values differ between this run's config and
        ``previous`` (read from ``source``)."""
        return [key for key, _, _ in recipe_changes(previous, self.config, source)]

    def _check_tensorboard_dir(self) -> None:
        """``<run_dir>/tensorboard`` is a real directory holding no symbolic link: TensorBoard's writer
        opens its event files by name, following links, so a link there (the directory or an event file)
        would make it write elsewhere. Refused with ``RunError`` naming the link."""
        if not (self.config.tensorboard and is_main_process()):
            return
        tb_dir = self.run_dir / "tensorboard"
        refuse_links(tb_dir, self.run_dir)
        if tb_dir.exists() and not tb_dir.is_dir():
            raise RunError(f"{tb_dir} exists and is not a directory; padnet writes TensorBoard event files there "
                           "(remove it, or set tensorboard: false)")
        if tb_dir.is_dir():
            for entry in tb_dir.iterdir():
                refuse_links(entry)


def _compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model, dynamic=True)``: a module (``OptimizedModule``, around ``model``)."""
    # torch.compile's annotations return the callable type it was given in general; a module gives a module.
    return cast(nn.Module, torch.compile(model, dynamic=True))
