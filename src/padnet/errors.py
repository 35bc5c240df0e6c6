"""padnet's errors: one base class, ``PadnetError``, for every problem with the user's input (a config,
data, a model file, a run directory) that the user can fix, so callers and the CLI catch one class.

- ``ConfigError``: a config (YAML file, ``--set``) that does not validate; lists every problem.
- ``DataError``: data files that cannot be read (IDX, images, GLUE TSV); names the file.
- ``ModelFileError``: a model file or checkpoint that cannot be loaded; names the file.
- ``PartitionError``: the partition cannot run on this model / these scoring batches.
- ``UsageError``: a library call with arguments it cannot serve (a ``ValueError`` too).
- ``ModeError``: a layer form asked to run in a mode it cannot serve exactly (trace, export, compile, ...).
- ``RunError``: a run that cannot start or go on (the run directory belongs to something else, is
  locked by another process, holds another run; a non-finite loss; an export that does not reproduce).

The classes that replaced a ``ValueError`` (config, data, model file) still are ``ValueError``s, and the
ones that replaced a ``RuntimeError`` (partition, run) still are ``RuntimeError``s, so code that catches
the built-in classes catches these too. Import them from ``padnet`` or ``padnet.errors``.
"""

from __future__ import annotations

import os

MAX_SHOWN = 200  # characters of a value quoted in a message


def cut(text, limit: int = 300, collapse: bool = True) -> str:
    """``str(text)`` cut to ``limit`` characters, saying how much was cut (a message must never hold a
    huge value: a YAML alias bomb once made a 312 MB one); ``collapse`` first turns every run of
    whitespace into one space, so a library's multi-line message fits one line."""
    text = " ".join(str(text).split()) if collapse else str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def shorten(value, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters (``cut``): how a message quotes a value."""
    return cut(repr(value), limit, collapse=False)


class PadnetError(Exception):
    """Base class of the errors padnet raises for input the user can fix."""


class ConfigError(PadnetError, ValueError):
    """Every problem found in a config, one per line."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        head = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}{where}:"
        super().__init__("\n".join([head] + [f"  - {p}" for p in self.problems]))


class DataError(PadnetError, ValueError):
    """A data file that cannot be used; the message names the file."""


class ModelFileError(PadnetError, ValueError):
    """A model file that cannot be loaded: not a padnet safetensors file, damaged, or not matching."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class UsageError(PadnetError, ValueError):
    """A library call with arguments it cannot serve (a bad value, shape or combination); the message
    names the argument, the value and what is allowed."""


class ModeError(PadnetError, RuntimeError):
    """A layer form asked to run in a mode it cannot serve exactly (a trace, export, compile, device or
    dtype); the message names the mode and the alternative that works."""


class PartitionError(PadnetError, RuntimeError):
    """The partition cannot produce a meaningful mask (all-zero scores, a non-finite loss)."""


class RunError(PadnetError, RuntimeError):
    """A run that cannot start or go on; the message names the run directory or file and the fix."""


class NonFiniteLossError(RunError):
    """The loss became NaN or inf; the run stopped and its last good checkpoint is kept."""


__all__ = ["ConfigError", "DataError", "ModeError", "ModelFileError", "NonFiniteLossError", "PadnetError",
           "PartitionError", "RunError", "UsageError", "cut", "shorten"]
