"""Typed options from plain mappings (TOML tables, CLI flags) with one-line errors.

Probes, classifier thresholds and the agent config all declare their options
as frozen dataclasses; ``parse_options`` checks a mapping against one and
names the key and the problem. Unknown keys are errors, never ignored.

Field metadata (see ``option_info``) adds ranges. A float field also accepts a
duration string ("500ms", "10s", "2m", "1h") and a ratio field a percentage
string ("30%"); a field named ``*_bits_per_second`` accepts "10mbit",
"1gbit", "5 Mbit/s".

Every number is checked at this edge, before any code does arithmetic with
it: NaN and the infinities are refused (TOML has ``nan`` and ``inf``), and so
are magnitudes no setting means (above ``MAX_MAGNITUDE``; for ``*_seconds``
above a year, or a nonzero value under a microsecond), where a field does not
declare its own range: a NaN interval made the sampling loop spin, a huge
one overflowed ``Event.wait``, a subnormal window overflowed the window
arithmetic.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")

#: Largest number any option takes unless its field says otherwise (1 PB, 1 Pbit/s).
MAX_MAGNITUDE = 1e15
#: Longest and shortest nonzero ``*_seconds`` value unless the field says otherwise.
MAX_SECONDS = 366 * 86400.0
MIN_SECONDS = 1e-6


class OptionError(ValueError):
    """A value does not fit its option. ``key`` is the dotted path to it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def option_info(
    *, min: float | None = None, max: float | None = None, doc: str = ""
) -> dict[str, Any]:
    """Metadata for dataclasses.field(): an inclusive range and a description."""
    return {"min": min, "max": max, "doc": doc}


_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(bit|bps|b)?(?:/s)?\s*$", re.IGNORECASE)
_RATE_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ms|us|µs|ns|h|m|s|d)")
_DURATION_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go/Prometheus duration, the form the reports print
    (docs/units.md): "1m30s" -> 90, "500ms", "2h", "1.5h", "1d"; a bare number is
    seconds. Raises ValueError with the examples."""
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if math.isfinite(value) and value >= 0:
            return value
        if math.isinf(value) and s.lstrip("+").replace(".", "", 1).isdigit():
            # Digits past any float: a number, only too long for anything to wait.
            raise ValueError(f"{text!r} is longer than any duration")
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 10s, 1m30s, 2h)")
    pos, total = 0, 0.0
    compact = s.replace(" ", "")
    while pos < len(compact):
        m = _DURATION_PART.match(compact, pos)
        if m is None:
            break
        total += float(m.group(1)) * _DURATION_SCALE[m.group(2)]
        pos = m.end()
    if not compact or pos != len(compact):
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 10s, 1m30s, 2h)")
    return total


def parse_rate(text: str) -> float:
    """'10mbit' -> 1e7 bits per second; '1gbit', '5 Mbit/s', '2500' also work."""
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a bit rate (examples: 5mbit, 1gbit, 100kbit)")
    return float(m.group(1)) * _RATE_SCALE[m.group(2).lower()]


def parse_bytes(text: str) -> float:
    """'5MB' -> 5e6, '5MiB' -> 5*2**20, '512k' -> 512e3."""
    m = _BYTES.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 512k, 5MB, 2MiB)")
    unit = m.group(2).lower()
    base = 1024.0 if m.group(3) else 1000.0
    power = " kmgt".index(unit) if unit else 0
    return float(m.group(1)) * base**power


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "nothing"
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _float(value: Any, key: str, name: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            return math.inf
    if isinstance(value, str):
        try:
            if name.endswith("bits_per_second"):
                return parse_rate(value)
            if name.endswith("bytes"):
                return parse_bytes(value)
            text = value.strip()
            if text.endswith("%"):
                if not name.endswith("_ratio"):
                    raise ValueError(f"{value!r}: a percentage is only taken by *_ratio keys")
                return float(text[:-1]) / 100.0
            return parse_duration(value)
        except ValueError as exc:
            raise OptionError(key, str(exc)) from None
    raise OptionError(key, f"expected a number, got {value!r}")


def _convert(tp: Any, value: Any, key: str, name: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, name)
            except OptionError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise OptionError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise OptionError(key, f"must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise OptionError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and name.endswith("bytes"):
            try:
                return int(parse_bytes(value))
            except ValueError as exc:
                raise OptionError(key, str(exc)) from None
            except OverflowError:
                raise OptionError(key, f"must be a finite number, got {value!r}") from None
        raise OptionError(key, f"expected an integer, got {value!r}")
    if tp is float:
        number = _float(value, key, name)
        if not math.isfinite(number):
            raise OptionError(key, f"must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise OptionError(key, f"expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise OptionError(key, f"expected a path, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise OptionError(key, f"expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{key}[{i}]", name) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise OptionError(key, f"expected a table, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(vt, v, f"{key}.{k}", str(k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise OptionError(key, f"expected a table, got {value!r}")
        return parse_options(tp, value, prefix=key)
    if tp is Any:
        return value
    raise OptionError(key, f"unsupported option type {tp!r}")  # a bug in a declaration


def _check_number(key: str, name: str, value: float, given: Any, lo: float | None,
                  hi: float | None) -> None:
    """NaN, infinities and absurd magnitudes, before the field's own range."""
    if not math.isfinite(value):
        raise OptionError(key, f"must be a finite number, got {given!r}")
    if hi is None:
        limit = MAX_SECONDS if name.endswith("_seconds") else MAX_MAGNITUDE
        if abs(value) > limit:
            raise OptionError(key, f"must be <= {limit:g}, got {given!r}")
    if name.endswith("_seconds") and value != 0 and abs(value) < MIN_SECONDS and (
            lo is None or lo < MIN_SECONDS):
        raise OptionError(key, f"must be 0 or at least {MIN_SECONDS:g} s, got {given!r}")


def parse_options(cls: type[T], options: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``options``; raise OptionError naming the bad key."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass")
    options = dict(options or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        known = ", ".join(sorted(fields)) or "none"
        raise OptionError(where, f"unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in options:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise OptionError(key, "required key is missing")
            continue
        value = _convert(hints[name], options[name], key, name)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_number(key, name, value, options[name], lo, hi)
            if lo is not None and value < lo:
                raise OptionError(key, f"must be >= {lo}, got {options[name]!r}")
            if hi is not None and value > hi:
                raise OptionError(key, f"must be <= {hi}, got {options[name]!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ cross-field checks
        raise OptionError(prefix, str(exc)) from None


def describe_options(cls: type[Any]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) for each option: used by docs and `probes`."""
    hints = get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("doc", "")))
    return rows
