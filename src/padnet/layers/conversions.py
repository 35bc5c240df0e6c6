"""What ``padnet.convert`` can make dynamic: one registered ``Conversion`` per kind of layer.

A conversion names the modules of a model it may replace (``find``) and builds their replacement from
the module and the conversion settings (a ``padnet.ConvertConfig``): fully dynamic (``dynamic``) or
partially dynamic (``pad``). ``padnet.convert(model, dynamic=kind)``, the run config's ``dynamic.kind``
and ``padnet.load`` (which re-runs convert) accept every registered kind, so a new one (a GPT-2
``Conv1D`` FFN, SwiGLU projections, a channel-granular PAD conv) is one ``register_conversion`` call.

padnet's own kinds, where PAD goes (docs/method.md#placement):

- ``"conv"``: every ``nn.Conv2d`` except the first one the model registers, squeeze-excitation convs
  and a classifier conv (``find_convs``; ``include`` brings them back). For torchvision ResNets
  that is every conv of the residual blocks, 1x1 projection shortcuts included, with the stem static;
  for MobileNetV2 every conv of every inverted-residual block and the last 1x1 conv, with the first
  conv static. Classifiers (``nn.Linear``) are never touched. DY-Conv / CondConv and PAD DY-Conv.
- ``"moe"``: the FFN output projection (intermediate -> hidden) of every transformer layer, found by
  structure: a linear hidden -> intermediate (intermediate > hidden) and a linear intermediate ->
  hidden under the same parent module, each an ``nn.Linear`` or GPT-2's ``Conv1D`` (weight stored
  (in, out)). ``target`` picks other projections: ``"gate"`` / ``"up"`` (a SwiGLU's ``gate_proj`` /
  ``up_proj``; ``"up"`` is a plain FFN's input projection), ``"down"`` (= ``"output"``), or a list.
  The MoE and PAD MoE are upcycled from the pretrained weight, so the converted model computes
  exactly what it did.

- ``"experts"``: the fused experts of a pretrained MoE block (transformers' Mixtral, Qwen2-MoE,
  Qwen3-MoE, OLMoE: one module holding ``gate_up_proj`` and ``down_proj``), PAD only
  (``PADExperts``: W_s = the experts' mean, mask all ones, the block's own router kept), so the
  converted model computes exactly what it did and the partition needs no warm-up.

``include``/``exclude`` patterns (``padnet.convert``) choose among a kind's eligible modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, get_args

import torch
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from torch import nn

from ..errors import UsageError
from .dynamic_conv import DynamicConv2d
from .moe import MoELinear
from .pad_conv import PADConv2d
from .pad_experts import PADExperts, is_fused_experts
from .pad_moe import PADMoELinear

if TYPE_CHECKING:  # settings.py checks a ConvertConfig against this registry, so it imports this module
    from .settings import ConvertConfig


Init = Literal["fresh", "upcycle"]
INITS = get_args(Init)  # ConvertConfig.init: how the "conv" kind starts its kernels
# ConvertConfig.target: which FFN projections the "moe" kind replaces ("down" is "output"; "gate" and "up"
# are a SwiGLU's input projections, "up" a plain FFN's one input projection)
MOE_TARGETS = ("output", "down", "gate", "up")


class Targets(NamedTuple):
    """What a conversion's ``find`` returns: module names, in registration order."""

    eligible: list[str]  # every module this kind can replace (what ``include`` patterns select from)
    default: list[str]  # the ones it replaces when no ``include`` is given
    skipped: dict[str, str] | None = None  # eligible ones the default leaves out on purpose: name -> why


# (the module ``find`` found, of the kind's type: nn.Conv2d for "conv", ...; the settings) -> its replacement
Build = Callable[[Any, "ConvertConfig"], nn.Module]
# find(model) -> Targets, or find(model, settings) when the conversion ``uses_config``
Find = Callable[..., Targets]


