"""Stored parameters, bytes and multiply-accumulates (MACs) of a model, per layer and in total.

What counts (docs/method.md#storage):
- ``params``: elements of the module's parameters (what ``nn.Module.parameters`` yields), so
  torchvision resnet50 counts 25.6M, plus a deployed layer's N - nnz static values, which it holds in
  its dense static kernel rather than in a parameter; a PAD layer's mask or a deployed layer's index
  list is not a parameter but is in ``bytes``.
- ``bytes``: every tensor the state dict (and so a saved file) holds: parameters and persistent buffers
  (masks, index lists, BatchNorm statistics), at the dtype the file holds them in.
- MACs per sample, measured with forward hooks on ``example_input`` (nothing runs without one):
  ``conv_macs`` are convolutions and matrix products (including attention and routers);
  ``aggregation_macs`` are the per-sample kernel aggregations of dynamic convs: K N for DY-Conv,
  K nnz for padnet's PAD forms (only dynamic entries are aggregated); for PAD-MoE the per-forward
  assembly of the E experts' full weights (E N writes). PAD does not change conv or matmul MACs: a
  PAD-MoE token costs top_k expert products, as in the MoE. These count the function in its
  per-sample form; the strategy a conv runs with (``padnet.layers.conv_strategy``) may trade kernel
  aggregation for K times the conv MACs (the mixtures) where that is faster.
- ``conv_macs`` split: ``static_macs`` run with weights shared by the whole batch (static layers,
  attention and routers, and the static channels / rows of a channel-granular PAD layer,
  docs/method.md#granularity), ``dynamic_macs`` with per-sample kernels or routed experts; ``conv_macs`` is their sum. A
  channel-granular PAD-MoE counts (1 - kappa) + top_k kappa dense products per token.

``padnet.summary`` builds on ``cost(model, example_input)``; ``ModelCost.table()`` is a markdown table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UsageError
from .layers.deployed_base import DeployedPartiallyDynamic
from .layers.pad_base import DynamicEntries
from .layers.protocol import DYNAMIC_LAYERS


def stored_numel(module: nn.Module, recurse: bool = True) -> int:
    """Stored values: parameter elements, plus the static values of deployed layers (see above)."""
    params = sum(p.numel() for p in module.parameters(recurse=recurse))
    deployed = [m for m in (module.modules() if recurse else [module]) if isinstance(m, DeployedPartiallyDynamic)]
    return params + sum(m.num_static for m in deployed)


@dataclass
class LayerCost:
    name: str
    kind: str
    params: int = 0
    bytes: int = 0
    static_macs: int = 0
    dynamic_macs: int = 0
    aggregation_macs: int = 0
    dynamic_ratio: float | None = None

    @property
    def conv_macs(self) -> int:
        return self.static_macs + self.dynamic_macs


@dataclass
class ModelCost:
    layers: list[LayerCost] = field(default_factory=list)
    batch_size: int | None = None  # of the example input the MACs came from (None: MACs not measured)

    def total(self, key: str) -> int:
        """The sum over layers of one ``LayerCost`` count (``"params"``, ``"static_macs"``, ...)."""
        return sum(getattr(layer, key) for layer in self.layers)

    params = property(lambda self: self.total("params"))
    bytes = property(lambda self: self.total("bytes"))
    conv_macs = property(lambda self: self.total("conv_macs"))
    static_macs = property(lambda self: self.total("static_macs"))
    dynamic_macs = property(lambda self: self.total("dynamic_macs"))
    aggregation_macs = property(lambda self: self.total("aggregation_macs"))

    @property
    def macs(self) -> int:
        return self.conv_macs + self.aggregation_macs

    def table(self, only_dynamic: bool = False) -> str:
        rows = ["| layer | kind | kappa | params | bytes | conv/matmul MACs | of which static | of which dynamic | "
                "aggregation MACs |", "|---|---|---|---|---|---|---|---|---|"]
        for layer in self.layers:
            if only_dynamic and layer.dynamic_ratio is None and layer.aggregation_macs == 0:
                continue
            kappa = "" if layer.dynamic_ratio is None else f"{layer.dynamic_ratio:.3f}"
            rows.append(
                f"| {layer.name} | {layer.kind} | {kappa} | {layer.params:,} | {layer.bytes:,} | "
                f"{layer.conv_macs:,} | {layer.static_macs:,} | {layer.dynamic_macs:,} | {layer.aggregation_macs:,} |"
            )
        rows.append(f"| total | | | {self.params:,} | {self.bytes:,} | {self.conv_macs:,} | {self.static_macs:,} | "
                    f"{self.dynamic_macs:,} | {self.aggregation_macs:,} |")
        return "\n".join(rows)


def _state_bytes(module: nn.Module, recurse: bool) -> int:
    if recurse:  # through the state dict, so its hooks (a deployed layer's) count as a file does
        tensors = list(module.state_dict().values())
    else:
        tensors = list(module.parameters(recurse=False))
        tensors += [b for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]
    return sum(t.numel() * t.element_size() for t in tensors)


def _units(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, recurse): dynamic layers count their whole subtree (attention/router included),
    every other module only what it owns directly."""
    units: list[tuple[str, nn.Module, bool]] = []
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in skip):
            continue
        if isinstance(module, DYNAMIC_LAYERS):
            units.append((name, module, True))
            skip.append(name)
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            units.append((name, module, False))
    return units


