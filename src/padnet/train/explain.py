"""Every run-config key in one line each, from the config schema itself: ``padnet config --explain
[KEY]`` and the reference page ``docs/config.md`` (``python -m padnet config --explain --markdown``).

A key's type, default and bounds come from its declaration (a pydantic field or a task section's
dataclass field); its sentence from the comment written beside the declaration (or on the lines just
above it), so the reference cannot drift from the code that reads the key."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import re
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..errors import UsageError
from ..validation import optional_member
from .config import RunConfig
from .tasks import get_task, known_tasks


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, as in --set
    type: str
    default: Any
    allowed: str  # choices or bounds, "" when any value of the type
    doc: str
    task: str | None = None  # the task that adds the key's section; None for every run's keys


def config_keys(tasks: list[str] | None = None) -> list[KeyDoc]:
    """The keys of every run, then each task's sections (``tasks``: these tasks; default: every known one)."""
    out = list(_walk(RunConfig, ""))
    for task in tasks if tasks is not None else sorted(known_tasks()):
        for name, cls in get_task(task).sections.items():
            out += [dataclasses.replace(k, task=task) for k in _walk(cls, f"{name}.")
                    if not any(o.key == k.key for o in out)]
    return out


def explain(key: str | None = None) -> list[KeyDoc]:
    """The key named (a section gives all of its keys), or every key; ``UsageError`` for an unknown one."""
    keys = config_keys()
    if key is None:
        return keys
    found = [k for k in keys if k.key == key or k.key.startswith(key + ".")]
    if not found:
        names = [k.key for k in keys]  # a typo (optim.lrr), else keys holding the name (lr: optim.lr, ...)
        near = (difflib.get_close_matches(key, names, n=3, cutoff=0.8)
                or [n for n in names if key.split(".")[-1] in n][:8])
        raise UsageError(f"no config key {key!r}" + (f"; did you mean {', '.join(near)}?" if near else
                                                     "; padnet config --explain lists every key"))
    return found


def text(keys: list[KeyDoc]) -> str:
    """One line a key: ``key (type, default D; allowed): sentence``."""
    return "\n".join(f"{k.key} ({k.type}, default {_show(k.default)}{'; ' + k.allowed if k.allowed else ''}"
                     f"{'; task ' + k.task if k.task else ''}){': ' + k.doc if k.doc else ''}" for k in keys)


def markdown(keys: list[KeyDoc]) -> str:
    """The reference page: one table for every run's keys, one per task."""
    lines = ["# Run config reference", "",
             "Every key of a run config, generated from the config schema by "
             "`python -m padnet config --explain --markdown` (a test checks this page against it). Set a key in "
             "the YAML file or on the command line with `--set key=value`; `padnet config --explain KEY` prints "
             "one key (or a section's keys).", ""]
    for task in [None, *dict.fromkeys(k.task for k in keys if k.task)]:
        lines += [f"## {'Every run' if task is None else 'task: ' + task}", "",
                  "| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in (
            f"`{k.key}`", k.type, f"`{_show(k.default)}`", k.allowed, k.doc)) + " |" for k in keys if k.task == task]
        lines.append("")
    return "\n".join(lines)


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) \
        if isinstance(value, str) else str(value)


def _walk(cls: type, prefix: str):
    comments = _comments(cls)
    for name, annotation, default, metadata in _fields(cls):
        inner = _section_type(annotation)
        if inner is not None:
            if inner is not annotation:  # an optional section (``ema``): null leaves it off
                yield KeyDoc(f"{prefix}{name}", _type_name(annotation), default, "", comments.get(name, ""))
            yield from _walk(inner, f"{prefix}{name}.")
            continue
        yield KeyDoc(f"{prefix}{name}", _type_name(annotation), default, _allowed(annotation, metadata),
                     comments.get(name, ""))


def _fields(cls: Any):
    """(name, annotation, default, constraint metadata) of a pydantic model's or a dataclass's fields."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        for name, info in cls.model_fields.items():
            yield name, info.annotation, info.get_default(call_default_factory=True), info.metadata
    else:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            yield f.name, hints[f.name], default, []


def _section_type(annotation) -> type | None:
    """The section class ``annotation`` holds (alone, or with None); None for a plain value."""
    annotation = optional_member(annotation)
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)):
        return annotation
    return None


def _type_name(annotation) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(args[0])
    if typing.get_origin(annotation) is Literal:  # the type of its values: str, or int for Literal[1, 3]
        return " | ".join(dict.fromkeys(type(a).__name__ for a in typing.get_args(annotation)))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        names = " | ".join(_type_name(a) for a in args)
        return names + (" | null" if type(None) in typing.get_args(annotation) else "")
    if typing.get_origin(annotation) is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}


def _allowed(annotation, metadata) -> str:
    """Literal choices and the bounds pydantic checks, found in the annotation and its metadata."""
    items = [*metadata, *_annotated_metadata(annotation)]
    bounds = {attr: value for item in items for attr in _BOUNDS if (value := getattr(item, attr, None)) is not None}
    signs = dict(_BOUNDS)
    if "min_length" in bounds and bounds["min_length"] == bounds.get("max_length"):  # as short as it is long
        del bounds["max_length"]
        signs["min_length"] = "length"
    out = [f"{signs[attr]} {value}" for attr, value in bounds.items()]
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    if typing.get_origin(base) is list and typing.get_args(base):
        each = _allowed(typing.get_args(base)[0], [])
        out += [f"each {each}"] if each else []
    choices = _literal(annotation) or next((_names(getattr(item.func, "allowed"))
                                             for item in items if hasattr(getattr(item, "func", None), "allowed")), ())
    if choices:
        out.insert(0, "one of " + ", ".join(map(repr, choices)))
    return ", ".join(out)


def _names(allowed) -> tuple:
    return tuple(allowed() if callable(allowed) else allowed)


def _annotated_metadata(annotation) -> list:
    """The metadata of ``annotation`` and of its union members (``Annotated[int, Field(ge=1)] | None``),
    with a ``Field(...)`` given there as the constraints it holds."""
    out = []
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for arg in (annotation, *(typing.get_args(annotation) if union else ())):
        if typing.get_origin(arg) is typing.Annotated:
            out += [m for item in arg.__metadata__ for m in (item.metadata if isinstance(item, FieldInfo) else [item])]
    return out


def _literal(annotation) -> tuple:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        found = _literal(arg)
        if found:
            return found
    return ()


_FIELD = re.compile(r"^    ([A-Za-z_][A-Za-z0-9_]*)\s*:")  # a class-body declaration (4 spaces in)


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment beside its declaration, or the comment lines just above it, in ``cls``
    and the classes it inherits from (the nearest declaration wins), after those it names as the
    sources of fields it was given (``padnet_field_sources``: ``DynamicConfig`` has padnet.convert's)."""
    out: dict[str, str] = {}
    for klass in [*getattr(cls, "padnet_field_sources", ()), *reversed(getattr(cls, "__mro__", (cls,)))]:
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        above: list[str] = []
        trailing: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                trailing[tok.start[0]] = tok.string.lstrip("#").strip()
        for number, line in enumerate(source.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("#").strip())
                continue
            match = _FIELD.match(line)
            if match:
                out[match.group(1)] = trailing.get(number) or " ".join(above) or out.get(match.group(1), "")
            above = []
    return out
