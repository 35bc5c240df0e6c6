"""The padnet record: the JSON a model file's ``"padnet"`` metadata key holds. ``model_record`` writes it
from a model; ``parse_record`` reads it back, checking that every field has the type ``save`` writes and
that every size in it is within bounds before anything is built from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from .._version import __version__
from ..arch import detect_arch
from ..data.transforms import predict_record_problem
from ..errors import ModelFileError, UsageError, cut
from ..layers.protocol import DYNAMIC_LAYERS, DeployedPartiallyDynamic, PartiallyDynamic

FORMAT = "padnet"  # also the metadata key the record is stored under
FORMAT_VERSION = 1
FORMS = ("plain", "training", "deployed")
MAX_RECORD_INT = 2**22  # no size in a record is larger (a vocabulary, a position table: far smaller)
MAX_RECORD_NODES = 100_000
MAX_RECORD_DEPTH = 16
# Sizes a record can set, bounded before anything is built (a 5.5 KB file once asked for
# num_classes 400000, num_kernels 10**7 or layers [10**6]).
SIZE_LIMITS = {
    "num_classes": 100_000, "num_labels": 100_000, "in_channels": 4096, "width": 4096, "num_kernels": 64,
    "num_experts": 1024, "top_k": 1024, "reduction": 4096, "num_hidden_layers": 256, "num_attention_heads": 1024,
    "hidden_size": 65_536, "intermediate_size": 262_144, "vocab_size": 1_048_576, "max_position_embeddings": 1_048_576,
}
MAX_STAGES, MAX_BLOCKS = 8, 64  # padnet.small_resnet's layers: [blocks per stage]


# ----------------------------------------------------------------------------- write
def model_record(model: nn.Module, arch: dict | None) -> dict:
    """The record of ``model``: how to rebuild it (``arch``, or the model's own) and which form it is in."""
    config = getattr(model, "padnet_config", None)
    if arch is None:  # a converted model was looked at by convert, before its modules changed
        arch = getattr(model, "padnet_arch", None) if config is not None else detect_arch(model)
    deployed = [n for n, m in model.named_modules() if isinstance(m, DeployedPartiallyDynamic)]
    if deployed and any(isinstance(m, PartiallyDynamic) for m in model.modules()):
        raise UsageError("the model mixes deployed and training-form PAD layers; deploy() all of them before save")
    if any(isinstance(m, DYNAMIC_LAYERS) for m in model.modules()) and config is None:
        raise UsageError("the model has padnet layers but no model.padnet_config; build it with padnet.convert")
    temperatures = {
        n: float(m.temperature) for n, m in model.named_modules()
        if hasattr(m, "temperature") and hasattr(m, "attention") and float(m.temperature) != 1.0
    }

    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "padnet_version": __version__,
        "arch": arch,
        "padnet_config": config,
        "form": "deployed" if deployed else ("training" if config is not None else "plain"),
        "compacted": [n for n, m in model.named_modules() if isinstance(m, PartiallyDynamic) and m.compacted],
        "temperatures": temperatures,
    }
    predict = getattr(model, "padnet_predict", None)
    if predict is not None:  # what prediction needs (task, label names, preprocessing or tokenizer): padnet.predict
        record["predict"] = predict
    return record


# ----------------------------------------------------------------------------- read
def parse_record(path: Path, metadata: dict[str, str] | None) -> dict:
    """The padnet record in a safetensors file's ``metadata`` (its ``__metadata__``), of this format and
    version, every field checked (``check_record``). Raises only ``ModelFileError``."""
    if not metadata or FORMAT not in metadata:
        raise ModelFileError(path, "a safetensors file without padnet metadata (not written by padnet.save)")
    try:
        record = json.loads(metadata[FORMAT])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(path, f"corrupted padnet metadata ({cut(exc)})") from None
    if not isinstance(record, dict):
        raise ModelFileError(path, f"corrupted padnet metadata (a JSON {type(record).__name__}, not an object)")
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            path, f"unsupported format {cut(repr(record.get('format')), 80)} version "
            f"{cut(repr(record.get('format_version')), 80)}; this padnet reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    check_record(path, record)
    return record


def check_record(path: Path, record: dict) -> None:
    """The record's fields have the types ``save`` writes and every size in it is within bounds."""
    def bad(problem):
        return ModelFileError(path, f"malformed padnet record: {problem}")

    arch = record.get("arch")
    if arch is not None:
        if not (isinstance(arch, dict) and isinstance(arch.get("name"), str) and 0 < len(arch["name"]) <= 200
                and isinstance(arch.get("kwargs", {}), dict)):
            raise bad(f"arch={cut(repr(arch), 200)} must be {{'name': str, 'kwargs': {{...}}}}")
    config = record.get("padnet_config")
    if config is not None and not isinstance(config, dict):
        raise bad(f"padnet_config must be a mapping; got {type(config).__name__}")
    if record.get("form", "plain") not in FORMS:
        raise bad(f"form={cut(repr(record.get('form')), 80)}; allowed: {', '.join(FORMS)}")
    compacted = record.get("compacted", [])
    if not (isinstance(compacted, list) and all(isinstance(n, str) for n in compacted)):
        raise bad("compacted must be a list of layer names")
    temperatures = record.get("temperatures", {})
    if not (isinstance(temperatures, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in temperatures.values())):
        raise bad("temperatures must map layer names to finite numbers > 0")
    predict = record.get("predict")
    if predict is not None:
        problem = predict_record_problem(predict)
        if problem:
            raise bad(problem)
    nodes = [0]
    for where, value in (("arch", arch), ("padnet_config", config), ("predict", predict)):
        problem = _bounded(value, where, 0, nodes)
        if problem:
            raise bad(problem)


def _bounded(value, where: str, depth: int, nodes: list[int]) -> str | None:
    """The first size in ``value`` past its bound (``SIZE_LIMITS``, ``MAX_RECORD_INT``), or None."""
    nodes[0] += 1
    if depth > MAX_RECORD_DEPTH or nodes[0] > MAX_RECORD_NODES:
        return f"{where}: nested deeper than {MAX_RECORD_DEPTH} levels or more than {MAX_RECORD_NODES} values"
    key = where.rsplit(".", 1)[-1]
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        limit = SIZE_LIMITS.get(key, MAX_RECORD_INT)
        if abs(value) > limit:
            return f"{where}={cut(value, 40)} is larger than padnet allows ({limit:,})"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) or key.endswith("eps") else f"{where}={value} is not finite"
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _bounded(v, f"{where}.{k}", depth + 1, nodes)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        if key == "layers" and (len(value) > MAX_STAGES or any(isinstance(v, int) and v > MAX_BLOCKS for v in value)):
            return f"{where}={cut(value, 80)}: at most {MAX_STAGES} stages of at most {MAX_BLOCKS} blocks"
        for v in value:
            problem = _bounded(v, f"{where}", depth + 1, nodes)
            if problem:
                return problem
        return None
    if isinstance(value, str):
        return None if len(value) <= 100_000 else f"{where}: a string of {len(value):,} characters"
    return f"{where}: unexpected {type(value).__name__}"
