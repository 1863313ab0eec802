"""The OOM / load-failure watcher: the hard signal that a GPU is too small.

"VRAM at 100%" is normal for servers that reserve memory up front; an
out-of-memory error or a model that fails to load is not. This probe follows
the log files and systemd units it is given (probes/logtail.py: tail, never
re-read) and counts the lines that match two sets of patterns:

- ``oom``: the GPU ran out of memory (PyTorch's "CUDA out of memory" and
  ``OutOfMemoryError``, vLLM's "No available memory for the cache blocks",
  CUDA/cuBLAS allocation failures);
- ``load_failure``: a model failed to load.

A line counts once, even when it matches several patterns; a line that
matches both sets counts as ``oom``, the more specific cause ("Failed to load
model: CUDA out of memory" is an OOM). One incident can log several matching
lines (a traceback and its summary); the counts are lines, not incidents.

One sample per source per call (label ``source``: the file path, or
``journal:<unit>``): ``oom_events`` and ``load_failure_events`` since the
previous sample, and ``*_total`` since the probe started. A source that
cannot be read is a failed sample with the reason; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    failed,
    one_line,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.logtail import FileFollower, JournalError, JournalFollower
from ai_bottleneck.probes.patterns import compile_all
from ai_bottleneck.probes.vocabulary import (
    LOAD_FAILURE_EVENTS,
    LOAD_FAILURE_EVENTS_TOTAL,
    OOM_EVENTS,
    OOM_EVENTS_TOTAL,
)

NAME = "oom"

DEFAULT_OOM_PATTERNS: tuple[str, ...] = (
    r"CUDA out of memory",
    r"OutOfMemoryError",  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError, and others
    r"No available memory for the cache blocks",  # vLLM at start-up
    r"CUDA error: out of memory",
    r"CUBLAS_STATUS_ALLOC_FAILED",
    r"cudaErrorMemoryAllocation",
)
DEFAULT_LOAD_FAILURE_PATTERNS: tuple[str, ...] = (
    r"(?i:failed to load (?:the )?model)",
    r"(?i:error (?:while )?loading (?:the )?model)",
    r"(?i:unable to load (?:the )?model)",
    r"(?i:model load(?:ing)? failed)",
    # vLLM: the model loaded but leaves too little memory for max_model_len.
    r"larger than the maximum number of tokens that can be stored in KV cache",
)


@dataclass(frozen=True)
class Options:
    files: tuple[str, ...] = field(default=(), metadata=option_info(
        doc="log files to follow (followed across rotation; may not exist yet)"))
    units: tuple[str, ...] = field(default=(), metadata=option_info(
        doc="systemd units whose journal to follow (needs journalctl)"))
    oom_patterns: tuple[str, ...] = field(default=DEFAULT_OOM_PATTERNS, metadata=option_info(
        doc="regular expressions (RE2) of a GPU out-of-memory line (replaces the defaults)"))
    load_failure_patterns: tuple[str, ...] = field(
        default=DEFAULT_LOAD_FAILURE_PATTERNS, metadata=option_info(
            doc="regular expressions (RE2) of a model-load failure line (replaces the "
                "defaults)"))
    extra_oom_patterns: tuple[str, ...] = field(default=(), metadata=option_info(
        doc="more out-of-memory patterns, added to oom_patterns"))
    extra_load_failure_patterns: tuple[str, ...] = field(default=(), metadata=option_info(
        doc="more load-failure patterns, added to load_failure_patterns"))
    from_start: bool = field(default=False, metadata=option_info(
        doc="count what the sources already hold at start, not only what comes after"))
    interval_seconds: float = field(default=5.0, metadata=option_info(
        min=0.1, doc="how often to read the sources"))
    max_read_bytes: int = field(default=4 * 1024 * 1024, metadata=option_info(
        min=4096, doc="most bytes read from one file per sample; the rest waits for the "
                      "next sample"))
    max_journal_entries: int = field(default=10_000, metadata=option_info(
        min=1, doc="most journal entries read for one unit per sample"))
    journal_timeout_seconds: float = field(default=10.0, metadata=option_info(
        min=0.5, max=120, doc="limit for one journalctl run"))
    journal_directory: str = field(default="", metadata=option_info(
        doc="read the journal from this directory (journalctl --directory) instead of "
            "the system journal; empty = the system journal"))
    journalctl: str = field(default="journalctl", metadata=option_info(
        doc="the journalctl program, by name on PATH or by path"))

    def __post_init__(self) -> None:
        compile_all("oom_patterns", self.oom_patterns)
        compile_all("load_failure_patterns", self.load_failure_patterns)
        compile_all("extra_oom_patterns", self.extra_oom_patterns)
        compile_all("extra_load_failure_patterns", self.extra_load_failure_patterns)
        for unit in self.units:
            if not unit.strip() or any(c.isspace() for c in unit):
                raise ValueError(f"units: {unit!r} is not a unit name")
        for path in self.files:
            if not path.strip():
                raise ValueError("files: an empty path")
        for name, items in (("files", self.files), ("units", self.units)):
            repeated = sorted({x for x in items if items.count(x) > 1})
            if repeated:
                raise ValueError(f"{name}: {repeated[0]!r} is listed twice")


class Classifier:
    """Which kind of event a line is, if any: 'oom', 'load_failure' or None."""

    def __init__(self, oom: Sequence[str], load_failure: Sequence[str]):
        self._oom = compile_all("oom_patterns", oom)
        self._load = compile_all("load_failure_patterns", load_failure)

    @classmethod
    def from_options(cls, options: Options) -> Classifier:
        return cls([*options.oom_patterns, *options.extra_oom_patterns],
                   [*options.load_failure_patterns, *options.extra_load_failure_patterns])

    def classify(self, line: str) -> str | None:
        if any(p.search(line) for p in self._oom):
            return "oom"
        if any(p.search(line) for p in self._load):
            return "load_failure"
        return None


class LogSource(Protocol):
    """A followed log: its ``source`` label and the lines that are new since last read."""

    label: str

    def read(self) -> list[str]: ...

    def close(self) -> None: ...


class FileSource:
    def __init__(self, path: str, options: Options):
        self.label = path
        self._follower = FileFollower(path, from_start=options.from_start)
        self._max_bytes = options.max_read_bytes

    def read(self) -> list[str]:
        lines = self._follower.read_lines(self._max_bytes)
        if not self._follower.following:
            raise FileNotFoundError(f"{self.label}: no such file (yet); waiting for it")
        return lines

    @property
    def problem(self) -> str | None:
        """Why the source is failing although it gave lines: its file is gone."""
        if self._follower.gone:
            return (f"{self.label}: deleted; nothing can log there until the file is "
                    f"created again")
        return None

    def close(self) -> None:
        self._follower.close()


class JournalSource:
    def __init__(self, unit: str, options: Options, clock: Clock):
        self.label = f"journal:{unit}"
        directory = Path(options.journal_directory) if options.journal_directory else None
        self.follower = JournalFollower(
            unit, program=options.journalctl, from_start=options.from_start,
            max_entries=options.max_journal_entries,
            timeout_seconds=options.journal_timeout_seconds, directory=directory, clock=clock)

    def read(self) -> list[str]:
        return self.follower.read_lines()

    def close(self) -> None:
        pass


@dataclass
class _Counts:
    oom: int = 0
    load_failure: int = 0


class OomProbe:
    """Counts OOM and model-load-failure lines per log source."""

    name = NAME
    active = False

    def __init__(self, options: Options | None = None, *, clock: Clock = time.time):
        self.options = options or Options()
        self.interval_seconds: float | None = self.options.interval_seconds
        self.timeout_seconds = 5.0 + len(self.options.units) * (
            2 * self.options.journal_timeout_seconds)
        self._clock = clock
        self.classifier = Classifier.from_options(self.options)
        self.sources: list[LogSource] = [FileSource(p, self.options) for p in self.options.files]
        self.sources += [JournalSource(u, self.options, clock) for u in self.options.units]
        self._totals = {s.label: _Counts() for s in self.sources}

    def check(self) -> Availability:
        if not self.sources:
            return Availability.no("no log files or units configured (options files = "
                                   "[\"/var/log/...\"], units = [\"vllm.service\"])")
        journals = [s for s in self.sources if isinstance(s, JournalSource)]
        missing = [s.follower.available() for s in journals]
        problems = [m for m in missing if m is not None]
        if problems and len(problems) == len(self.sources):
            return Availability.no(problems[0])
        detail = f"{len(self.sources)} source(s)"
        if problems:
            detail += f"; {len(problems)} unit(s) unreadable: {problems[0]}"
        return Availability.yes(detail)

    def sample(self) -> Sequence[Sample]:
        return [self._sample_source(source) for source in self.sources]

    def _sample_source(self, source: LogSource) -> Sample:
        labels = {"source": source.label}
        t = self._clock()
        try:
            lines = source.read()
        except (OSError, JournalError) as exc:
            return failed(self.name, _reason(exc), labels, t=t)
        new = _Counts()
        for line in lines:
            kind = self.classifier.classify(line)
            if kind == "oom":
                new.oom += 1
            elif kind == "load_failure":
                new.load_failure += 1
        total = self._totals[source.label]
        total.oom += new.oom
        total.load_failure += new.load_failure
        problem = getattr(source, "problem", None)
        if problem:  # counted above (kept in the totals), but the source is failing
            return failed(self.name, problem, labels, t=t)
        return Sample(t=t, probe=self.name, labels=labels, values={
            OOM_EVENTS: float(new.oom),
            LOAD_FAILURE_EVENTS: float(new.load_failure),
            OOM_EVENTS_TOTAL: float(total.oom),
            LOAD_FAILURE_EVENTS_TOTAL: float(total.load_failure),
        })

    def close(self) -> None:
        for source in self.sources:
            source.close()


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return one_line(f"{exc.filename}: {exc.strerror}")
    return one_line(exc)


def create(options: Mapping[str, Any]) -> OomProbe:
    return OomProbe(parse_options(Options, options))
