"""What ``padnet.convert`` can make dynamic: one registered ``Conversion`` per kind of layer.

A conversion names the modules of a model it may replace (``find``) and builds their replacement from
the module and the conversion settings (a ``padnet.ConvertConfig``): fully dynamic (``dynamic``) or
partially dynamic (``pad``). ``padnet.convert(model, dynamic=kind)``, the run config's ``dynamic.kind``
and ``padnet.load`` (which re-runs convert) accept every registered kind, so a new one (a GPT-2
``Conv1D`` FFN, SwiGLU projections, a channel-granular PAD conv) is one ``register_conversion`` call.

padnet's own kinds, where PAD goes (SPEC section 5):

- ``"conv"``: every ``nn.Conv2d`` except the first one the model registers, squeeze-excitation convs
  and a classifier conv (``find_convs``; ``include`` brings them back). For torchvision ResNets
  that is every conv of the residual blocks, 1x1 projection shortcuts included, with the stem static;
  for MobileNetV2 every conv of every inverted-residual block and the last 1x1 conv, with the first
  conv static. Classifiers (``nn.Linear``) are never touched. DY-Conv / CondConv and PAD DY-Conv.
- ``"moe"``: the FFN output projection (intermediate -> hidden) of every transformer layer, found by
  structure: a ``Linear`` hidden -> intermediate (intermediate > hidden) and a ``Linear``
  intermediate -> hidden under the same parent module. The MoE and PAD MoE are upcycled from the
  pretrained weight, so the converted model computes exactly what it did.

``include``/``exclude`` patterns (``padnet.convert``) choose among a kind's eligible modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from torch import nn

from .dynamic_conv import DynamicConv2d
from .moe import MoELinear
from .pad_conv import PADConv2d
from .pad_moe import PADMoELinear

if TYPE_CHECKING:
    from ..convert import ConvertConfig

INITS = ("fresh", "upcycle")  # ConvertConfig.init: how the "conv" kind starts its kernels
MOE_TARGETS = ("output",)  # ConvertConfig.target: which FFN projection the "moe" kind replaces


class Targets(NamedTuple):
    """What a conversion's ``find`` returns: module names, in registration order."""

    eligible: list[str]  # every module this kind can replace (what ``include`` patterns select from)
    default: list[str]  # the ones it replaces when no ``include`` is given
    skipped: dict[str, str] | None = None  # eligible ones the default leaves out on purpose: name -> why


Build = Callable[[nn.Module, "ConvertConfig"], nn.Module]


@dataclass(frozen=True)
class Conversion:
    """One kind of conversion: what it replaces and what it puts in its place.

    ``looks_for`` names what ``find`` looks for in the error raised when it finds nothing (``hint``, if
    given, says how it looks). ``check(config, prefix)`` lists the kind's own rules on the settings that
    a config breaks, each message naming its key after ``prefix``.
    """

    kind: str
    find: Callable[[nn.Module], Targets]
    dynamic: Build
    pad: Build
    looks_for: str
    hint: str = ""
    check: Callable[["ConvertConfig", str], list[str]] | None = None

    def build(self, module: nn.Module, config: "ConvertConfig") -> nn.Module:
        """The replacement of ``module``: the PAD form when ``config.pad``, else the fully dynamic one."""
        return (self.pad if config.pad else self.dynamic)(module, config)

    def problems(self, config: "ConvertConfig", prefix: str = "") -> list[str]:
        return self.check(config, prefix) if self.check is not None else []


_CONVERSIONS: dict[str, Conversion] = {}


def register_conversion(kind: str, find: Callable[[nn.Module], Targets], dynamic: Build, pad: Build,
                        looks_for: str, hint: str = "",
                        check: Callable[["ConvertConfig", str], list[str]] | None = None) -> Conversion:
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
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"conversion kind {kind!r} must be a non-empty string")
    conversion = Conversion(kind, find, dynamic, pad, looks_for, hint, check)
    _CONVERSIONS[kind] = conversion
    return conversion


def get_conversion(kind: str) -> Conversion:
    if kind not in _CONVERSIONS:
        raise ValueError(f"dynamic={kind!r} is not supported; allowed: {', '.join(map(repr, conversion_kinds()))}")
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
            found += [prefix + n for n, m in children[pooled[0] + 1:] if type(m) is nn.Conv2d and m.kernel_size == (1, 1)]
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


def _conv_settings(config: "ConvertConfig") -> dict:
    return dict(num_kernels=config.num_kernels, reduction=config.reduction, routing=config.routing,
                upcycle=config.init == "upcycle")


def _upcycle_needs_softmax(config: "ConvertConfig", prefix: str) -> list[str]:
    if config.init == "upcycle" and config.routing != "softmax":
        return [f"{prefix}init='upcycle' keeps the model's function only with {prefix}routing='softmax' (the "
                f"attention weights sum to 1); got {prefix}routing={config.routing!r}"]
    return []


# ------------------------------------------------------------------------------------------- "moe"
def find_ffn_outputs(model: nn.Module) -> list[str]:
    """Names of FFN output projections: ``Linear`` intermediate -> hidden whose parent module also
    holds (at most two levels down) a ``Linear`` hidden -> intermediate with intermediate > hidden."""
    found: list[str] = []
    for parent_name, parent in model.named_modules():
        linears = {
            name: m
            for name, m in parent.named_modules()
            if isinstance(m, nn.Linear) and name and name.count(".") <= 1
        }
        for down_name, down in linears.items():
            full = f"{parent_name}.{down_name}" if parent_name else down_name
            if full in found or down.in_features <= down.out_features:
                continue
            if any(
                up.in_features == down.out_features and up.out_features == down.in_features
                for name, up in linears.items()
                if name != down_name
            ):
                found.append(full)
    return found


def _find_ffn_output_targets(model: nn.Module) -> Targets:
    found = find_ffn_outputs(model)
    return Targets(found, found)


def _moe_settings(config: "ConvertConfig") -> dict:
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
    "moe", _find_ffn_output_targets,
    dynamic=lambda linear, config: MoELinear.from_linear(linear, **_moe_settings(config)),
    pad=lambda linear, config: PADMoELinear.from_linear(linear, **_moe_settings(config),
                                                         lambda_mode=config.lambda_mode,
                                                         granularity=config.granularity),
    looks_for="FFN output projection",
    hint="it looks for a Linear hidden->intermediate and a Linear intermediate->hidden (intermediate > hidden) "
         "under one module",
)
