"""padnet: partially dynamic networks (PAD-Net, ACL 2023) for PyTorch."""

from .layers import DynamicConv2d, MoELinear, PADConv2d, PADMoELinear, aux_loss
from .temperature import TemperatureSchedule, set_temperature

__version__ = "0.1.0"

__all__ = [
    "DynamicConv2d",
    "MoELinear",
    "PADConv2d",
    "PADMoELinear",
    "TemperatureSchedule",
    "aux_loss",
    "set_temperature",
]