@dataclass(frozen=True)
class Conversion:
    """One kind of conversion: what it replaces and what it puts in its place.

    ``looks_for`` names what ``find`` looks for in the error raised when it finds nothing (``hint``, if
    given, says how it looks). ``check(config, prefix)`` lists the kind's own rules on the settings that
    a config breaks, each message naming its key after ``prefix``.
    """

    kind: str
    find: Find
    dynamic: Build
    pad: Build
    looks_for: str
    hint: str = ""
    check: Callable[["ConvertConfig", str], list[str]] | None = None
    uses_config: bool = False  # find takes (model, config): which modules depend on the settings

    def targets(self, model: nn.Module, config: ConvertConfig) -> Targets:
        """What ``find`` finds in ``model`` under these settings."""
        return self.find(model, config) if self.uses_config else self.find(model)

    def build(self, module: nn.Module, config: ConvertConfig) -> nn.Module:
        """The replacement of ``module``: the PAD form when ``config.pad``, else the fully dynamic one."""
        return (self.pad if config.pad else self.dynamic)(module, config)

    def problems(self, config: ConvertConfig, prefix: str = "") -> list[str]:
        """The kind's own rules that ``config`` breaks (``check``), each naming its key after ``prefix``."""
        return self.check(config, prefix) if self.check is not None else []


_CONVERSIONS: dict[str, Conversion] = {}


def register_conversion(kind: str, find: Find, dynamic: Build, pad: Build,
                        looks_for: str, hint: str = "",
                        check: Callable[["ConvertConfig", str], list[str]] | None = None,
                        uses_config: bool = False) -> Conversion:
    """Register (or replace) a kind of conversion; returns it.

    Args:
        kind: the name ``padnet.convert(dynamic=...)`` and a run config's ``dynamic.kind`` use.
        find: ``find(model) -> Targets``: the modules this kind may replace, and those it replaces by
            default.
        dynamic: ``dynamic(module, config) -> nn.Module``: the fully dynamic replacement of a module
            (``config`` is the ``padnet.ConvertConfig``; e.g. ``DynamicConv2d.from_conv``).
        pad: ``pad(module, config) -> nn.Module``: the partially dynamic replacement (a
            ``PartiallyDynamic`` layer; e.g. ``PADConv2d.from_conv``).
        looks_for: what ``find`` looks for, named in the error when a model has none (``"nn.Conv2d to
            convert"``).
        hint: how ``find`` looks, added to that error.
        check: ``check(config, prefix) -> list[str]``: problems of the settings for this kind.
        uses_config: ``find`` is called as ``find(model, config)`` (the ``"moe"`` kind reads
            ``config.target``).
    """
    if not isinstance(kind, str) or not kind:
        raise UsageError(f"conversion kind {kind!r} must be a non-empty string")
    conversion = Conversion(kind, find, dynamic, pad, looks_for, hint, check, uses_config)
    _CONVERSIONS[kind] = conversion
    return conversion


def get_conversion(kind: str) -> Conversion:
    """The registered conversion ``kind`` (``register_conversion``); ``UsageError`` naming the kinds there are."""
    if kind not in _CONVERSIONS:
        raise UsageError(f"dynamic={kind!r} is not supported; allowed: {', '.join(map(repr, conversion_kinds()))}")
    return _CONVERSIONS[kind]


def conversion_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_CONVERSIONS)


# ------------------------------------------------------------------------------------------ "conv"
def find_convs(model: nn.Module) -> Targets:
    """Every plain ``nn.Conv2d``; by default all but the first (the stem stays static), the
    squeeze-excitation convs and a classifier conv (``skipped``, with the reason)."""
    convs = [name for name, m in model.named_modules() if type(m) is nn.Conv2d]
    skipped = {name: "squeeze-excitation" for name in squeeze_excitation_convs(model)}
    skipped |= {name: "classifier" for name in classifier_convs(model)}
    skipped = {name: why for name, why in skipped.items() if name in convs[1:]}
    return Targets(convs, [n for n in convs[1:] if n not in skipped], skipped)


_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def _is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, _GLOBAL_POOLS) and module.output_size in (1, (1, 1))


def squeeze_excitation_convs(model: nn.Module) -> list[str]:
    """The convs of squeeze-excitation blocks, found by structure: the convs a module registers after a
    global pooling (torchvision's ``SqueezeExcitation``: avgpool, fc1, fc2), or a module's only two convs
    when they are a 1x1 reduce / expand pair with biases and no norm beside them (timm-like SE blocks,
    which pool with ``mean`` in their forward). Their input is a 1x1 map and their output scales the
    block's input channels: a dynamic kernel there would be attention computed from attention."""
    found = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        convs = [(n, m) for n, m in children if type(m) is nn.Conv2d]
        pooled = [i for i, (_, m) in enumerate(children) if _is_global_pool(m)]
        if pooled:
            found += [prefix + n for n, m in children[pooled[0] + 1:]
                      if type(m) is nn.Conv2d and m.kernel_size == (1, 1)]
        elif len(convs) == 2 and not any(isinstance(m, _NORMS) for _, m in children):
            (_, reduce), (_, expand) = convs
            pair = (reduce.in_channels == expand.out_channels > reduce.out_channels == expand.in_channels)
            plain = all(m.kernel_size == (1, 1) and m.groups == 1 and m.bias is not None for m in (reduce, expand))
            if pair and plain:
                found += [prefix + n for n, _ in convs]
    return found


