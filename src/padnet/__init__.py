"""padnet: partially dynamic networks (PAD-Net, ACL 2023) for PyTorch.

The method is described in docs/method.md; the user guide and API reference are in docs/.
Importing padnet registers the built-in architectures (torchvision's, padnet's own, and transformers'
sequence classifiers; transformers itself loads lazily) so that ``padnet.load(path)`` can rebuild them.
"""

from ._version import __version__
from .arch import build_arch, register_arch, tag_arch
from .convert import convert
from .cost import model_cost
from .deploy import compact, deploy
from .errors import ConfigError, DataError, ModelFileError, PadnetError, PartitionError, RunError
from .layers import ConvertConfig, DynamicConv2d, MoELinear, PADConv2d, PADMoELinear, aux_loss
from .models.transformers_models import load_sequence_classifier
from .onnx_export import export_onnx
from .partition import PartitionReport, partition, register_scorer
from .prediction import predict
from .serialization import load, save
from .summary import ModelSummary, summary
from .temperature import TemperatureSchedule, set_temperature

__all__ = [
    "ConfigError",
    "ConvertConfig",
    "DataError",
    "DynamicConv2d",
    "ModelFileError",
    "ModelSummary",
    "MoELinear",
    "PADConv2d",
    "PADMoELinear",
    "PadnetError",
    "PartitionError",
    "PartitionReport",
    "RunError",
    "TemperatureSchedule",
    "__version__",
    "aux_loss",
    "build_arch",
    "compact",
    "convert",
    "deploy",
    "export_onnx",
    "load",
    "load_sequence_classifier",
    "model_cost",
    "partition",
    "predict",
    "register_arch",
    "register_scorer",
    "save",
    "set_temperature",
    "summary",
    "tag_arch",
]
