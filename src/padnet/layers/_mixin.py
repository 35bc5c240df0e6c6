"""The base of the layer mixins (``DynamicEntries`` and its PAD forms, ``DynamicConvCompute``,
``MoECompute``, ``ExpertWeights``): ``nn.Module`` to a type checker, so the mixins' use of module
methods and attributes is checked, and ``object`` at run time, so every layer's MRO is what it was."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.nn import Module as ModuleMixin
else:
    ModuleMixin = object

__all__ = ["ModuleMixin"]
