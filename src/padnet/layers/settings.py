"""The settings of a conversion (``padnet.convert``): which kind of dynamic layer, PAD or fully
dynamic, and how the layers are built. They live beside the layers and the conversion registry they
are checked against; ``padnet.convert`` and the run config's ``dynamic`` section both read them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError
from ._validate import choice_problem, int_problem
from .attention import ROUTINGS, Routing
from .conversions import INITS, Init, conversion_kinds, get_conversion, target_problems
from .pad_base import GRANULARITIES, LAMBDA_MODES, Granularity, LambdaMode


@dataclass(kw_only=True)
class ConvertOptions:
    """How layers are converted: every setting of a conversion but which kind and whether PAD. A run
    config's ``dynamic`` section holds these keys too (``padnet.train.config.DynamicConfig``)."""

    num_kernels: int = 4  # conv: K, the dynamic kernels per conv
    routing: Routing = "softmax"  # conv: softmax = DY-Conv (temperature-annealed), sigmoid = CondConv
    reduction: int = 16  # conv: attention hidden width C_in // reduction (at least 4)
    # conv: fresh kernels (docs/method.md#dynamic-layers) or upcycle (every kernel from the existing weight)
    init: Init = "fresh"
    lambda_mode: LambdaMode = "both"  # PAD: which scale factors learn: both, static, dynamic or none
    # PAD: mask per entry (the paper) or per output channel / row (docs/method.md#granularity)
    granularity: Granularity = "element"
    num_experts: int = 8  # moe: experts per layer ...
    top_k: int = 2  # ... and how many each token uses
    noisy_gating: bool = True  # moe: noisy top-k routing while training
    aux_loss_coef: float = 0.01  # moe: load-balancing loss coefficient
    # moe: which FFN projections become MoEs: "output" (docs/method.md#placement; "down"), "gate", "up",
    # or a list
    target: str | list[str] = "output"
    include: list[str] | None = None  # fnmatch patterns of module names to convert (overrides the rule)
    exclude: list[str] | None = None  # ... and to leave as they are

    def problems(self, prefix: str = "") -> list[str]:
        """Every bad setting, each naming its key (after ``prefix``, e.g. ``"dynamic."``), the value and
        what is allowed."""
        choices = {"routing": ROUTINGS, "init": INITS, "lambda_mode": LAMBDA_MODES, "granularity": GRANULARITIES}
        picks = [choice_problem(f"{prefix}{key}", getattr(self, key), allowed) for key, allowed in choices.items()]
        sizes = [int_problem(f"{prefix}{key}", getattr(self, key))
                 for key in ("num_kernels", "reduction", "num_experts", "top_k")]
        out = [p for p in picks + sizes if p] + target_problems(self.target, prefix)
        if not (isinstance(self.aux_loss_coef, (int, float)) and self.aux_loss_coef >= 0):
            out.append(f"{prefix}aux_loss_coef={self.aux_loss_coef!r} must be >= 0")
        if not any(sizes) and self.top_k > self.num_experts:
            out.append(f"{prefix}top_k={self.top_k!r} must be <= {prefix}num_experts={self.num_experts!r}")
        return out

    def options(self) -> dict:
        """The ``ConvertOptions`` fields and their values (a subclass's own fields left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ConvertOptions)}


@dataclass(kw_only=True)
class ConvertConfig(ConvertOptions):
    """Every setting of a conversion: the kind (``dynamic``, one of
    ``padnet.layers.conversions.conversion_kinds()``), PAD or fully dynamic, and the ``ConvertOptions``.
    ``convert`` stores it on the model as ``model.padnet_config`` (a plain dict, plus ``converted``: the
    names of the replaced modules)."""

    dynamic: str = "conv"
    pad: bool = True

    def problems(self, prefix: str = "") -> list[str]:
        out = super().problems(prefix)
        kind = choice_problem(f"{prefix}dynamic", self.dynamic, conversion_kinds())
        if kind:
            return [kind, *out]
        # The kind's own rules (e.g. conv: upcycle needs softmax), once the settings they read are valid.
        return out or get_conversion(self.dynamic).problems(self, prefix)

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ``ValueError``) listing every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "padnet.convert settings")
