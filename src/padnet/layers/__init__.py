"""padnet's layers: the fully dynamic hosts and their partially dynamic (PAD) forms."""

from . import conv_strategy
from .attention import KernelAttention
from .conv_strategy import CONV_STRATEGIES, conv_strategy_picks, load_conv_strategy_picks, set_conv_strategy
from .conversions import Conversion, Targets, conversion_kinds, get_conversion, register_conversion
from .deployed_base import DeployedPartiallyDynamic
from .deployed_conv import DeployedPADConv2d
from .deployed_moe import DeployedPADMoELinear
from .dynamic_conv import (
    KERNEL_STRATEGIES,
    DynamicConv2d,
    DynamicConvCompute,
    apply_per_sample_kernels,
    choose_kernel_strategy,
)
from .moe import ExpertSlots, MoECompute, MoELinear, aux_loss, mix_experts
from .pad_base import GRANULARITIES, LAMBDA_MODES, PartiallyDynamic
from .pad_conv import PADConv2d
from .pad_experts import DeployedExpertWeights, PADExperts, PADExpertWeights
from .pad_moe import PADMoELinear
from .router import NoisyTopKRouter, Routing

# The layer protocol: every dynamic layer is one of these (a conv form or an MoE form); the partially
# dynamic ones are also ``PartiallyDynamic`` (training form) or ``DeployedPartiallyDynamic`` (inference).
# What ``padnet.convert`` builds them from is registered in ``conversions`` (one ``Conversion`` per kind).
DYNAMIC_LAYERS = (DynamicConvCompute, MoECompute)

__all__ = [
    "DYNAMIC_LAYERS",
    "DeployedPartiallyDynamic",
    "DynamicConvCompute",
    "MoECompute",
    "CONV_STRATEGIES",
    "Conversion",
    "Targets",
    "conversion_kinds",
    "get_conversion",
    "register_conversion",
    "ExpertSlots",
    "conv_strategy",
    "conv_strategy_picks",
    "load_conv_strategy_picks",
    "set_conv_strategy",
    "KERNEL_STRATEGIES",
    "LAMBDA_MODES",
    "GRANULARITIES",
    "DeployedPADConv2d",
    "DeployedPADMoELinear",
    "DynamicConv2d",
    "KernelAttention",
    "MoELinear",
    "NoisyTopKRouter",
    "PADConv2d",
    "PADMoELinear",
    "PADExperts",
    "PADExpertWeights",
    "DeployedExpertWeights",
    "PartiallyDynamic",
    "Routing",
    "apply_per_sample_kernels",
    "choose_kernel_strategy",
    "aux_loss",
    "mix_experts",
]
