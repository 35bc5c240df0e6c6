"""What a new layer kind builds on (docs/extending.md): the protocol bases every module outside
``padnet.layers`` asks a layer through, the conversion registry ``padnet.convert`` builds layers from,
and the compute pieces the built-in layers share.

Users of the built-in layers need only ``padnet.layers``; this module is for extenders."""

from .attention import KernelAttention
from .conversions import Conversion, Targets, conversion_kinds, get_conversion, register_conversion
from .deployed_base import DeployedPartiallyDynamic
from .dynamic_conv import KERNEL_STRATEGIES, DynamicConvCompute, apply_per_sample_kernels, choose_kernel_strategy
from .moe import ExpertSlots, MoECompute, mix_experts
from .pad_base import PartiallyDynamic
from .pad_experts import DeployedExpertWeights, PADExperts, PADExpertWeights
from .router import NoisyTopKRouter, Routing

# Every dynamic layer is one of these (a conv form or an MoE form); the partially dynamic ones are also
# ``PartiallyDynamic`` (training form) or ``DeployedPartiallyDynamic`` (inference form).
DYNAMIC_LAYERS = (DynamicConvCompute, MoECompute)

__all__ = [
    "DYNAMIC_LAYERS",
    "KERNEL_STRATEGIES",
    "Conversion",
    "DeployedExpertWeights",
    "DeployedPartiallyDynamic",
    "DynamicConvCompute",
    "ExpertSlots",
    "KernelAttention",
    "MoECompute",
    "NoisyTopKRouter",
    "PADExpertWeights",
    "PADExperts",
    "PartiallyDynamic",
    "Routing",
    "Targets",
    "apply_per_sample_kernels",
    "choose_kernel_strategy",
    "conversion_kinds",
    "get_conversion",
    "mix_experts",
    "register_conversion",
]
