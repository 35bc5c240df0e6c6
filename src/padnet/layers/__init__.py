"""padnet's layers: the fully dynamic hosts and their partially dynamic (PAD) forms."""

from .attention import KernelAttention
from .dynamic_conv import DynamicConv2d, apply_per_sample_kernels
from .moe import MoELinear, aux_loss, mix_experts
from .pad_base import LAMBDA_MODES, PartiallyDynamic
from .pad_conv import PADConv2d
from .pad_moe import PADMoELinear
from .router import NoisyTopKRouter, Routing

__all__ = [
    "LAMBDA_MODES",
    "DynamicConv2d",
    "KernelAttention",
    "MoELinear",
    "NoisyTopKRouter",
    "PADConv2d",
    "PADMoELinear",
    "PartiallyDynamic",
    "Routing",
    "apply_per_sample_kernels",
    "aux_loss",
    "mix_experts",
]
