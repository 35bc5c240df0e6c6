"""The settings of a conversion (``padnet.convert``): which kind of dynamic layer, PAD or fully
dynamic, and how the layers are built. They live beside the layers and the conversion registry they
are checked against; ``padnet.convert`` and the run config's ``dynamic`` section both read them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo, create_model
from pydantic_core import PydanticCustomError

from ..errors import ConfigError
from ..validation import Section, fields_of, one_of, validate as validate_model
from .attention import Routing
from .conversions import Init, MoeTarget, conversion_kinds, get_conversion
from .pad_base import Granularity, LambdaMode

# Upper bounds on the sizes (a value past them is a typo or an attack, and would otherwise surface as an
# out-of-memory kill or a raw RuntimeError; the defaults are K = 4 kernels and 8 experts).
MAX_KERNELS = 64
MAX_EXPERTS = 1024
MAX_REDUCTION = 4096


def _at_most_num_experts(top_k: int, info: ValidationInfo) -> int:
    # num_experts is declared before top_k, so pydantic has validated it; absent when it is itself invalid
    experts = info.data.get("num_experts")
    if experts is not None and top_k > experts:
        raise PydanticCustomError("top_k", "must be <= num_experts={experts}", {"experts": experts})
    return top_k


@dataclass(kw_only=True)
class ConvertOptions:
    """How layers are converted: every setting of a conversion but which kind and whether PAD. A run
    config's ``dynamic`` section holds these keys too (``padnet.train.config.DynamicConfig``); both are
    checked by ``ConvertSettings``, the same fields as a pydantic model."""

    num_kernels: Annotated[int, Field(ge=1, le=MAX_KERNELS)] = 4  # conv: K, the dynamic kernels per conv
    routing: Routing = "softmax"  # conv: softmax = DY-Conv (temperature-annealed), sigmoid = CondConv
    # conv: attention hidden width C_in // reduction (at least 4)
    reduction: Annotated[int, Field(ge=1, le=MAX_REDUCTION)] = 16
    # conv: fresh kernels (docs/method.md#dynamic-layers) or upcycle (every kernel from the existing weight)
    init: Init = "fresh"
    lambda_mode: LambdaMode = "both"  # PAD: which scale factors learn: both, static, dynamic or none
    # PAD: mask per entry (the paper) or per output channel / row (docs/method.md#granularity)
    granularity: Granularity = "element"
    num_experts: Annotated[int, Field(ge=1, le=MAX_EXPERTS)] = 8  # moe: experts per layer ...
    # ... and how many each token uses (<= num_experts)
    top_k: Annotated[int, Field(ge=1), AfterValidator(_at_most_num_experts)] = 2
    noisy_gating: bool = True  # moe: noisy top-k routing while training
    aux_loss_coef: Annotated[float, Field(ge=0)] = 0.01  # moe: load-balancing loss coefficient
    # moe: which FFN projections become MoEs: "output" (docs/method.md#placement; "down"), "gate", "up",
    # or a list
    target: MoeTarget = "output"
    include: list[str] | None = None  # fnmatch patterns of module names to convert (overrides the rule)
    exclude: list[str] | None = None  # ... and to leave as they are

    def problems(self, prefix: str = "") -> list[str]:
        """Every bad setting, each naming its key (after ``prefix``, e.g. ``"dynamic."``), the value and
        what is allowed."""
        return _problems(ConvertSettings, self, prefix)


def convert_options(settings) -> dict:
    """The settings ``ConvertOptions`` declares, by name, read from ``settings`` (a ``ConvertOptions``, or a
    run config's ``dynamic`` section, which holds them beside the run's own keys)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(ConvertOptions)}


def _problems(model: type[Section], settings, prefix: str) -> list[str]:
    """Every problem ``model`` finds in the dataclass ``settings`` (its keys after ``prefix``)."""
    out: list[str] = []
    # a tuple is as good as a list here (pydantic's strict mode, which a config file needs, refuses it)
    values = {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(settings).items()
              if key in model.model_fields}
    validate_model(model, values, out, prefix.removesuffix("."))
    return out


@dataclass(kw_only=True)
class ConvertConfig(ConvertOptions):
    """Every setting of a conversion: the kind (``dynamic``, one of
    ``padnet.layers.conversions.conversion_kinds()``), PAD or fully dynamic, and the ``ConvertOptions``.
    ``convert`` stores it on the model as ``model.padnet_config`` (a plain dict, plus ``converted``: the
    names of the replaced modules)."""

    dynamic: Annotated[str, one_of(conversion_kinds)] = "conv"
    pad: bool = True

    def problems(self, prefix: str = "") -> list[str]:
        # The kind's own rules (e.g. conv: upcycle needs softmax), once the settings they read are valid.
        return _problems(ConvertConfigSettings, self, prefix) or get_conversion(self.dynamic).problems(self, prefix)

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ``ValueError``) listing every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "padnet.convert settings")


# ``ConvertOptions`` as a pydantic model: what checks it, and the base of a run config's ``dynamic`` section;
# and ``ConvertConfig`` (the kind and PAD too).
ConvertSettings: type[Section] = create_model("ConvertSettings", __base__=Section, **fields_of(ConvertOptions))
ConvertConfigSettings: type[Section] = create_model("ConvertConfigSettings", __base__=Section,
                                                    **fields_of(ConvertConfig))
