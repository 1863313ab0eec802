"""Colour and width for text meant for a terminal.

Colour follows the usual conventions: ``--color=always`` and ``never`` say so
outright; ``auto`` colours only a terminal, and not when NO_COLOR is set to
anything non-empty (no-color.org) or TERM is "dumb". The width is the
terminal's (COLUMNS first, as shutil reads it), 80 on a pipe.

Hand-written on purpose (a few SGR codes and textwrap): the report needs five
colours, fixed-column tables and wrapping, and snapshot tests that do not move
with a rendering library's version.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import IO

MIN_WIDTH = 40
_SGR = re.compile(r"\x1b\[[0-9;]*m")


class ColorMode(StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


def use_color(mode: ColorMode | str, stream: IO[str],
              env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    mode = ColorMode(mode)
    if mode is ColorMode.ALWAYS:
        return True
    if mode is ColorMode.NEVER or env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def terminal_width(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("COLUMNS", "")
    if raw.isdigit() and int(raw) > 0:
        return max(MIN_WIDTH, int(raw))
    return max(MIN_WIDTH, shutil.get_terminal_size((80, 24)).columns)


#: Colour per label: red for the hard limits, yellow for the soft ones.
LABEL_COLORS = {"gpu_bound": "1;31", "vram_bound": "1;35", "network_bound": "1;33",
                "cpu_bound": "1;36", "balanced": "1;32", "idle": "2", "unknown": "1;37"}
# (plain names: this module loads without the classifier; test_report checks the set)


class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def _sgr(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and text else text

    def bold(self, text: str) -> str:
        return self._sgr("1", text)

    def dim(self, text: str) -> str:
        return self._sgr("2", text)

    def warn(self, text: str) -> str:
        return self._sgr("33", text)

    def label(self, label: str, text: str | None = None) -> str:
        return self._sgr(LABEL_COLORS.get(label, "1"), label if text is None else text)


def visible_len(text: str) -> int:
    return len(_SGR.sub("", text))


def wrap(text: str, width: int, indent: str = "", hang: str | None = None) -> list[str]:
    """Wrap plain text to ``width`` columns; continuation lines indent by ``hang``."""
    hang = indent + "  " if hang is None else hang
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=hang,
                         break_long_words=True, break_on_hyphens=False) or [indent.rstrip()]


def clip(text: str, width: int) -> str:
    """Cut plain text to ``width`` columns, marking the cut with "~"."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "~"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], width: int,
          indent: str = "  ", shrink: int = 0) -> list[str]:
    """Columns sized to their content; when the table is wider than ``width`` the
    column at index ``shrink`` (a name or a URL) is cut to fit."""
    cols = len(header)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(cols)]
    total = len(indent) + sum(widths) + 2 * (cols - 1)
    if total > width:
        widths[shrink] = max(4, widths[shrink] - (total - width))
    out = []
    for r in [header, *rows]:
        cells = [clip(str(c), widths[i]) for i, c in enumerate(r)]
        line = indent + "  ".join(c.ljust(widths[i]) if i < cols - 1 else c
                                  for i, c in enumerate(cells))
        out.append(clip(line.rstrip(), width))
    return out
