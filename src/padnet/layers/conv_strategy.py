"""Which exact formulation a dynamic convolution runs: the strategies, the rule, the autotuner, the cache.

Every strategy computes the same function, y[b] = conv(x[b], sum_j w[b, j] S_j) + bias[b]
(docs/method.md#computing-forms: any exact formulation, chosen by cost); they differ only in float rounding and in time:

- per-sample kernels, W(x)[b] = sum_j w[b, j] S_j built first (B x N values), then applied with
  ``grouped`` (one conv, groups = B), ``unfold`` (im2col + bmm), ``bmm`` (1x1 convs) or ``loop``;
- ``mixture``: ONE conv of x with the J stacked kernels S_j (J C_out output channels), then the
  w-weighted sum of the J outputs (linearity in the kernel); no per-sample kernel exists;
- ``mixture_unfold``: the same with im2col and one matrix product over all B x L positions, for tiny
  feature maps where the conv machinery costs more than the product.

Per-sample kernels do 1x the static conv's multiply-adds plus B x J x N to build the kernels (memory
bound); the mixtures do J x the conv's multiply-adds in large efficient products. So the mixtures win
where the feature map is small (few output positions L per kernel entry) and the per-sample forms win
on large maps. Where the cross-over lies depends on the machine, so by default the first call of each
(layer kind, shape, batch, dtype, device, grad) times the candidate strategies and caches the fastest,
as ``torch.backends.cudnn.benchmark`` does (``"autotune"``). ``"heuristic"`` is the deterministic rule
below, measured on this project's CPU (``benchmarks/layers.py --strategies`` prints the table behind it);
any strategy name pins that strategy. A pick never changes results beyond float rounding, and the picks
can be saved and restored (``conv_strategy_picks`` / ``load_conv_strategy_picks``) so that a resumed run
computes exactly as the uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping

import torch

from ..errors import UsageError
from .assemble import tracing

PER_SAMPLE_STRATEGIES = ("grouped", "unfold", "bmm", "loop")
MIXTURE_STRATEGIES = ("mixture", "mixture_unfold")
# Channel-granular PAD layers only (docs/method.md#granularity): whole per-sample kernels assembled from the static
# and the mixed dynamic rows, one conv over all channels, instead of the static / dynamic split. At
# batch 1 that is one conv with one kernel (the split's two smaller convs with odd channel counts
# measured 1.14x-1.43x the static conv on resnet50's 3x3 layers); on large maps with few channels it can
# also win (3x3 64 -> 64 at 56x56, batch 8: the split 1.7x static).
WHOLE = "whole"
CONV_STRATEGIES = MIXTURE_STRATEGIES + PER_SAMPLE_STRATEGIES + (WHOLE,)
STRATEGY_MODES = ("autotune", "heuristic") + CONV_STRATEGIES

# The autotuner times each candidate this many times after one warm-up call and keeps the fastest; a
# candidate whose warm-up takes more than SKIP_FACTOR x the best so far is dropped without repeats (the
# slow per-sample forms on tiny maps take up to 50x the mixture, and a second call would only waste time).
AUTOTUNE_REPEATS = 2
SKIP_FACTOR = 3.0

_state = {"mode": "autotune"}
_picks: dict[str, str] = {}


def _check_mode(mode: str, name: str = "conv_strategy") -> str:
    if mode not in STRATEGY_MODES:
        raise UsageError(f"{name}={mode!r} is not supported; allowed: {', '.join(map(repr, STRATEGY_MODES))}")
    return mode


def set_conv_strategy(mode: str) -> None:
    """Set how every dynamic conv without its own ``strategy`` computes: "autotune" (default), "heuristic"
    (deterministic rule) or one strategy name of ``CONV_STRATEGIES`` (pinned)."""
    _state["mode"] = _check_mode(mode)


def get_conv_strategy() -> str:
    return _state["mode"]


@contextlib.contextmanager
def conv_strategy(mode: str) -> Iterator[None]:
    """``with conv_strategy("heuristic"): ...`` sets the global mode for the block only."""
    previous = get_conv_strategy()
    set_conv_strategy(mode)
    try:
        yield
    finally:
        set_conv_strategy(previous)


def conv_strategy_picks() -> dict[str, str]:
    """The autotuner's picks so far (key -> strategy), JSON-serialisable; store them with a checkpoint."""
    return dict(_picks)


def load_conv_strategy_picks(picks: Mapping[str, str]) -> None:
    """Adopt stored picks (e.g. a checkpoint's), so the same shapes compute with the same strategies."""
    if not isinstance(picks, Mapping):
        raise UsageError(f"conv strategy picks must be a mapping of key -> strategy; got {type(picks).__name__}")
    for key, strategy in picks.items():
        if not isinstance(key, str) or strategy not in CONV_STRATEGIES:
            raise UsageError(f"conv strategy pick {key!r}: {strategy!r}; allowed strategies: "
                             f"{', '.join(map(repr, CONV_STRATEGIES))}")
    _picks.update(picks)


def clear_conv_strategy_picks() -> None:
    _picks.clear()


def output_positions(x_shape, kernel_size, stride, padding, dilation) -> int:
    """L = H' W', the output positions of one sample."""
    out = [
        (x_shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    ]
    return out[0] * out[1]


def is_plain_1x1(kernel_size, padding, dilation, groups) -> bool:
    return groups == 1 and tuple(kernel_size) == (1, 1) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)


