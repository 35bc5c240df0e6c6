"""``padnet.summary(model)``: what each dynamic layer holds, and the model beside its static and fully
dynamic twins (PEFT's ``print_trainable_parameters``, per layer).

Counts follow docs/method.md#storage. A PAD layer with N entries per kernel, K kernels and dynamic ratio kappa
deploys (1 - kappa) N static values + kappa K N dynamic values (+ its dynamic biases) + the
attention/router; the mask (or index list) is metadata, reported apart. The same layer fully dynamic
holds K N (+ biases, + attention); fully static it holds N (+ one bias).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .cost import cost, stored_numel
from .errors import UsageError
from .layers import dynamic_layers
from .layers.deployed_base import DeployedPartiallyDynamic
from .layers.protocol import (
    DeployedExpertWeights,
    DynamicConvCompute,
    MoECompute,
    PADExpertWeights,
    PartiallyDynamic,
)


@dataclass
class LayerSummary:
    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    num_kernels: int
    dynamic_ratio: float
    lambda_s: float
    lambda_d: float
    static_params: int
    dynamic_params: int
    router_params: int
    stored_params: int  # what the module holds now (training form, compacted or not)
    fully_static_params: int
    fully_dynamic_params: int

    @property
    def deployable_params(self) -> int:
        return self.static_params + self.dynamic_params + self.router_params


@dataclass
class ModelSummary:
    layers: list[LayerSummary]
    other_params: int  # everything outside the dynamic layers (stem, norms, classifier, embeddings)
    stored_params: int
    deployable_params: int
    fully_static_params: int
    fully_dynamic_params: int
    dynamic_entries: int
    entries: int
    stored_bytes: int  # parameters and persistent buffers (masks, index lists) as held now
    conv_macs: int | None = None  # per sample, when summary() was given an example input
    aggregation_macs: int | None = None  # per sample: building the per-sample kernels / expert mixing
    skipped: dict[str, str] | None = None  # modules padnet.convert's rule left static on purpose: name -> why
    static_macs: int | None = None  # per sample, of conv_macs: weights shared by the batch (docs/method.md#granularity)
    dynamic_macs: int | None = None  # per sample, of conv_macs: per-sample kernels, routed experts

    @property
    def dynamic_ratio(self) -> float:
        return self.dynamic_entries / self.entries if self.entries else 0.0

    def to_dict(self) -> dict:
        """The counts as plain values, every layer's and the overall dynamic ratio included."""
        out = asdict(self)
        out["dynamic_ratio"] = self.dynamic_ratio
        return out

    def to_json(self) -> str:
        """``to_dict`` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A text table: a row per dynamic layer (kind, shape, K, kappa, the scales, parameter counts), then
        the totals."""
        head = ("layer", "kind", "shape", "K", "kappa", "l_s", "l_d", "static", "dynamic", "router")
        rows = [
            (
                s.name, s.kind, "x".join(map(str, s.kernel_shape)), str(s.num_kernels), f"{s.dynamic_ratio:.3f}",
                f"{s.lambda_s:.3f}", f"{s.lambda_d:.3f}", f"{s.static_params:,}", f"{s.dynamic_params:,}",
                f"{s.router_params:,}",
            )
            for s in self.layers
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows), ""]
        lines += [
            f"dynamic layers: {len(self.layers)}   dynamic entries: {self.dynamic_entries:,} / {self.entries:,} "
            f"({self.dynamic_ratio:.1%})",
            f"parameters  deployable: {self.deployable_params:,}   stored now: {self.stored_params:,}   "
            f"fully static: {self.fully_static_params:,}   fully dynamic: {self.fully_dynamic_params:,}",
            f"stored bytes (parameters and buffers): {self.stored_bytes:,}",
        ]
        if self.skipped:
            names = ", ".join(f"{name} ({why})" for name, why in self.skipped.items())
            lines.append(f"kept static by the conversion rule (include= converts them): {names}")
        if self.conv_macs is not None:
            lines.append(
                f"MACs per sample  conv/matmul: {self.conv_macs:,} (static {self.static_macs:,}, dynamic "
                f"{self.dynamic_macs:,})   kernel aggregation: {self.aggregation_macs:,}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _layer_summary(name: str, layer: nn.Module) -> LayerSummary:
    shape: tuple[int, ...]
    router: nn.Module
    if isinstance(layer, DynamicConvCompute):  # DY-Conv, CondConv and their PAD and deployed forms
        kernels, shape, router, bias_param = layer.num_kernels, layer.weight_shape, layer.attention, layer.bias
    elif isinstance(layer, (MoECompute, PADExpertWeights, DeployedExpertWeights)):  # MoE forms, the experts' weights
        kernels, shape, router = layer.num_experts, (layer.out_features, layer.in_features), layer.router
        bias_param = layer.bias
    else:
        raise UsageError(f"{name}: {type(layer).__name__} is neither a dynamic conv nor an MoE form; "
                         "padnet.summary cannot count it (docs/extending.md)")
    entries = math.prod(shape)
    router_params = sum(p.numel() for p in router.parameters())
    bias = bias_param.numel() if bias_param is not None else 0
    one_bias = bias // kernels
    if isinstance(layer, DeployedPartiallyDynamic):
        # The scales are folded into the stored values: report them as 1.
        nnz = layer.num_dynamic
        lambda_s, lambda_d = 1.0, 1.0
        static, dynamic, ratio = entries - nnz, kernels * nnz + bias, layer.dynamic_ratio
    elif isinstance(layer, PartiallyDynamic):
        nnz = layer.num_dynamic
        lambda_s, lambda_d = (float(v.detach()) for v in layer.scales)
        # phi is not deployable: deploy() folds the scales into the stored values (docs/method.md#storage).
        static, dynamic, ratio = entries - nnz, kernels * nnz + bias, layer.dynamic_ratio
    else:
        lambda_s, lambda_d = 0.0, 1.0
        static, dynamic, ratio = 0, kernels * entries + bias, 1.0
    return LayerSummary(
        name=name,
        kind=type(layer).__name__,
        kernel_shape=tuple(shape),
        num_kernels=kernels,
        dynamic_ratio=ratio,
        lambda_s=lambda_s,
        lambda_d=lambda_d,
        static_params=static,
        dynamic_params=dynamic,
        router_params=router_params,
        stored_params=stored_numel(layer),
        fully_static_params=entries + one_bias,
        fully_dynamic_params=kernels * entries + bias + sum(p.numel() for p in router.parameters()),
    )


def summary(model: nn.Module, example_input: torch.Tensor | None = None) -> ModelSummary:
    """Per dynamic layer: shape, dynamic ratio, lambda_s, lambda_d and parameter counts; totals beside
    what the same model would hold fully static and fully dynamic, and the bytes it stores now. Given
    an ``example_input``, also the MACs per sample split into convolution/matmul and kernel
    aggregation (``padnet.cost``), for the training and the deployed form alike.

    Args:
        model: any model; dynamic layers get a row each, everything else is counted in the totals.
        example_input: a batch to run once (eval mode, no grad) for the MACs; None skips them.
    """
    found = dynamic_layers(model)
    # Nested dynamic layers do not exist, so a layer's parameters belong to it alone.
    layers = [_layer_summary(name, layer) for name, layer in found]
    inside = sum(p.numel() for _, layer in found for p in layer.parameters())
    other = sum(p.numel() for p in model.parameters()) - inside
    entries = sum(math.prod(s.kernel_shape) for s in layers)
    dynamic_entries = sum(round(s.dynamic_ratio * math.prod(s.kernel_shape)) for s in layers)
    measured = cost(model, example_input)
    return ModelSummary(
        layers=layers,
        other_params=other,
        stored_params=other + sum(s.stored_params for s in layers),
        deployable_params=other + sum(s.deployable_params for s in layers),
        fully_static_params=other + sum(s.fully_static_params for s in layers),
        fully_dynamic_params=other + sum(s.fully_dynamic_params for s in layers),
        dynamic_entries=dynamic_entries,
        entries=entries,
        stored_bytes=measured.bytes,
        conv_macs=measured.conv_macs if example_input is not None else None,
        aggregation_macs=measured.aggregation_macs if example_input is not None else None,
        skipped=dict((getattr(model, "padnet_config", None) or {}).get("skipped") or {}),
        static_macs=measured.static_macs if example_input is not None else None,
        dynamic_macs=measured.dynamic_macs if example_input is not None else None,
    )

