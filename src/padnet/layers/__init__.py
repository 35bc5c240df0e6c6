"""padnet's layers: the fully dynamic hosts and their partially dynamic (PAD) training and deployed
forms, the queries that find them in a model, the conv compute strategy and the opt-in fused assembly.

What a new layer kind builds on (the protocol bases, the conversion registry) is in
``padnet.layers.protocol``."""

from . import conv_strategy
from .conv_strategy import CONV_STRATEGIES, conv_strategy_picks, load_conv_strategy_picks, set_conv_strategy
from .deployed_conv import DeployedPADConv2d
from .deployed_moe import DeployedPADMoELinear
from .dynamic_conv import DynamicConv2d
from .fused import fused_assembly_enabled, set_fused_assembly
from .moe import MoELinear, aux_loss
from .pad_base import GRANULARITIES, LAMBDA_MODES
from .pad_conv import PADConv2d
from .pad_moe import PADMoELinear
from .queries import dynamic_layers, pad_layers
from .settings import ConvertConfig, ConvertOptions

__all__ = [
    "CONV_STRATEGIES",
    "GRANULARITIES",
    "LAMBDA_MODES",
    "ConvertConfig",
    "ConvertOptions",
    "DeployedPADConv2d",
    "DeployedPADMoELinear",
    "DynamicConv2d",
    "MoELinear",
    "PADConv2d",
    "PADMoELinear",
    "aux_loss",
    "conv_strategy",
    "conv_strategy_picks",
    "dynamic_layers",
    "fused_assembly_enabled",
    "load_conv_strategy_picks",
    "pad_layers",
    "set_conv_strategy",
    "set_fused_assembly",
]
