"""User regular expressions on a linear-time engine (RE2).

Python's ``re`` backtracks: a pattern such as ``^(a+)+$`` against a line of 40
``a`` and a ``!`` runs for longer than the universe, holding the GIL, so the
whole agent froze (/metrics, signals, Ctrl-C) until SIGKILL. RE2 (google-re2)
matches in time linear in the line, whatever the pattern; it refuses the few
constructs that cannot be matched that way (backreferences such as ``\\1``,
lookahead and lookbehind), and those get one clear line naming the option.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would also print its own line to stderr


class Pattern:
    """One compiled pattern; ``search`` says whether it occurs in a line."""

    __slots__ = ("_compiled", "text")

    def __init__(self, text: str, compiled: Any) -> None:
        self.text = text
        self._compiled = compiled

    def search(self, line: str) -> bool:
        return self._compiled.search(line) is not None


def compile_pattern(key: str, text: str) -> Pattern:
    """Compile ``text``; a ValueError names ``key`` and says why RE2 refused it."""
    try:
        return Pattern(text, re2.compile(text, options=_OPTIONS))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"{key}: {text!r} cannot be used: {reason} (patterns run on RE2, "
                         f"in linear time: no backreferences, lookahead or lookbehind)"
                         ) from None


def compile_all(name: str, patterns: Sequence[str]) -> list[Pattern]:
    return [compile_pattern(f"{name}[{i}]", text) for i, text in enumerate(patterns)]
