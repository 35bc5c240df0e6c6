"""Plug-ins: modules outside padnet that register tasks (``padnet.train.tasks.register_task``), so that
every command (``train``, ``eval``, ``export``, ``sweep``, ``predict``) can use them without editing padnet.

Three ways to name them:

- in a run config: ``imports: [my_tasks]`` (stored with the run, so ``padnet eval`` / ``export`` of
  that run import it again);
- on the command line: ``padnet train --import my_tasks --config ...`` (repeatable);
- installed packages: an entry point in the group ``padnet.tasks``, e.g. in ``pyproject.toml``::

      [project.entry-points."padnet.tasks"]
      my_task = "my_package.tasks"        # a module whose import registers the task

  An entry point is loaded when its name is asked for (``task: my_task``) or when the known tasks are
  listed; one that points at a callable is called once after it is loaded.

Modules are found on ``sys.path`` plus the current directory (and, for ``imports:``, the config file's
directory), so a ``my_tasks.py`` beside the config works as it is.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from .errors import PadnetError, shorten

ENTRY_POINT_GROUP = "padnet.tasks"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_loaded_entry_points: set[str] = set()


class PluginError(PadnetError, ImportError):
    """A plug-in module that cannot be imported; the message names it and what went wrong."""


def module_problem(name, key: str) -> str | None:
    """Why ``name`` is not a module name (``key`` names where it came from), or None."""
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        return f"{key}={shorten(name)} must be a Python module name such as my_tasks or my_package.tasks"
    return None


def import_plugins(names, search: Sequence[str | Path] = (), key: str = "--import") -> list[str]:
    """Import each module of ``names`` (once; importing registers its tasks).

    Args:
        names: module names, e.g. ``["my_tasks"]``.
        search: directories tried before ``sys.path`` (besides the current directory).
        key: how the caller names the setting, for error messages (``imports``, ``--import``).

    Returns the names imported. Raises ``PluginError`` naming the module and the cause.
    """
    names = list(names or [])
    for name in names:
        problem = module_problem(name, key)
        if problem:
            raise PluginError(problem)
    for directory in [Path.cwd(), *map(Path, search)]:
        text = str(directory.resolve())
        if text not in sys.path:
            sys.path.append(text)  # appended: a plug-in never shadows an installed module
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise PluginError(f"{key}: cannot import plug-in module {name!r} ({err}); it must be on the Python "
                              "path or in the current directory") from err
        except Exception as err:  # the plug-in's own code failed: say which one
            raise PluginError(f"{key}: plug-in module {name!r} failed while importing: "
                              f"{type(err).__name__}: {err}") from err
    return names


def task_entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed ``padnet.tasks`` entry points, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_entry_point(name: str) -> bool:
    """Load the ``padnet.tasks`` entry point ``name`` (once); False when there is none of that name."""
    ep = task_entry_points().get(name)
    if ep is None:
        return False
    if name in _loaded_entry_points:
        return True
    try:
        value = ep.load()
    except Exception as err:
        raise PluginError(f"entry point {name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP}) cannot be loaded: "
                          f"{type(err).__name__}: {err}") from err
    if callable(value):
        value()
    _loaded_entry_points.add(name)
    return True
