"""Settings on pydantic v2, reported as padnet reports every problem: one line naming the key, the value
and what is allowed, and every problem of a config in one message.

``Section`` is a group of settings (unknown keys refused, values taken as written); ``one_of`` a choice
among names a registry may extend; ``refuse`` reports the rules pydantic cannot state (across keys);
``fields_of`` gives a plain dataclass's fields, bounds included, to ``pydantic.create_model``; ``validate``
builds a model and adds each of its problems to a list; ``did_you_mean`` names the key a typo is close to.
The run config (``padnet.train.config``) and the conversion settings (``padnet.layers.settings``) are both
built on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from .errors import shorten

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A group of settings (a run config's section, ``padnet.convert``'s keywords): unknown keys refused,
    values taken as written (no "3" for 3, no 3.0 for 3, no "yes" for true; an int is a fine float), every
    number finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def refuse(problems: list[str]) -> None:
    """Report what pydantic cannot state (rules across keys, a task's own checks), each line as written."""
    if problems:
        raise PydanticCustomError("padnet", "{problems}", {"problems": problems})


def one_of(allowed: Iterable[str] | Callable[[], Iterable[str]]) -> AfterValidator:
    """A choice among ``allowed``; a callable is asked at validation time (a registry that plug-ins extend)."""
    def check(value: str) -> str:
        names = tuple(allowed() if callable(allowed) else allowed)
        if value not in names:
            raise PydanticCustomError("choice", "is not supported; allowed: {names}",
                                      {"names": ", ".join(map(repr, names))})
        return value
    check.allowed = allowed  # type: ignore[attr-defined]  # for padnet config --explain
    return AfterValidator(check)


def fields_of(cls: type) -> dict[str, Any]:
    """The fields of dataclass ``cls`` (types, defaults) as pydantic field definitions."""
    hints = typing.get_type_hints(cls, include_extras=True)  # with the bounds of Annotated[int, Field(ge=1)]
    return {f.name: (hints[f.name], f.default if f.default_factory is dataclasses.MISSING else
                     Field(default_factory=f.default_factory)) for f in dataclasses.fields(cls)}


def optional_member(annotation):
    """``X`` for ``X | None``; any other annotation as it is."""
    members = typing.get_args(annotation)
    if len(members) == 2 and type(None) in members:
        return next(m for m in members if m is not type(None))
    return annotation


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """`` (did you mean width?)`` for a key ``name`` close to one of ``allowed`` (a typo: widht), else ``""``."""
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def problems_of(error: ValidationError, model: type[BaseModel], section: str = "",
                extra_keys: Iterable[str] = ()) -> tuple[list[str], list[tuple]]:
    """A line for each of pydantic's errors (``model`` validating the section ``section``) naming the key,
    the value given and what is allowed; and the locations of the keys at fault."""
    out: dict[str, str] = {}  # a line by the key (or the problem) it is about
    paths = []
    for e in error.errors():
        loc, n = e["loc"], 0
        hint: Any = model
        while n < len(loc):  # not list indices, union members
            hint = optional_member(hint)  # an optional section (ema): the section
            if loc[n] not in getattr(hint, "model_fields", {}):
                break
            hint, n = hint.model_fields[loc[n]].annotation, n + 1
        key = ".".join(map(str, (section, *loc[:n]) if section else loc[:n]))
        at = key + "".join(f"[{p}]" for p in loc[n:] if isinstance(p, int))
        text = e["msg"].replace("Input should be", "must be").replace("List should have", "must have").replace(
            " after validation", "")
        if e["type"] == "literal_error":  # worded as every other choice (one_of, padnet.convert's)
            text = f"is not supported; allowed: {', '.join(map(repr, typing.get_args(hint)))}"
        if e["type"] == "padnet":
            out.update({problem: problem for problem in e["ctx"]["problems"]})
        elif e["type"] == "extra_forbidden":
            paths.append(loc)
            unknown = ".".join(map(str, (section, *loc) if section else loc))
            allowed = [*hint.model_fields, *(() if n else extra_keys)]
            out[unknown] = (f"unknown key {shorten(unknown)}{did_you_mean(str(loc[-1]), allowed)}; "
                            f"allowed keys{' in ' + key if key else ''}: {', '.join(allowed)}")
        elif at in out:  # another member of a union
            out[at] += " or " + text.removeprefix("must be ")
        else:
            paths.append(loc[:n])
            value = shorten(None if e["type"] == "missing" else e["input"])
            out[at] = f"{at}={value}{' ' if text[0].islower() else ': '}{text}"
    return list(out.values()), paths


def validate(model: type[M], raw, problems: list[str], section: str = "", extra_keys: Iterable[str] = ()) -> M | None:
    """``model`` from ``raw``, every problem added to ``problems``. The rules across keys (a section's
    validators, a task's ``problems()``) run once a section's keys are valid; so that one message lists
    every problem, a ``raw`` with bad keys is validated again without them, defaults in their place, and
    that model is returned (for the task's pre-flight check; None when even it cannot be built)."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        found, paths = problems_of(err, model, section, extra_keys)
    problems.extend(found)
    if not (isinstance(raw, dict) and paths and all(paths)):
        return None
    rest = dict(raw)
    for path in paths:  # drop each bad key, copying the dicts on its way (raw stays as it is)
        node = rest
        for part in path[:-1]:
            node[part] = node = dict(node[part])
        node.pop(path[-1], None)
    try:
        return model.model_validate(rest)
    except ValidationError as err:
        problems.extend(p for e in err.errors() if e["type"] == "padnet" for p in e["ctx"]["problems"]
                        if p not in problems)
    return None


__all__ = ["Section", "did_you_mean", "fields_of", "one_of", "optional_member", "problems_of", "refuse", "validate"]
