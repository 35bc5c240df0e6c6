"""Iterative Mode Partition (docs/method.md#partition): choose which kernel entries stay dynamic.

Each round relaxes every PAD layer's mask to a float that carries gradient, accumulates
dL/dM over the scoring batches (the first-order Taylor estimate of the loss change of making an entry
static), and keeps the top kappa_t fraction. kappa_t follows the schedule and reaches kappa in the
last round; entries dropped in one round can come back in a later one.

What is ranked are each layer's units (``layer.num_units``): its entries, or for ``granularity=
"channel"`` its rows (output channels), scored by the sum of their entries' signed Taylor terms, then
the absolute value (docs/method.md#granularity); counts, scopes and schedules are then in units.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import PartitionError, UsageError
from .layers import GRANULARITIES, pad_layers
from .layers._validate import check_choice
from .layers.protocol import DeployedPartiallyDynamic, PartiallyDynamic
from .train_step import StepRecipe, train_step

SCHEDULES = ("exponential", "linear")
SCOPES = ("global", "local")
Batch = TypeVar("Batch")  # whatever the scoring batches are: loss_fn takes them as they come


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer may use: the model (in eval mode), its PAD layers as (name, layer), the scoring
    batches, the loss function, the seed and a generator seeded with it (for random choices)."""

    model: nn.Module
    layers: list[tuple[str, PartiallyDynamic]]
    batches: list
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None  # takes the batches (any type) it is given
    seed: int
    generator: torch.Generator


@dataclass(frozen=True)
class Scorer:
    """A partition scorer: ``score(context)`` returns one flat score tensor per layer, one score per unit
    (``layer.num_units``) or per entry (``layer.kernel_numel``; summed into units by ``layer.unit_scores``);
    the units with the largest scores stay dynamic. ``needs_batches``: it needs scoring batches and
    ``loss_fn``."""

    name: str
    score: Callable[[ScoringContext], list[torch.Tensor]]
    needs_batches: bool = False


_SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, score: Callable[[ScoringContext], list[torch.Tensor]], needs_batches: bool = False,
                    replace: bool = False) -> Scorer:
    """Make ``scorer=name`` available to ``padnet.partition`` and to run configs (``partition.scorer``).
    ``score(context)`` returns one flat tensor of ``layer.num_units`` (or ``layer.kernel_numel``) scores
    per PAD layer, in the order of ``context.layers``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise UsageError(f"scorer name {name!r} must be a Python identifier (letters, digits, _)")
    if not callable(score):
        raise UsageError(f"scorer {name!r}: score must be callable; got {type(score).__name__}")
    if name in _SCORERS and not replace:
        raise UsageError(f"scorer {name!r} is already registered; pass replace=True to replace it")
    _SCORERS[name] = Scorer(name, score, needs_batches)
    return _SCORERS[name]


def scorer_names() -> tuple[str, ...]:
    return tuple(_SCORERS)


def get_scorer(name: str) -> Scorer:
    check_choice("scorer", name, scorer_names())
    return _SCORERS[name]


@dataclass
class PartitionReport:
    dynamic_ratio: float  # achieved overall ratio (dynamic entries / entries, all PAD layers)
    target_ratio: float
    layers: dict[str, dict]  # name -> {"entries", "dynamic", "dynamic_ratio", "units", "dynamic_units"}
    round_ratios: list[float]  # the target kappa_t of each round
    scorer: str
    scope: str
    schedule: str
    rounds: int
    seed: int
    num_batches: int
    wall_time_s: float
    round_revived: list[int] = field(default_factory=list)  # static units made dynamic again, per round
    granularity: str = "element"  # what the units are: "element", "channel" (or "mixed")
    unit_ratio: float = 0.0  # achieved ratio in units (dynamic units / units, all PAD layers)
    # The mean scoring-set loss (eval mode) before the partition and after it (taylor scorer only): how
    # much making entries static changed the function, before any further training.
    loss_before: float | None = None
    loss_after: float | None = None
    warmup_steps: int = 0  # fully dynamic training steps run before scoring

    def to_dict(self) -> dict:
        """The report as plain values (``partition.json`` of a run)."""
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        """``to_dict`` as indented JSON (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), indent=2, **kwargs)

    def table(self) -> str:
        """A text table: the settings and round targets, a row per PAD layer (entries, dynamic, ratio), the
        total, and the scoring-set loss before and after (when measured)."""
        width = max([len("layer")] + [len(n) for n in self.layers])
        lines = [
            f"Iterative Mode Partition: scorer={self.scorer} scope={self.scope} schedule={self.schedule} "
            f"rounds={self.rounds} seed={self.seed} batches={self.num_batches} granularity={self.granularity} "
            f"time={self.wall_time_s:.2f}s",
            "round targets: " + ", ".join(f"{r:.4f}" for r in self.round_ratios),
            f"{'layer':<{width}}  {'entries':>10}  {'dynamic':>10}  {'ratio':>7}",
        ]
        for name, row in self.layers.items():
            lines.append(f"{name:<{width}}  {row['entries']:>10,}  {row['dynamic']:>10,}  {row['dynamic_ratio']:>7.4f}")
        total = sum(r["entries"] for r in self.layers.values())
        dynamic = sum(r["dynamic"] for r in self.layers.values())
        lines.append(f"{'total':<{width}}  {total:>10,}  {dynamic:>10,}  {self.dynamic_ratio:>7.4f}")
        if self.loss_before is not None:
            lines.append(f"scoring-set loss: {self.loss_before:.6g} before, {self.loss_after:.6g} after the partition"
                         + (f" (after {self.warmup_steps} warm-up steps)" if self.warmup_steps else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def round_targets(dynamic_ratio: float, rounds: int, schedule: str) -> list[float]:
    """kappa_t for t = 1..T: kappa^(t/T) (exponential) or 1 - (1 - kappa) t / T (linear)."""
    if schedule == "exponential":
        targets = [dynamic_ratio ** (t / rounds) for t in range(1, rounds + 1)]
    else:
        targets = [1 - (1 - dynamic_ratio) * t / rounds for t in range(1, rounds + 1)]
    targets[-1] = dynamic_ratio  # exactly, whatever the float arithmetic did
    return targets


def keep_count(ratio: float, entries: int) -> int:
    """round(ratio * entries), halves rounded up, so the count does not depend on banker's rounding."""
    return min(entries, math.floor(ratio * entries + 0.5))


def top_entries(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A bool mask of the ``count`` highest scores; ties go to the lower index (what a stable descending
    sort would pick). A selection, not a sort: the ``count``-th highest score by ``kthvalue`` (O(n)),
    everything above it, and the lowest-indexed entries equal to it: 0.28 s against a stable sort's 1.9 s
    on resnet18's 11M entries (one thread), once per round."""
    n = scores.numel()
    if count <= 0 or count >= n or scores.isnan().any():  # NaN: the sort's order (NaN highest)
        order = torch.sort(scores, descending=True, stable=True).indices
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[order[:count]] = True
        return mask
    threshold = torch.kthvalue(scores, n - count + 1).values
    mask = scores > threshold
    ties = torch.nonzero(scores == threshold).squeeze(1)  # ascending indices
    mask[ties[: count - int(mask.sum())]] = True
    return mask


def partition(
    model: nn.Module,
    batches: Iterable[Batch] | None,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None,
    dynamic_ratio: float,
    rounds: int = 5,
    schedule: str = "exponential",
    scope: str = "global",
    scorer: str = "taylor",
    seed: int = 0,
    granularity: str | None = None,
    warmup_steps: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
) -> PartitionReport:
    """Set the mode mask of every PAD layer in ``model`` so a fraction ``dynamic_ratio`` stays dynamic.

    ``batches`` is iterated once and kept (it is a small scoring set: the reference uses 10 batches of
    the training batch size); ``loss_fn(model, batch)`` returns the scalar loss. The ``magnitude`` and
    ``random`` scorers need neither. With ``scope="global"`` the total number of dynamic entries is
    round(kappa * N) over all PAD layers; with ``"local"`` each layer gets round(kappa * N_l), N counted
    in units: entries, or output channels (rows) for channel-granular layers (docs/method.md#granularity).
    Scoring runs in eval mode (no dropout, no router noise), changes no weight, leaves no ``.grad``,
    and restores the model's mode. Under torch.distributed, taylor scores are summed over ranks before
    ranking, so every rank gets the same mask.

    Args:
        model: a model holding uncompacted PAD layers (``padnet.convert(..., pad=True)``).
        batches: the scoring set, any iterable of what ``loss_fn`` takes (None for scorers that need none).
        loss_fn: ``loss_fn(model, batch) -> scalar loss``.
        dynamic_ratio: kappa in (0, 1], the fraction of entries that stay dynamic.
        rounds: T rounds of re-scoring (1 is one-shot).
        schedule: ``"exponential"`` (kappa_t = kappa^(t/T)) or ``"linear"``.
        scope: ``"global"`` (one ranking over all layers) or ``"local"`` (kappa per layer).
        scorer: ``"taylor"`` (the method), ``"magnitude"``, ``"random"`` or a name from
            ``padnet.register_scorer``.
        seed: makes the scoring (and the random scorer) deterministic.
        granularity: None keeps each layer's own (``padnet.convert(granularity=...)``); ``"element"`` or
            ``"channel"`` sets it on every PAD layer first (and in ``model.padnet_config``, so
            ``padnet.save``/``load`` rebuild it).
        warmup_steps: first train the fully dynamic model this many steps (the trainer's own step:
            ``loss_fn`` plus the MoE balance loss, cycling through ``batches``), so the experts of a
            model upcycled from dense weights diverge and the taylor scores stop being all 0.
        optimizer: the optimizer of those steps (needed when ``warmup_steps`` > 0); its state goes on
            being the caller's.
    """
    _check_arguments(dynamic_ratio, rounds, schedule, scope, scorer)
    if granularity is not None:
        check_choice("granularity", granularity, GRANULARITIES)
    layers = _uncompacted_pad_layers(model)
    if granularity is not None:
        _set_granularity(model, layers, granularity)
    chosen = _SCORERS[scorer]
    batch_list = list(batches) if batches is not None else []
    _check_scoring_inputs(chosen.needs_batches, scorer, batch_list, loss_fn)
    _check_warmup(warmup_steps, optimizer, batch_list, loss_fn)

    start = time.perf_counter()
    if warmup_steps:
        _warm_up(model, batch_list, loss_fn, optimizer, warmup_steps)
    generator = torch.Generator().manual_seed(seed)
    targets = round_targets(dynamic_ratio, rounds, schedule)
    measure = chosen.needs_batches
    loss_before = _scoring_loss(model, batch_list, loss_fn, seed) if measure else None
    revived = _run_rounds(ScoringContext(model, layers, batch_list, loss_fn, seed, generator), chosen, targets, scope)
    loss_after = _scoring_loss(model, batch_list, loss_fn, seed) if measure else None
    return _report(layers, dynamic_ratio, targets, scorer, scope, schedule, rounds, seed,
                   len(batch_list) if chosen.needs_batches else 0, time.perf_counter() - start, revived,
                   loss_before=loss_before, loss_after=loss_after, warmup_steps=warmup_steps)


def _report(layers, dynamic_ratio, targets, scorer, scope, schedule, rounds, seed, num_batches, wall_time_s,
            revived, **measured) -> PartitionReport:
    per_layer = {
        name: {"entries": layer.kernel_numel, "dynamic": layer.num_dynamic, "dynamic_ratio": layer.dynamic_ratio,
               "units": layer.num_units, "dynamic_units": int(layer.dynamic_units().sum())}
        for name, layer in layers
    }
    total = sum(r["entries"] for r in per_layer.values())
    kinds = {layer.granularity for _, layer in layers}
    return PartitionReport(
        dynamic_ratio=sum(r["dynamic"] for r in per_layer.values()) / total, target_ratio=dynamic_ratio,
        layers=per_layer, round_ratios=targets, scorer=scorer, scope=scope, schedule=schedule, rounds=rounds,
        seed=seed, num_batches=num_batches, wall_time_s=wall_time_s, round_revived=revived, **measured,
        granularity=kinds.pop() if len(kinds) == 1 else "mixed",
        unit_ratio=sum(r["dynamic_units"] for r in per_layer.values()) / sum(r["units"] for r in per_layer.values()),
    )


def _set_granularity(model: nn.Module, layers, granularity: str) -> None:
    """Give every PAD layer ``granularity`` and record it where ``padnet.save`` reads the settings."""
    for _, layer in layers:
        layer.set_granularity(granularity)
    config = getattr(model, "padnet_config", None)
    if isinstance(config, dict):
        config["granularity"] = granularity


def _check_scoring_inputs(needs_batches: bool, scorer: str, batch_list: list, loss_fn) -> None:
    if not needs_batches:
        return
    if not batch_list:
        raise UsageError(f"batches is empty: the {scorer} scorer needs at least one scoring batch")
    if loss_fn is None:
        raise UsageError(f"loss_fn is None: the {scorer} scorer needs loss_fn(model, batch) -> scalar loss")


def _check_warmup(warmup_steps, optimizer, batch_list, loss_fn) -> None:
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise UsageError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
    if not warmup_steps:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(f"warmup_steps={warmup_steps} needs optimizer= (a torch.optim.Optimizer over the model's "
                         f"parameters); got {type(optimizer).__name__}")
    if not batch_list or loss_fn is None:
        raise UsageError(f"warmup_steps={warmup_steps} needs batches and loss_fn(model, batch) to train on")


def _warm_up(model: nn.Module, batch_list: list, loss_fn, optimizer, steps: int) -> None:
    """``steps`` fully dynamic training steps (train mode, restored afterwards), cycling through the
    batches; DY-Conv layers keep the temperature they have."""
    recipe = dataclasses.replace(StepRecipe.for_model(model, loss_fn, optimizer), has_dyconv=False)
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            train_step(model, [batch_list[step % len(batch_list)]], recipe, 1.0,
                       where=lambda: f"in partition warm-up step {step + 1} of {steps}")
    finally:
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)


def _scoring_loss(model: nn.Module, batch_list: list, loss_fn, seed: int) -> float:
    """The mean loss over the scoring batches in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return float(torch.stack([loss_fn(model, batch).detach().float() for batch in batch_list]).mean())
    finally:
        model.train(was_training)


def _uncompacted_pad_layers(model: nn.Module) -> list[tuple[str, PartiallyDynamic]]:
    """The model's PAD layers, none of them compacted (a compacted layer's mask is final)."""
    layers = pad_layers(model)
    if not layers:
        if any(isinstance(m, DeployedPartiallyDynamic) for m in model.modules()):
            raise UsageError(f"{type(model).__name__} is deployed: its masks are final and its layers hold only "
                             "their deployed entries; partition the training form (before padnet.deploy)")
        raise UsageError(f"{type(model).__name__} has no PAD layers; "
                         "convert it first with padnet.convert(..., pad=True)")
    compacted = [name for name, layer in layers if layer.compacted]
    if compacted:
        raise UsageError(f"PAD layers are compacted (their masks are final): {compacted[:5]}; "
                         "partition before compact()")
    return layers


def _run_rounds(context: ScoringContext, chosen: Scorer, targets: list[float], scope: str) -> list[int]:
    """Score and set the masks once per round's target ratio, in eval mode (the model's mode is restored
    afterwards); returns how many static entries each round made dynamic again."""
    model, layers = context.model, context.layers
    revived = []
    was_training = model.training
    model.eval()
    try:
        for target in targets:
            scores = _checked_scores(chosen.name, chosen.score(context), layers)
            count = 0
            for (_, layer), units in zip(layers, _select(scores, target, scope)):
                count += int((units & ~layer.dynamic_units().cpu()).sum())
                layer.set_mask(layer.mask_from_units(units).to(layer.mask.device))
            revived.append(count)
    finally:
        for _, layer in layers:
            layer.relaxed_mask = None
        model.train(was_training)
    return revived


def _check_arguments(dynamic_ratio, rounds, schedule, scope, scorer) -> None:
    if isinstance(dynamic_ratio, bool) or not isinstance(dynamic_ratio, (int, float)) or not 0 < dynamic_ratio <= 1:
        raise UsageError(f"dynamic_ratio={dynamic_ratio!r} must be a number in (0, 1]")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"rounds={rounds!r} must be an integer >= 1 (1 is one-shot)")
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("scope", scope, SCOPES)
    check_choice("scorer", scorer, scorer_names())


def _checked_scores(name: str, scores, layers) -> list[torch.Tensor]:
    if not isinstance(scores, (list, tuple)) or len(scores) != len(layers):
        count = f" of {len(scores)}" if isinstance(scores, (list, tuple)) else ""
        raise UsageError(f"scorer {name!r} must return one score tensor per PAD layer ({len(layers)}); "
                         f"got {type(scores).__name__}{count}")
    out = []
    for (layer_name, layer), score in zip(layers, scores):
        if not isinstance(score, torch.Tensor) or score.numel() not in (layer.kernel_numel, layer.num_units):
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            units = f" or {layer.num_units} (one per unit)" if layer.num_units != layer.kernel_numel else ""
            raise UsageError(f"scorer {name!r}: layer {layer_name!r} needs {layer.kernel_numel} scores{units}; "
                             f"got {got}")
        score = score.detach().reshape(-1).float().cpu()
        out.append(layer.unit_scores(score) if score.numel() != layer.num_units else score)
    return out


def _taylor(context: ScoringContext) -> list[torch.Tensor]:
    return _taylor_scores(context.model, context.layers, context.batches, context.loss_fn, context.seed)


def _magnitude(context: ScoringContext) -> list[torch.Tensor]:
    return [_magnitude_scores(layer) for _, layer in context.layers]


def _random(context: ScoringContext) -> list[torch.Tensor]:
    return [torch.rand(layer.num_units, generator=context.generator) for _, layer in context.layers]


def _taylor_scores(model, layers, batch_list, loss_fn, seed) -> list[torch.Tensor]:
    """|sum over the scoring set of dL/dM| per layer and unit: per entry, or summed over each row (signed,
    then the absolute value: docs/method.md#granularity) for channel granularity."""
    relaxed = []
    for _, layer in layers:
        m = layer.mask.to(layer.phi.dtype).detach().requires_grad_(True)
        layer.relaxed_mask = m
        relaxed.append(m)
    sums = [torch.zeros_like(m) for m in relaxed]
    failure = None
    # The user's RNG state is left as it was; scoring itself is deterministic in eval mode.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, batch in enumerate(batch_list):
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise UsageError(f"loss_fn must return a scalar tensor; got {type(loss).__name__} "
                                 f"on scoring batch {index}")
            if not torch.isfinite(loss):
                failure = f"the loss is {loss.item()} on scoring batch {index}; cannot score the entries"
                break
            # autograd.grad w.r.t. the masks only: no parameter .grad is created, and the graph is
            # freed before the next batch.
            grads = torch.autograd.grad(loss, relaxed, allow_unused=True)
            for acc, grad in zip(sums, grads):
                if grad is not None:
                    acc += grad.detach()
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        # Every rank must learn of a failure on any rank, or the others would wait in all_reduce forever.
        failed = torch.tensor([float(failure is not None)], device=sums[0].device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item() and failure is None:
            failure = "a non-finite loss on another rank's scoring batch; cannot score the entries"
    if failure is not None:
        raise PartitionError(failure)
    if distributed:
        flat = torch.cat([s.reshape(-1) for s in sums])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        sums = list(torch.split(flat, [s.numel() for s in sums]))
    scores = [layer.unit_scores(s.reshape(-1)).abs().cpu() for (_, layer), s in zip(layers, sums)]
    if not all(torch.isfinite(s).all() for s in scores):
        raise PartitionError("some taylor scores are not finite; check the model and the scoring batches")
    if all(float(s.max()) == 0.0 for s in scores if s.numel()):
        raise PartitionError(
            "every taylor score is exactly 0: the dynamic kernels equal the static weight (as in an MoE "
            "upcycled from a dense layer, before any training), so no entry changes the loss by becoming "
            "static. Partition after a warm-up of fully dynamic training so the experts diverge: "
            "padnet.partition(model, batches, loss_fn, kappa, "
            "warmup_steps=N, optimizer=...) trains the fully dynamic model N steps (some hundred) before "
            "scoring (in a run config: partition.warmup_steps)."
        )
    return scores


def _magnitude_scores(layer) -> torch.Tensor:
    """mean_k |W_k| - |W_s|: dynamic where the kernels are large relative to the static weight."""
    dynamic = layer.weight.detach().reshape(layer.weight.shape[0], -1).abs().mean(0)
    return (dynamic - layer.static_weight.detach().reshape(-1).abs()).cpu()


def _select(scores: list[torch.Tensor], ratio: float, scope: str) -> list[torch.Tensor]:
    if scope == "local":
        return [top_entries(s, keep_count(ratio, s.numel())) for s in scores]
    flat = torch.cat(scores)
    mask = top_entries(flat, keep_count(ratio, flat.numel()))
    return list(torch.split(mask, [s.numel() for s in scores]))


# The built-in scorers (docs/method.md#partition): the method and the paper's two baselines.
register_scorer("taylor", _taylor, needs_batches=True)
register_scorer("magnitude", _magnitude)
register_scorer("random", _random)