def classifier_convs(model: nn.Module) -> list[str]:
    """The model's last conv when it computes the logits: a global pooling follows it and no ``Linear``
    or other conv does (squeezenet's final conv)."""
    modules = list(model.named_modules())
    last = max((i for i, (_, m) in enumerate(modules) if type(m) is nn.Conv2d), default=None)
    if last is None:
        return []
    after = [m for _, m in modules[last + 1:]]
    if any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in after) or not any(_is_global_pool(m) for m in after):
        return []
    return [modules[last][0]]


def _conv_settings(config: ConvertConfig) -> dict:
    return dict(num_kernels=config.num_kernels, reduction=config.reduction, routing=config.routing,
                upcycle=config.init == "upcycle")


def _upcycle_needs_softmax(config: ConvertConfig, prefix: str) -> list[str]:
    if config.init == "upcycle" and config.routing != "softmax":
        return [f"{prefix}init='upcycle' keeps the model's function only with {prefix}routing='softmax' (the "
                f"attention weights sum to 1); got {prefix}routing={config.routing!r}"]
    return []


# ------------------------------------------------------------------------------------------- "moe"
class LinearView(NamedTuple):
    """What ``MoELinear.from_linear`` reads from a projection: y = x W^T + b with W (out, in)."""

    in_features: int
    out_features: int
    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor | None


def as_linear(module: nn.Module) -> LinearView | None:
    """``module`` as a linear projection: an ``nn.Linear``, or GPT-2's ``Conv1D`` (transformers), which
    computes x W + b with W stored transposed, (in, out), and ``nf`` = out (found by structure, so
    transformers need not be imported); None for anything else."""
    if isinstance(module, nn.Linear):
        return LinearView(module.in_features, module.out_features, module.weight, module.bias)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2 \
            and getattr(module, "nf", None) == weight.shape[1]:
        return LinearView(weight.shape[0], weight.shape[1], weight.t(), getattr(module, "bias", None))
    return None


@dataclass(frozen=True)
class FFN:
    """One transformer FFN found by structure: its output projection (intermediate -> hidden) and its
    input projections (hidden -> intermediate: one, or a SwiGLU's gate and up)."""

    output: str
    inputs: tuple[str, ...]

    def projections(self, target: str) -> list[str]:
        """The module names ``target`` picks: ``"output"``/``"down"`` the output projection; ``"gate"``
        the input projection whose name says gate; ``"up"`` the other input one (in a plain FFN, its
        only input projection). A gated FFN whose names do not tell gate from up has neither."""
        if target in ("output", "down"):
            return [self.output]
        gates = [n for n in self.inputs if "gate" in n.rpartition(".")[2]]
        if len(self.inputs) > 1 and len(gates) != 1:
            return []
        return gates if target == "gate" else [n for n in self.inputs if n not in gates]


def find_ffns(model: nn.Module) -> list[FFN]:
    """Every FFN: a linear projection intermediate -> hidden (``as_linear``: ``nn.Linear`` or GPT-2's
    ``Conv1D``) whose parent module also holds (at most two levels down) linear projections hidden ->
    intermediate with intermediate > hidden."""
    found: dict[str, FFN] = {}
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        linears = {name: view for name, m in parent.named_modules()
                   if name and name.count(".") <= 1 and (view := as_linear(m)) is not None}
        for down_name, down in linears.items():
            if prefix + down_name in found or down.in_features <= down.out_features:
                continue
            inputs = tuple(prefix + name for name, up in linears.items() if name != down_name
                           and up.in_features == down.out_features and up.out_features == down.in_features)
            if inputs:
                found[prefix + down_name] = FFN(prefix + down_name, inputs)
    return list(found.values())


def find_ffn_outputs(model: nn.Module) -> list[str]:
    """Names of FFN output projections (``find_ffns``)."""
    return [ffn.output for ffn in find_ffns(model)]


def targets_of(target: str | Sequence[str]) -> list[str]:
    """``ConvertOptions.target`` (one name or a list) as a list."""
    return [target] if isinstance(target, str) else list(target)


