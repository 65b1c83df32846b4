"""Typed reading of a rule's `params` and `selector` mappings, shared by every rule kind.

Each kind states its keys with defaults in its __init__ and ends with done(), so a typo'd key is an
error at start rather than a silently ignored setting. Errors are ValueError('<key>: <what>'), the
shape the pipeline loader turns into 'file:line: rules[i].params.<key>: <what>'.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, overload

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any, *, positive: bool = False) -> float:
    """Seconds from a number or a string like '30s', '5m', '1h'; ValueError on anything else."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds is None:
        raise ValueError(f"expected a duration (seconds, or a string like '30s', '5m', '1h'), got {value!r}")
    if positive and seconds <= 0:
        raise ValueError(f"expected a duration > 0, got {value!r}")
    return seconds


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Params:
    """One mapping of a rule's settings; each getter consumes a key, done() rejects the rest."""

    def __init__(self, given: Mapping[str, Any], prefix: str = "") -> None:
        self._given = dict(given)
        self._prefix = prefix  # "selector." for selector keys, "" for params
        self._known: list[str] = []

    def _take(self, key: str) -> Any:
        self._known.append(key)
        return self._given.pop(key, None)

    def _error(self, key: str, message: str) -> ValueError:
        return ValueError(f"{self._prefix}{key}: {message}")

    def number(self, key: str, default: float | None, *, minimum: float | None = None,
               maximum: float | None = None) -> float:
        value = self._take(key)
        if value is None:
            if default is None:
                raise self._error(key, "required (a number)")
            return default
        if not _is_number(value):
            raise self._error(key, f"expected a number, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"{'' if minimum is None else minimum}..{'' if maximum is None else maximum}"
            raise self._error(key, f"expected a number in {bounds}, got {value!r}")
        return float(value)

    def positive_int(self, key: str, default: int) -> int:
        value = self._take(key)
        if value is None:
            return default
        if type(value) is not int or value < 1:
            raise self._error(key, f"expected a positive integer, got {value!r}")
        return value

    def count(self, key: str, default: int | None) -> int | None:
        """A non-negative integer (a rank, a counter threshold); None allowed as the default."""
        value = self._take(key)
        if value is None:
            return default
        if type(value) is not int or value < 0:
            raise self._error(key, f"expected an integer >= 0, got {value!r}")
        return value

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self._take(key)
        if value is None:
            return default
        try:
            return parse_duration(value, positive=positive)
        except ValueError as exc:
            raise self._error(key, str(exc)) from None

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        value = self._take(key)
        if value is None:
            return default
        if value not in options:
            raise self._error(key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._take(key)
        if value is None:
            return default
        if type(value) is not bool:
            raise self._error(key, f"expected true or false, got {value!r}")
        return value

    @overload
    def name(self, key: str, default: str) -> str: ...
    @overload
    def name(self, key: str, default: None) -> str | None: ...

    def name(self, key: str, default: str | None) -> str | None:
        """A metric or figure name."""
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self._error(key, f"expected a name, got {value!r}")
        return value

    def names(self, key: str, *, options: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
        """A list of names (a single name is accepted); None when absent."""
        value = self._take(key)
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
            raise self._error(key, f"expected a name or a non-empty list of names, got {value!r}")
        if options is not None:
            unknown = [i for i in items if i not in options]
            if unknown:
                raise self._error(key, f"unknown {', '.join(map(repr, unknown))} (known: {', '.join(options)})")
        return tuple(items)

    def done(self) -> None:
        """Reject keys no getter asked for."""
        if self._given:
            key = next(iter(self._given))
            known = ", ".join(self._known) or "none"
            raise self._error(str(key), f"unknown key (known: {known})")