def _dynamic_ratio(module: nn.Module) -> float | None:
    return float(module.dynamic_ratio) if isinstance(module, DynamicEntries) else None


def _macs(module: nn.Module, inputs, output) -> tuple[int, int, int]:
    """(static, dynamic, aggregation) MACs of one call, for the whole batch: dynamic layers count their
    own (``layer.macs``); plain convs and linears are static."""
    if isinstance(module, DYNAMIC_LAYERS):
        return module.macs(inputs[0], output)
    if isinstance(module, nn.Conv2d):
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size), 0, 0
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features, 0, 0
    return 0, 0, 0


def _kind(module: nn.Module) -> str:
    return module.kind if isinstance(module, DYNAMIC_LAYERS) else type(module).__name__


@torch.no_grad()
def cost(model: nn.Module, example_input: torch.Tensor | None = None) -> ModelCost:
    """Per-layer and total stored parameters and bytes; with ``example_input``, also MACs per sample
    (one forward pass in eval mode under hooks; the model's train/eval mode is restored)."""
    units = _units(model)
    layers = {
        name: LayerCost(name or "(root)", _kind(m), stored_numel(m, rec), _state_bytes(m, rec),
                        dynamic_ratio=_dynamic_ratio(m))
        for name, m, rec in units
    }
    result = ModelCost(list(layers.values()))
    if example_input is None:
        return result
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise UsageError("example_input must be a tensor with a batch dimension of size >= 1")
    batch = example_input.shape[0]
    dynamic_names = [n for n, m in model.named_modules() if isinstance(m, DYNAMIC_LAYERS)]
    # Attention / router Linears inside a dynamic layer are counted by that layer's own hook.
    counted = {name: m for name, m in model.named_modules()
               if isinstance(m, (*DYNAMIC_LAYERS, nn.Conv2d, nn.Linear))
               and not any(name.startswith(d + ".") for d in dynamic_names)}
    totals: dict[str, list[int]] = {}
    handles = []
    for name, module in counted.items():
        def hook(mod, inputs, output, name=name):
            acc = totals.setdefault(name, [0, 0, 0])
            for i, value in enumerate(_macs(mod, inputs, output)):
                acc[i] += value
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, (static, dynamic, agg) in totals.items():
        owner = next((u for u, _, rec in units if rec and name.startswith(u + ".")), name)
        layer = layers.get(owner)
        if layer is None:  # a parameter-free module (cannot happen for Conv2d/Linear, kept for safety)
            layer = layers[owner] = LayerCost(owner, _kind(counted[name]))
            result.layers.append(layer)
        layer.static_macs += static // batch
        layer.dynamic_macs += dynamic // batch
        layer.aggregation_macs += agg // batch
    result.batch_size = batch
    return result


def model_cost(model: nn.Module, example_input: torch.Tensor | None = None,
               input_shape: tuple[int, ...] | None = None) -> ModelCost:
    """``cost`` under a name that does not clash with the ``padnet.cost`` module: per-layer and total
    stored parameters and bytes, and with an input, MACs per sample.

    Args:
        model: any model.
        example_input: a batch to run once (eval mode, no grad) for the MACs.
        input_shape: instead of ``example_input``, the shape of a zero batch to run, e.g. ``(1, 3, 224, 224)``
            (placed on the model's device and dtype).
    """
    if example_input is not None and input_shape is not None:
        raise UsageError("model_cost takes example_input or input_shape, not both")
    if input_shape is not None:
        shape = tuple(input_shape)
        if not shape or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
            raise UsageError(f"input_shape={input_shape!r} must be a tuple of integers >= 1, batch first")
        param = next(model.parameters(), None)
        example_input = torch.zeros(shape, device=param.device if param is not None else None,
                                    dtype=param.dtype if param is not None and param.is_floating_point() else None)
    return cost(model, example_input)
