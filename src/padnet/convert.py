"""Turn an existing model dynamic or partially dynamic in one call (PEFT's ``get_peft_model`` style).

``convert(model, dynamic="conv")`` (keyword settings) or ``convert(model, config=ConvertConfig(...))``
replaces modules in place and returns the model, with the settings it used recorded as
``model.padnet_config`` (a plain dict) so ``padnet.save``/``padnet.load`` can rebuild it.

Which modules each kind replaces and what it puts in their place (docs/method.md#placement) is registered in
``padnet.layers.conversions``: ``dynamic="conv"`` makes every ``nn.Conv2d`` but the stem a DY-Conv /
CondConv or PAD DY-Conv, ``dynamic="moe"`` makes the FFN output projection of every transformer layer
an MoE or PAD MoE upcycled from the pretrained weight. ``include``/``exclude`` (fnmatch patterns on
module names) override a kind's rule for any other model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence

from torch import nn

from .arch import detect_arch
from .errors import UsageError
from .layers.attention import Routing
from .layers.conversions import Conversion, Init, get_conversion
from .layers.pad_base import Granularity, LambdaMode
from .layers.settings import ConvertConfig


def convert(
    model: nn.Module,
    dynamic: str = "conv",
    pad: bool = True,
    num_kernels: int = 4,
    routing: Routing = "softmax",
    include: list[str] | str | None = None,
    exclude: list[str] | str | None = None,
    *,
    reduction: int = 16,
    init: Init = "fresh",
    lambda_mode: LambdaMode = "both",
    granularity: Granularity = "element",
    num_experts: int = 8,
    top_k: int = 2,
    noisy_gating: bool = True,
    aux_loss_coef: float = 0.01,
    target: str | list[str] = "output",
    config: ConvertConfig | None = None,
) -> nn.Module:
    """Replace the model's convolutions (``dynamic="conv"``) or FFN output projections
    (``dynamic="moe"``) by PAD layers (``pad=True``) or their fully dynamic hosts (``pad=False``).

    New PAD layers start fully dynamic (mask all ones); run ``padnet.partition`` to choose the mask.
    Returns ``model``, changed in place. Raises ``ConfigError`` (a ``ValueError``) listing every bad
    setting, and ``ValueError`` if the model was converted before or has nothing to convert.

    Args:
        model: any ``nn.Module``; its modules are replaced in place.
        dynamic: the kind: ``"conv"`` (every ``nn.Conv2d`` except the first), ``"moe"`` (FFN output
            projections), or another registered with ``padnet.layers.conversions.register_conversion``.
        pad: PAD layers (True) or the fully dynamic hosts (DY-Conv/CondConv, MoE).
        num_kernels: K, the dynamic kernels per conv.
        routing: ``"softmax"`` (DY-Conv, temperature-annealed) or ``"sigmoid"`` (CondConv).
        include, exclude: fnmatch patterns on module names that override the rule above.
        reduction: attention hidden width C_in // reduction (at least 4).
        init: ``"fresh"`` kernels (docs/method.md#dynamic-layers) or ``"upcycle"`` (every kernel/expert
            from the existing weight, so the converted model computes what it did).
        lambda_mode: which scale factors learn: ``"both"``, ``"static"``, ``"dynamic"`` or ``"none"``.
        granularity: ``"element"`` (the paper: the mask chooses single entries) or ``"channel"`` (whole
            output channels of a conv, output rows of an MoE expert: the static ones are computed once
            for the whole batch, docs/method.md#granularity).
        num_experts, top_k, noisy_gating, aux_loss_coef: the MoE's experts, routing and balance loss.
        target: which FFN projections become MoEs: ``"output"`` (docs/method.md#placement; ``"down"`` is the
            same), ``"gate"`` or ``"up"`` (a SwiGLU's ``gate_proj`` / ``up_proj``; ``"up"`` is a plain
            FFN's input projection), or a list of them.
        config: all of the above as one ``ConvertConfig`` (``convert(model, config=ConvertConfig(...))``);
            the keyword settings must then be left at their defaults.
    """
    keywords = ConvertConfig(
        dynamic=dynamic, pad=pad, num_kernels=num_kernels, routing=routing,
        include=_as_list(include), exclude=_as_list(exclude),
        reduction=reduction, init=init, lambda_mode=lambda_mode, granularity=granularity, num_experts=num_experts,
        top_k=top_k, noisy_gating=noisy_gating, aux_loss_coef=aux_loss_coef, target=target,
    )
    if getattr(model, "padnet_config", None) is not None:
        raise UsageError("this model was already converted by padnet.convert")
    config = _one_config(keywords, config)
    conversion = get_conversion(config.dynamic)
    targets, skipped = _targets(model, conversion, config)
    # Before any module changes: a model built by a torchvision builder or by transformers is recognised
    # by its own structure, so padnet.save records how to rebuild it and padnet.load(path) needs nothing more.
    # (plain attributes on the model: setattr, as nn.Module's typed __setattr__ is for tensors and modules)
    arch = detect_arch(model)
    if arch is not None:
        setattr(model, "padnet_arch", arch)
    _replace(model, targets, lambda module: conversion.build(module, config))
    setattr(model, "padnet_config", {**dataclasses.asdict(config), "converted": targets, "skipped": skipped})
    return model


def _replace(model: nn.Module, names: list[str], build) -> None:
    """Put ``build(module)`` in place of each named submodule."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, build(getattr(parent, child)))


def plan_conversion(model: nn.Module, **settings) -> tuple[list[str], dict[str, str]]:
    """(the names of the modules ``convert(model, **settings)`` would replace, those its rule skips:
    name -> why), without changing the model."""
    config = _one_config(ConvertConfig(**settings), None)
    return _targets(model, get_conversion(config.dynamic), config)


def _one_config(keywords: ConvertConfig, config: ConvertConfig | None) -> ConvertConfig:
    """The validated settings of a ``convert`` call (a copy: the caller's config is not changed), with
    a single include/exclude pattern as a list."""
    if config is None:
        config = keywords
    elif not isinstance(config, ConvertConfig):
        raise TypeError(f"config must be a padnet.ConvertConfig; got {type(config).__name__}")
    elif keywords != ConvertConfig():
        changed = [k for k, v in dataclasses.asdict(keywords).items() if v != getattr(ConvertConfig(), k)]
        raise UsageError(f"convert() takes config= or keyword settings, not both; got config and {', '.join(changed)}")
    config = dataclasses.replace(config, include=_as_list(config.include), exclude=_as_list(config.exclude))
    config.validate()
    return config


def _as_list(patterns: str | Sequence[str] | None) -> list[str] | None:
    """One include/exclude pattern as a list; a list (or tuple) copied; None kept."""
    return [patterns] if isinstance(patterns, str) else (list(patterns) if patterns is not None else None)


def _matches(name: str, patterns: list[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or [])


def _targets(model: nn.Module, conversion: Conversion, config: ConvertConfig) -> tuple[list[str], dict[str, str]]:
    """The names of the modules to replace: the kind's default ones, or those of its eligible ones that
    ``include`` matches; less those ``exclude`` matches. And the ones the kind skips that stay as they
    are (name -> why)."""
    found = conversion.targets(model, config)
    if config.include is not None:
        chosen = [n for n in found.eligible if _matches(n, config.include)]
    else:
        chosen = list(found.default)
    chosen = [n for n in chosen if not _matches(n, config.exclude)]
    if not chosen:
        hint = f": {conversion.hint}" if conversion.hint else ""
        raise UsageError(
            f"convert(dynamic={config.dynamic!r}) found no {conversion.looks_for} in {type(model).__name__}{hint} "
            f"(include={config.include}, exclude={config.exclude}; eligible: {found.eligible[:8]})"
        )
    return chosen, {name: why for name, why in (found.skipped or {}).items() if name not in chosen}
