"""A small reader of the Prometheus text exposition format (0.0.4, and the parts of
OpenMetrics that model servers emit), and window quantities from histogram deltas.

The probe layer may not import prometheus_client (STYLE.md layering, checked by
ruff and tests/test_layering.py), and its parser would buy little here: the
engine probe needs sample names, label sets and values, which this reads in a
hundred lines. A line that does not parse is counted and skipped, never fatal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*\"")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}

Labels = Mapping[str, str]


@dataclass
class Exposition:
    """Every sample of one scrape: sample name -> [(labels, value)], and the
    declared type of each metric family (``# TYPE`` lines)."""

    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    bad_lines: int = 0

    def names(self) -> Iterable[str]:
        return self.samples.keys()

    def sum(self, name: str) -> float | None:
        """The sum over every label set (requests of all models on one server);
        None when the series is absent or carries no finite value."""
        values = [v for _, v in self.samples.get(name, ()) if math.isfinite(v)]
        return math.fsum(values) if values else None

    def max(self, name: str) -> float | None:
        values = [v for _, v in self.samples.get(name, ()) if math.isfinite(v)]
        return max(values) if values else None

    def histogram(self, name: str) -> Histogram | None:
        """Histogram ``name`` (its _bucket, _sum and _count series) summed over label
        sets other than ``le``; None when it has no buckets or no count."""
        buckets: dict[float, float] = {}
        for labels, value in self.samples.get(name + "_bucket", ()):
            try:
                le = float(labels["le"])
            except (KeyError, ValueError):
                continue
            buckets[le] = buckets.get(le, 0.0) + value
        count = self.sum(name + "_count")
        if count is None and math.inf in buckets:
            count = buckets[math.inf]
        total = self.sum(name + "_sum")
        if count is None or total is None:
            return None
        return Histogram(tuple(sorted(buckets.items())), total, count)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts (upper bound, count), ascending, and the sum and count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def since(self, before: Histogram | None) -> Histogram | None:
        """The observations made since ``before`` (None: no baseline yet). A count
        that went down is a restarted server: everything now counted is new."""
        if before is None:
            return None
        if self.count < before.count or self.sum < before.sum:
            return self
        old = dict(before.buckets)
        if any(count < old.get(le, 0.0) for le, count in self.buckets):
            return self
        return Histogram(tuple((le, count - old.get(le, 0.0)) for le, count in self.buckets),
                         self.sum - before.sum, self.count - before.count)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Quantile ``q`` by linear interpolation inside the bucket that holds it, as
        Prometheus' histogram_quantile(); a rank in the +Inf bucket answers the
        largest finite bound. None without observations or buckets."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for le, count in self.buckets:
            if count >= rank:
                if math.isinf(le):
                    return lower_bound if lower_bound > 0 else None
                if count == lower_count:
                    return le
                lower = lower_bound if lower_bound < le else 0.0
                return lower + (le - lower) * (rank - lower_count) / (count - lower_count)
            lower_bound, lower_count = le, count
        return lower_bound


def parse(text: str) -> Exposition:
    out = Exposition()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                out.types[parts[2]] = parts[3].strip().lower()
            continue
        parsed = _sample(line)
        if parsed is None:
            out.bad_lines += 1
            continue
        name, labels, value = parsed
        out.samples.setdefault(name, []).append((labels, value))
    return out


def _sample(line: str) -> tuple[str, dict[str, str], float] | None:
    m = _NAME.match(line)
    if m is None:
        return None
    name, pos = m.group(0), m.end()
    labels: dict[str, str] = {}
    if pos < len(line) and line[pos] == "{":
        parsed = _labels(line, pos + 1)
        if parsed is None:
            return None
        labels, pos = parsed
    rest = line[pos:].split(" # ", 1)[0].split()  # an OpenMetrics exemplar follows " # "
    if not rest or len(rest) > 2:
        return None
    try:
        value = float(rest[0])
    except ValueError:
        return None
    return name, labels, value


def _labels(line: str, pos: int) -> tuple[dict[str, str], int] | None:
    """Label pairs from just after '{' to the matching '}'; the position after it."""
    labels: dict[str, str] = {}
    while True:
        while pos < len(line) and line[pos] in " ,":
            pos += 1
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        m = _LABEL_NAME.match(line, pos)
        if m is None:
            return None
        pos = m.end()
        value: list[str] = []
        while pos < len(line) and line[pos] != '"':
            if line[pos] == "\\" and pos + 1 < len(line):
                value.append(_ESCAPES.get(line[pos + 1], "\\" + line[pos + 1]))
                pos += 2
            else:
                value.append(line[pos])
                pos += 1
        if pos >= len(line):
            return None
        labels[m.group(1)] = "".join(value)
        pos += 1