def _find_ffn_targets(model: nn.Module, config: ConvertConfig) -> Targets:
    """The projections ``config.target`` names, in model order (every one is eligible for ``include``)."""
    ffns = find_ffns(model)
    wanted = targets_of(config.target)
    default = [name for ffn in ffns for target in MOE_TARGETS if target in wanted
               for name in ffn.projections(target)]
    eligible = [name for ffn in ffns for target in ("gate", "up", "output") for name in ffn.projections(target)]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    by_order = lambda names: sorted(dict.fromkeys(names), key=order.__getitem__)  # noqa: E731
    return Targets(by_order(eligible), by_order(default))


def _moe_targets(value: Any) -> Any:
    listed = isinstance(value, list) and value and all(isinstance(target, str) for target in value)
    if (isinstance(value, str) or listed) and all(target in MOE_TARGETS for target in targets_of(value)):
        return value
    raise PydanticCustomError("choice", "is not supported; allowed: one of {names} or a non-empty list of them",
                              {"names": ", ".join(map(repr, MOE_TARGETS))})


# ``ConvertOptions.target``: one of ``MOE_TARGETS`` or a non-empty list of them (checked whole, before the
# union's members are tried, so that a bad value is one line)
MoeTarget = Annotated[str | list[str], BeforeValidator(_moe_targets)]


def _found_linear(module: nn.Module) -> LinearView:
    """``as_linear`` of a projection ``_find_ffn_targets`` found (linear by construction)."""
    view = as_linear(module)
    if view is None:
        raise TypeError(f"{type(module).__name__} is not a linear projection (nn.Linear or Conv1D)")
    return view


def _moe_settings(config: ConvertConfig) -> dict:
    return dict(num_experts=config.num_experts, top_k=config.top_k, noisy_gating=config.noisy_gating,
                aux_loss_coef=config.aux_loss_coef)


register_conversion(
    "conv", find_convs,
    dynamic=lambda conv, config: DynamicConv2d.from_conv(conv, **_conv_settings(config)),
    pad=lambda conv, config: PADConv2d.from_conv(conv, **_conv_settings(config), lambda_mode=config.lambda_mode,
                                                 granularity=config.granularity),
    looks_for="nn.Conv2d to convert", check=_upcycle_needs_softmax,
)
register_conversion(
    "moe", _find_ffn_targets,
    dynamic=lambda linear, config: MoELinear.from_linear(_found_linear(linear), **_moe_settings(config)),
    pad=lambda linear, config: PADMoELinear.from_linear(_found_linear(linear), **_moe_settings(config),
                                                         lambda_mode=config.lambda_mode,
                                                         granularity=config.granularity),
    looks_for="FFN output projection",
    hint="it looks for a Linear hidden->intermediate and a Linear intermediate->hidden (intermediate > hidden) "
         "under one module (nn.Linear or GPT-2's Conv1D)", uses_config=True,
)


# --------------------------------------------------------------------------------------- "experts"
def _find_fused_experts(model: nn.Module) -> Targets:
    found = [name for name, m in model.named_modules() if name and is_fused_experts(m)]
    return Targets(found, found)


def _experts_need_pad(config: ConvertConfig, prefix: str) -> list[str]:
    """The "experts" kind keeps the pretrained MoE's own experts, router and granularity of entries, so
    settings that would change them are refused rather than ignored."""
    out = []
    if not config.pad:
        out.append(f"{prefix}pad=False: dynamic='experts' makes a pretrained MoE's experts partially dynamic; "
                   "they are fully dynamic already (use pad=True)")
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for key in ("num_experts", "top_k", "granularity"):
        default = defaults[key]
        if getattr(config, key) != default:
            out.append(f"{prefix}{key}={getattr(config, key)!r}: dynamic='experts' keeps the model's own experts "
                       f"and router; leave {key} at its default ({default!r})")
    return out


def _no_fully_dynamic_form(experts: nn.Module, config: ConvertConfig) -> nn.Module:
    raise UsageError("dynamic='experts' has no fully dynamic form: the model's experts are one already")


register_conversion(
    "experts", _find_fused_experts, dynamic=_no_fully_dynamic_form,
    pad=lambda experts, config: PADExperts.from_experts(experts, lambda_mode=config.lambda_mode),
    looks_for="fused MoE experts module", check=_experts_need_pad,
    hint="it looks for a module holding only gate_up_proj (E, 2I, H) and down_proj (E, H, I) parameters and an "
         "act_fn (transformers' Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE experts)",
)
