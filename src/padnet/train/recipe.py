"""Is a run directory's run this recipe? The config a run stored (``config.yaml``, or its checkpoint's)
against the config a command would run now, key by key: ``padnet train`` refuses to resume a different
recipe, and ``padnet sweep`` refuses to report a finished run of an older recipe as current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, cut
from .config import RunConfig, config_from_dict

# Keys that may differ between a run and its resumption without changing its results.
# (Not ``threads``: the number of threads changes the order of float reductions, so the results.)
RESUME_FREE_KEYS = frozenset({"run_dir", "progress", "tensorboard", "log_every", "num_workers", "device"})
STALE = "stale.json"  # a finished run kept with an older recipe (``padnet sweep --keep-stale``)


def recipe_changes(stored: dict, current: RunConfig, source: str | Path) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, current value) for every key but ``RESUME_FREE_KEYS`` that differs."""
    try:
        # Through today's schema, so a key added since (with its default) is not a difference.
        stored = config_from_dict(stored, source=str(source), preflight=False).to_dict()
    except ConfigError:
        pass  # a key removed since, or a value no longer valid: compare as written
    return _changes({k: v for k, v in stored.items() if k not in RESUME_FREE_KEYS},
                    {k: v for k, v in current.to_dict().items() if k not in RESUME_FREE_KEYS})


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    """``"text_classification.text_column 'text' -> 'sentence'"``, comma-separated."""
    return ", ".join(f"{key} {cut(repr(old), 60)} -> {cut(repr(new), 60)}" for key, old, new in changes)


def _changes(a, b, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [c for key in sorted(set(a) | set(b)) for c in _changes(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [(prefix.rstrip("."), a, b)]
