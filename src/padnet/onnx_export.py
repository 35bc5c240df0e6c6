"""ONNX export of a model, deployed PAD layers included: ``padnet.export_onnx(model, example, path)``,
and ``padnet export --format onnx``.

``torch.onnx.export`` (the dynamo exporter, on ``torch.export``) writes the file with a dynamic batch
axis. ONNX's ``Conv`` takes its group count as a constant, so dynamic convolutions are exported in the
``mixture`` computing form (each kernel over the whole batch, weighted per sample: the same function,
docs/method.md#computing-forms) rather than as one grouped conv whose groups are the batch. The file is
written beside ``path`` and renamed to it once onnxruntime (when installed) reproduces the model's
outputs on ``example``. Needs ``pip install onnx onnxscript onnxruntime`` (the ``onnx`` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import ModeError, RunError, UsageError, cut
from .layers.conv_strategy import conv_strategy

# Outputs of onnxruntime and torch differ by float32 rounding in another summation order: per layer
# about eps32 (6e-8) times the square root of the terms summed, a few 1e-7 relative through a ResNet
# (measured: 1.5e-7 for a deployed channel-PAD small_resnet). A wrong export moves outputs by their scale.
RELATIVE_TOLERANCE = 1e-4


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, dynamic_batch: bool = True,
                check: bool = True) -> dict:
    """Write ``model`` (in eval mode) as an ONNX file and return what was written.

    Args:
        model: any model whose forward takes one tensor; PAD models after ``padnet.deploy``.
        example: an input batch (its shape and dtype; the batch axis is dynamic unless ``dynamic_batch``
            is False).
        path: the ``.onnx`` file.
        check: run the file in onnxruntime on ``example`` and refuse it (``RunError``, nothing written)
            unless its outputs match the model's within ``RELATIVE_TOLERANCE`` of their scale.

    Returns ``{"path", "file_bytes", "max_abs_diff"}`` (the last None without ``check``). Raises
    ``ModeError`` naming the model and the exporter's reason when the model cannot be exported.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise UsageError(f"path={str(path)!r} must end in .onnx")
    if not isinstance(example, torch.Tensor):
        raise UsageError(f"example must be one input tensor; got {type(example).__name__} (ONNX export takes "
                         "models whose forward takes one tensor, such as image classifiers)")
    model.eval()
    unchecked = path.with_name(f".{path.stem}.unchecked.onnx")
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        with torch.no_grad(), conv_strategy("mixture"):
            torch.onnx.export(model, (example,), str(unchecked), dynamo=True, dynamic_shapes=shapes, verbose=False,
                              external_data=False)  # one self-contained file (protobuf: up to 2 GB)
    except ImportError as err:
        raise RunError(f"ONNX export needs onnx and onnxscript ({err}); pip install 'padnet[onnx]'") from None
    except Exception as err:  # the exporter's errors span torch.export, dispatch and graph building
        unchecked.unlink(missing_ok=True)
        raise ModeError(f"ONNX export of {type(model).__name__} failed: {cut(str(err).strip().splitlines()[0])}; "
                        "export it with padnet.save (safetensors) instead") from err
    try:
        diff = _check(model, example, unchecked) if check else None
        os.replace(unchecked, path)
    finally:
        unchecked.unlink(missing_ok=True)
    return {"path": str(path), "file_bytes": path.stat().st_size, "max_abs_diff": diff}


def _check(model: nn.Module, example: torch.Tensor, file: Path) -> float:
    """The largest difference between onnxruntime's outputs and the model's on ``example``."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.detach().cpu().numpy()})[0]
    with torch.no_grad():
        expected = model(example).detach().cpu().numpy()
    if got.shape != expected.shape:
        raise RunError(f"the ONNX file gives outputs of shape {got.shape}, the model {expected.shape}; not written")
    diff = float(np.abs(got - expected).max()) if expected.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    if not diff <= RELATIVE_TOLERANCE * max(1.0, scale):
        raise RunError(f"the ONNX file does not reproduce the model: outputs differ by {diff:.3g} (scale {scale:.3g}, "
                       f"allowed {RELATIVE_TOLERANCE:g} of it); not written")
    return diff
