"""Which layers of a model are dynamic: the queries every operation on a converted model starts from."""

from __future__ import annotations

from torch import nn

from .protocol import DYNAMIC_LAYERS, DeployedPartiallyDynamic, PartiallyDynamic


def dynamic_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every dynamic layer: DY-Conv, CondConv, MoE, and every PAD layer and deployed
    PAD layer of any kind (the pretrained experts' weights included)."""
    kinds = (*DYNAMIC_LAYERS, PartiallyDynamic, DeployedPartiallyDynamic)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def pad_layers(model: nn.Module) -> list[tuple[str, PartiallyDynamic]]:
    """(name, module) of every PAD layer, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PartiallyDynamic)]
