"""padnet: partially dynamic networks (PAD-Net, ACL 2023) for PyTorch."""

from ._version import __version__  # noqa: F401  (re-exported: padnet.__version__)
from .convert import ConvertConfig, compact, convert
from .errors import ConfigError, DataError, ModelFileError, PadnetError, PartitionError, RunError
from .layers import DynamicConv2d, MoELinear, PADConv2d, PADMoELinear, aux_loss
from .partition import PartitionReport, partition, register_scorer
from .summary import ModelSummary, summary
from .temperature import TemperatureSchedule, set_temperature

__all__ = [
    "ConfigError",
    "ConvertConfig",
    "DataError",
    "DynamicConv2d",
    "ModelSummary",
    "MoELinear",
    "PADConv2d",
    "PADMoELinear",
    "PadnetError",
    "PartitionError",
    "PartitionReport",
    "RunError",
    "TemperatureSchedule",
    "aux_loss",
    "compact",
    "convert",
    "partition",
    "register_scorer",
    "set_temperature",
    "summary",
]

# Deployment form and model files (issue 6); counting lives in padnet.cost.
from .arch import build_arch, register_arch, tag_arch
from .cost import model_cost
from .deploy import deploy
from .serialization import load, save

__all__ += ["ModelFileError", "build_arch", "deploy", "load", "model_cost", "register_arch", "save", "tag_arch"]

# Text models (issue 5): importing registers their arch for padnet.load; transformers loads lazily.
from .models.hf import load_sequence_classifier  # noqa: E402

__all__ += ["load_sequence_classifier"]

# Prediction on new inputs from an exported model file (issue 17).
from .prediction import predict  # noqa: E402

__all__ += ["predict"]
