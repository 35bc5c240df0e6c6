"""Turn an existing model dynamic or partially dynamic in one call (PEFT's ``get_peft_model`` style).

``convert`` replaces modules in place and returns the model, with the settings it used recorded as
``model.padnet_config`` (a plain dict) so ``padnet.save``/``padnet.load`` can rebuild it.

Where PAD goes (SPEC section 5):
- ``dynamic="conv"``: every ``nn.Conv2d`` except the first one the model registers. For torchvision
  ResNets that is every conv of the residual blocks, 1x1 projection shortcuts included, with the stem
  static; for MobileNetV2 every conv of every inverted-residual block and the last 1x1 conv, with the
  first conv static. Classifiers (``nn.Linear``) are never touched. ``include``/``exclude`` (fnmatch
  patterns on module names) override the rule for any other model.
- ``dynamic="moe"``: the FFN output projection (intermediate -> hidden) of every transformer layer,
  found by structure: a ``Linear`` hidden -> intermediate (intermediate > hidden) and a ``Linear``
  intermediate -> hidden under the same parent module. Experts are upcycled from the pretrained
  weight, so the converted model computes exactly what it did.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .layers import (
    DYNAMIC_LAYERS,
    LAMBDA_MODES,
    DynamicConv2d,
    MoELinear,
    PADConv2d,
    PADMoELinear,
    PartiallyDynamic,
)
from .layers._validate import check_choice, check_positive_int
from .layers.attention import ROUTINGS

DYNAMIC_KINDS = ("conv", "moe")
INITS = ("fresh", "upcycle")
MOE_TARGETS = ("output",)


@dataclass
class ConvertConfig:
    """Every setting of a conversion; stored on the model as ``model.padnet_config``."""

    dynamic: str = "conv"
    pad: bool = True
    num_kernels: int = 4
    routing: str = "softmax"
    reduction: int = 16
    init: str = "fresh"
    lambda_mode: str = "both"
    num_experts: int = 8
    top_k: int = 2
    noisy_gating: bool = True
    aux_loss_coef: float = 0.01
    target: str = "output"
    include: list[str] | None = None
    exclude: list[str] | None = None
    converted: list[str] = field(default_factory=list)

    def validate(self) -> None:
        check_choice("dynamic", self.dynamic, DYNAMIC_KINDS)
        check_choice("routing", self.routing, ROUTINGS)
        check_choice("init", self.init, INITS)
        check_choice("lambda_mode", self.lambda_mode, LAMBDA_MODES)
        check_choice("target", self.target, MOE_TARGETS)
        check_positive_int("num_kernels", self.num_kernels)
        check_positive_int("num_experts", self.num_experts)
        check_positive_int("top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be <= num_experts={self.num_experts}")
        if self.dynamic == "conv" and self.init == "upcycle" and self.routing != "softmax":
            raise ValueError(
                "init='upcycle' keeps the model's function only with routing='softmax' (the attention "
                f"weights sum to 1); got routing={self.routing!r}"
            )


def convert(
    model: nn.Module,
    dynamic: str = "conv",
    pad: bool = True,
    num_kernels: int = 4,
    routing: str = "softmax",
    include: list[str] | str | None = None,
    exclude: list[str] | str | None = None,
    *,
    reduction: int = 16,
    init: str = "fresh",
    lambda_mode: str = "both",
    num_experts: int = 8,
    top_k: int = 2,
    noisy_gating: bool = True,
    aux_loss_coef: float = 0.01,
    target: str = "output",
) -> nn.Module:
    """Replace the model's convolutions (``dynamic="conv"``) or FFN output projections
    (``dynamic="moe"``) by PAD layers (``pad=True``) or their fully dynamic hosts (``pad=False``).

    New PAD layers start fully dynamic (mask all ones); run ``padnet.partition`` to choose the mask.
    Returns ``model``, changed in place.

    Args:
        model: any ``nn.Module``; its modules are replaced in place.
        dynamic: ``"conv"`` (every ``nn.Conv2d`` except the first) or ``"moe"`` (FFN output projections).
        pad: PAD layers (True) or the fully dynamic hosts (DY-Conv/CondConv, MoE).
        num_kernels: K, the dynamic kernels per conv.
        routing: ``"softmax"`` (DY-Conv, temperature-annealed) or ``"sigmoid"`` (CondConv).
        include, exclude: fnmatch patterns on module names that override the rule above.
        reduction: attention hidden width C_in // reduction (at least 4).
        init: ``"fresh"`` kernels (SPEC) or ``"upcycle"`` (every kernel/expert from the existing weight,
            so the converted model computes what it did).
        lambda_mode: which scale factors learn: ``"both"``, ``"static"``, ``"dynamic"`` or ``"none"``.
        num_experts, top_k, noisy_gating, aux_loss_coef: the MoE's experts, routing and balance loss.
        target: which FFN projection becomes the MoE (``"output"``, SPEC section 5).
    """
    if getattr(model, "padnet_config", None) is not None:
        raise ValueError("this model was already converted by padnet.convert")
    as_list = lambda v: [v] if isinstance(v, str) else (list(v) if v is not None else None)  # noqa: E731
    config = ConvertConfig(
        dynamic, pad, num_kernels, routing, reduction, init, lambda_mode, num_experts, top_k,
        noisy_gating, aux_loss_coef, target, as_list(include), as_list(exclude),
    )
    config.validate()
    if dynamic == "conv":
        targets = _conv_targets(model, config)
        build = _dynamic_conv_from
    else:
        targets = _moe_targets(model, config)
        build = _moe_from
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, build(getattr(parent, child), config))
    config.converted = targets
    model.padnet_config = asdict(config)
    return model


def _matches(name: str, patterns: list[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or [])


def _conv_targets(model: nn.Module, config: ConvertConfig) -> list[str]:
    convs = [name for name, m in model.named_modules() if type(m) is nn.Conv2d]
    if config.include is not None:
        chosen = [n for n in convs if _matches(n, config.include)]
    else:
        chosen = convs[1:]  # the stem stays static
    chosen = [n for n in chosen if not _matches(n, config.exclude)]
    if not chosen:
        raise ValueError(
            f"convert(dynamic='conv') found no nn.Conv2d to convert in {type(model).__name__} "
            f"(include={config.include}, exclude={config.exclude}; convolutions: {convs[:8]})"
        )
    return chosen


def _dynamic_conv_from(conv: nn.Conv2d, config: ConvertConfig) -> DynamicConv2d:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"convert supports zero padding given as ints; got padding={conv.padding!r}, "
                         f"padding_mode={conv.padding_mode!r}")
    cls = PADConv2d if config.pad else DynamicConv2d
    kwargs = dict(lambda_mode=config.lambda_mode) if config.pad else {}
    layer = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, bias=conv.bias is not None, num_kernels=config.num_kernels, reduction=config.reduction,
        routing=config.routing, **kwargs,
    )
    layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    if config.init == "upcycle":
        with torch.no_grad():
            layer.weight.copy_(conv.weight.reshape(1, -1).expand_as(layer.weight))
            if config.pad:
                layer.static_weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.expand_as(layer.bias))
    return layer


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


def _moe_targets(model: nn.Module, config: ConvertConfig) -> list[str]:
    found = find_ffn_outputs(model)
    if config.include is not None:
        found = [n for n in found if _matches(n, config.include)]
    found = [n for n in found if not _matches(n, config.exclude)]
    if not found:
        raise ValueError(
            f"convert(dynamic='moe') found no FFN output projection in {type(model).__name__}: it looks for a "
            "Linear hidden->intermediate and a Linear intermediate->hidden (intermediate > hidden) under one "
            f"module (include={config.include}, exclude={config.exclude})"
        )
    return found


def _moe_from(linear: nn.Linear, config: ConvertConfig) -> MoELinear:
    """An MoE (or PAD MoE) upcycled from ``linear``: every expert and W_s equal the pretrained weight,
    every expert bias the pretrained bias, gates 0, so the layer computes ``linear`` at init."""
    cls = PADMoELinear if config.pad else MoELinear
    kwargs = dict(lambda_mode=config.lambda_mode) if config.pad else {}
    layer = cls(
        linear.in_features, linear.out_features, config.num_experts, config.top_k, config.noisy_gating,
        config.aux_loss_coef, bias=linear.bias is not None, **kwargs,
    )
    layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(linear.weight.expand_as(layer.weight))
        if config.pad:
            layer.static_weight.copy_(linear.weight)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.expand_as(layer.bias))
    return layer


def dynamic_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every dynamic layer (DY-Conv, CondConv, MoE, their PAD and deployed forms)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DYNAMIC_LAYERS)]


def pad_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every PAD layer, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PartiallyDynamic)]


def compact(model: nn.Module) -> nn.Module:
    """Make every PAD layer's mask permanent (``PADConv2d.compact`` / ``PADMoELinear.compact``): only the
    used entries stay, so parameters and optimizer state built afterwards shrink. Call it after
    ``padnet.partition`` and before creating the optimizer. Returns ``model``."""
    layers = pad_layers(model)
    if not layers:
        raise ValueError(f"compact() found no PAD layer in {type(model).__name__}")
    for _, layer in layers:
        layer.compact()
    return model