def applicable_strategies(kernel_size, padding, dilation, groups) -> tuple[str, ...]:
    """The strategies that can compute a layer of this geometry (unfold-based ones need groups = 1,
    ``bmm`` a plain 1x1 conv). Not cached: a few comparisons, and called inside ``torch.compile``'s
    traced forward, where dynamo warns about (and skips) an ``lru_cache``."""
    out = ["mixture", "grouped", "loop"]
    if groups == 1:
        out += ["mixture_unfold", "unfold"]
    if is_plain_1x1(kernel_size, padding, dilation, groups):
        out.append("bmm")
    return tuple(s for s in CONV_STRATEGIES if s in out)


# Thresholds of the rule, in output positions L per sample (CPU, one thread, torch 2.14; see the module
# docstring). Training, resnet18 shapes at batch 32 (fwd + bwd, ms): at 2x2 outputs, 3x3 512->512,
# mixture_unfold 91 / mixture 226 / unfold 688 / grouped 1057; at 4x4, 256->256, mixture 63 / unfold 136 /
# grouped 256; at 8x8, 128->128, unfold 45 / grouped 59 / mixture 63; at 16x16, 64->64, grouped 31 /
# unfold 41 / mixture 69.
MIXTURE_UNFOLD_MAX_POSITIONS = 4
MIXTURE_MAX_POSITIONS = 16
UNFOLD_MAX_POSITIONS = 64


def heuristic_strategy(x_shape, kernel_size, stride, padding, dilation, groups) -> str:
    """The deterministic rule: by output positions per sample, mixtures on small maps, per-sample
    kernels on large ones (thresholds above; the CPU measurements put the cross-overs at the same sizes
    forward-only and fwd+bwd)."""
    positions = output_positions(x_shape, kernel_size, stride, padding, dilation)
    if groups == 1 and positions <= MIXTURE_UNFOLD_MAX_POSITIONS:
        return "mixture_unfold"
    if is_plain_1x1(kernel_size, padding, dilation, groups):
        return "bmm"  # 1x1 128->256 at 4x4 outputs: bmm 5.2 ms, mixture 7.7 ms (fwd + bwd)
    if positions <= MIXTURE_MAX_POSITIONS:
        return "mixture"
    if groups == 1 and positions <= UNFOLD_MAX_POSITIONS:
        return "unfold"
    return "grouped"


def resolve_strategy(
    mode: str | None,
    candidates: tuple[str, ...],
    heuristic: Callable[[], str],
    key: Callable[[], str],
    run: Callable[[str], tuple[torch.Tensor, list[torch.Tensor]]],
) -> str:
    """The strategy for one call, always one of ``candidates`` (those the layer's path for this call can
    compute). ``mode`` is the layer's own (None: the global mode); ``heuristic()`` gives the rule's pick
    (one of ``candidates``) and ``key()`` the cache key, each computed only when the mode needs it (a
    forward with a cached or pinned strategy does no more than a dict lookup); ``run(s)`` computes the
    layer's output with strategy ``s`` on detached copies of the inputs and returns it with the tensors
    to differentiate (empty when no gradient is needed); the autotuner times it."""
    mode = get_conv_strategy() if mode is None else _check_mode(mode, "strategy")
    if mode in CONV_STRATEGIES and mode not in candidates:
        raise UsageError(f"conv strategy {mode!r} cannot compute this layer ({key()}); "
                         f"allowed here: {', '.join(map(repr, candidates))}")
    if torch.jit.is_tracing():
        return _traceable_strategy(mode, heuristic, key)
    if mode in CONV_STRATEGIES:
        return mode
    if mode == "heuristic" or tracing():
        return heuristic()
    cache_key = key()
    pick = _picks.get(cache_key)
    if pick not in candidates:  # not tuned yet, or a loaded pick this call's path cannot compute
        pick = _picks[cache_key] = _autotune(candidates, heuristic(), run)
    return pick


# Strategies whose graph holds the batch size as a constant (one grouped conv of batch x groups groups;
# one conv per sample): a torch.jit.trace of them computes wrongly at any other batch size.
BATCH_BAKED_STRATEGIES = ("grouped", "loop")


def _traceable_strategy(mode: str, heuristic: Callable[[], str], key: Callable[[], str]) -> str:
    """The strategy under ``torch.jit.trace``: one whose traced graph serves every batch size (the rule's
    pick, a mixture in place of a batch-baked one); a layer pinned to a batch-baked one is refused."""
    if mode in BATCH_BAKED_STRATEGIES:
        raise UsageError(
            f"conv strategy {mode!r} puts the batch size into the graph, so torch.jit.trace of this layer ({key()}) "
            "would compute wrongly at any other batch size: use torch.export.export(model, (x,)) (with "
            "dynamic_shapes for a variable batch), or trace with set_conv_strategy('heuristic'), 'mixture' or 'unfold'"
        )
    pick = mode if mode in CONV_STRATEGIES else heuristic()
    return "mixture" if pick in BATCH_BAKED_STRATEGIES else pick


def _autotune(candidates, heuristic, run) -> str:
    # The rule's pick first, so a good time is known early and slow candidates are dropped after one call.
    order = [heuristic] + [s for s in candidates if s != heuristic and s != "loop"]
    best, best_time = heuristic, math.inf
    with torch.random.fork_rng(devices=[]):  # the timing must not move the caller's random stream
        for strategy in order:
            elapsed = _time_once(run, strategy)
            if elapsed <= SKIP_FACTOR * best_time:
                elapsed = min([elapsed] + [_time_once(run, strategy) for _ in range(AUTOTUNE_REPEATS)])
            if elapsed < best_time:
                best, best_time = strategy, elapsed
    return best


def _time_once(run, strategy: str) -> float:
    start = time.perf_counter()
    out, inputs = run(strategy)
    if inputs:
        torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
    if out.device.type == "cuda":
        torch.cuda.synchronize(out.device)
    return time.perf_counter() - start
