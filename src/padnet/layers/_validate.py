"""Argument checks shared by the layers: every bad value names itself and what is allowed.

The ``*_problem`` forms return the message (or None) so that a config can list every problem at once;
the ``check_*`` forms raise it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UsageError, shorten


def choice_problem(name: str, value, allowed: Iterable) -> str | None:
    allowed = tuple(allowed)
    if value in allowed:
        return None
    return f"{name}={shorten(value)} is not supported; allowed: {', '.join(map(repr, allowed))}"


def int_problem(name: str, value, minimum: int = 1) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"{name}={shorten(value)} must be an integer >= {minimum}"
    return None


def check_choice(name: str, value, allowed: Iterable) -> None:
    problem = choice_problem(name, value, allowed)
    if problem:
        raise UsageError(problem)


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    problem = int_problem(name, value, minimum)
    if problem:
        raise UsageError(problem)


IntPair = int | tuple[int, ...]  # a conv size, stride, padding or dilation: both sides, or (h, w) (pair checks)


def pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair."""
    values = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != 2:
        raise UsageError(f"{name}={value!r} must be an int or a pair of ints")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise UsageError(f"{name}={value!r} must hold integers >= {minimum}")
    return values
