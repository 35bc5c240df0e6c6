"""Plug-ins: modules outside padnet that register tasks (``padnet.train.tasks.register_task``), so that
every command (``train``, ``eval``, ``export``, ``sweep``, ``predict``) can use them without editing padnet.

A plug-in is code the user chose to run, so padnet imports one only when the user names it:

- a file, named on the command line: ``padnet train --import path/to/my_tasks.py --config ...``
  (repeatable; relative to the current directory, which the user is typing in);
- in a run config the user passes: ``imports: [my_tasks]`` (``my_tasks.py`` beside the config) or
  ``imports: [plugins/my_tasks.py]`` (relative to the config's directory);
- an installed module or package (``--import my_package.tasks``, ``imports: [my_package.tasks]``),
  found in the installed environment only, never in the current directory;
- an installed entry point in the group ``padnet.tasks``, e.g. in ``pyproject.toml``::

      [project.entry-points."padnet.tasks"]
      my_task = "my_package.tasks"        # a module whose import registers the task

  An entry point is loaded when its name is asked for (``task: my_task``) or when the known tasks are
  listed; one that points at a callable is called once after it is loaded.

A stored run's config (``padnet eval`` / ``export`` of a run directory) records its ``imports``, but
they are never looked for beside the run or in the current directory: a run directory copied from
elsewhere could carry code. Installed modules load as usual; a file plug-in must be named again with
``--import path/to/my_tasks.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from .errors import PadnetError, shorten

ENTRY_POINT_GROUP = "padnet.tasks"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_loaded_entry_points: set[str] = set()


class PluginError(PadnetError, ImportError):
    """A plug-in module that cannot be imported; the message names it and what went wrong."""


def is_file_entry(entry) -> bool:
    """Whether a plug-in entry names a file (``path/to/mod.py``) rather than a module."""
    return isinstance(entry, str) and (entry.endswith(".py") or "/" in entry or os.sep in entry)


def module_problem(name, key: str) -> str | None:
    """Why ``name`` is neither a module name nor a ``.py`` file (``key`` names where it came from), or None."""
    if is_file_entry(name):
        stem = Path(name).stem
        if not name.endswith(".py") or not _MODULE_NAME.fullmatch(stem) or "." in stem:
            return f"{key}={shorten(name)} must name a Python file such as plugins/my_tasks.py"
        return None
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        return (f"{key}={shorten(name)} must be a Python module name such as my_package.tasks or a file "
                "such as plugins/my_tasks.py")
    return None


def import_plugins(names, base: str | Path | None = None, key: str = "--import", stored: bool = False) -> list[str]:
    """Import each plug-in of ``names`` once (importing registers its tasks); see the module docstring.

    Args:
        names: entries such as ``"my_package.tasks"`` or ``"plugins/my_tasks.py"``.
        base: the directory a relative file is resolved against, and where a bare ``my_tasks`` is looked
            for as ``my_tasks.py`` first: the config's directory for ``imports:``; None for ``--import``
            (files relative to the current directory; names: installed modules only).
        key: how the caller names the setting, for error messages (``imports``, ``--import``).
        stored: the entries come from a stored run's config: never look for a file; only installed
            modules and plug-ins already imported (named again with ``--import``) are accepted.

    Returns the module names imported. Raises ``PluginError`` naming the plug-in and the cause.
    """
    entries = list(names or [])
    for entry in entries:
        problem = module_problem(entry, key)
        if problem:
            raise PluginError(problem)
    return [_import_one(entry, None if base is None else Path(base), key, stored) for entry in entries]


def _import_one(entry: str, base: Path | None, key: str, stored: bool) -> str:
    if stored:
        name = Path(entry).stem if is_file_entry(entry) else entry
        if name in sys.modules:  # named again with --import (or installed and already imported)
            return name
        if is_file_entry(entry) or _installed_spec(name) is None:
            raise PluginError(f"{key}: this run was trained with plug-in {entry!r}, which is not installed; a stored "
                              "run's plug-in files are never imported from where they lie: name the file again "
                              f"with --import path/to/{name}.py")
        return _guarded(name, key, lambda: importlib.import_module(name))
    if is_file_entry(entry):
        file = Path(entry) if base is None or Path(entry).is_absolute() else base / entry
    elif base is not None and "." not in entry and (base / f"{entry}.py").is_file():
        file = base / f"{entry}.py"  # imports: [my_tasks] with my_tasks.py beside the config
    else:
        if entry not in sys.modules and _installed_spec(entry) is None:
            where = f"no {base / (entry + '.py')} beside the config and " if base and "." not in entry else ""
            raise PluginError(f"{key}: cannot import plug-in module {entry!r}: {where}no installed module of that "
                              f"name (the current directory is never searched); name a file with "
                              f"--import path/to/{entry.split('.')[-1]}.py")
        return _guarded(entry, key, lambda: importlib.import_module(entry))
    name = file.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        if origin is not None and Path(origin).resolve() == file.resolve():
            return name
        raise PluginError(f"{key}: plug-in file {file} would be module {name!r}, which is already imported from "
                          f"{origin or 'elsewhere'}; rename the file")
    return _guarded(name, key, lambda: _load_file(name, file))


def _load_file(name: str, file: Path) -> None:
    if not file.is_file():
        raise ImportError(f"no file {file}")
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{file} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _guarded(name: str, key: str, load) -> str:
    """Run ``load``; every way a plug-in's import can fail becomes one ``PluginError`` naming it."""
    try:
        with _without_current_directory():
            load()
    except SystemExit as err:  # a plug-in must not end the command, successfully or not
        raise PluginError(f"{key}: plug-in {name!r} exited while being imported (SystemExit: {err.code!r})") from None
    except ImportError as err:
        raise PluginError(f"{key}: cannot import plug-in module {name!r} ({err})") from err
    except Exception as err:  # the plug-in's own code failed: say which one
        raise PluginError(f"{key}: plug-in module {name!r} failed while importing: "
                          f"{type(err).__name__}: {err}") from err
    return name


def _installed_spec(name: str):
    """The spec of ``name`` in the installed environment (the current directory left out), or None."""
    try:
        with _without_current_directory():
            return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def _without_current_directory() -> Iterator[None]:
    """``sys.path`` without the current directory ('' and '.', which ``python -m`` adds, or its path)
    while a plug-in is found or imported: nothing comes from where the user happens to stand."""
    cwd = os.getcwd()
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if p not in ("", ".") and os.path.abspath(p) != cwd]
    try:
        yield
    finally:  # what the plug-in itself added stays
        sys.path[:] = saved + [p for p in sys.path if p not in saved]


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
