"""Record format v1: JSON Lines, a header line, then one sample per line.

See docs/record-format.md. The reader is forgiving by contract: a malformed
line is counted and skipped with a warning naming its line number; unknown
probes and values are kept; a file that is not a recording at all gives one
clear RecordError. Lines are read as bytes and decoded one by one, so a bad
byte spoils its own line only.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import stat
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ai_bottleneck.probes.sample import Sample, SampleError, one_line
from ai_bottleneck.record_times import TimeGate
from ai_bottleneck.record_writer import (
    FORMAT_NAME,
    FORMAT_VERSION,
    RecordError,
    RecordWriter,
    make_header,
)
from ai_bottleneck.sample_decoder import REFUSED, typed_decoder

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ReadStats", "RecordError", "RecordReader",
           "RecordWriter", "make_header", "read_record"]

log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    lines: int = 0
    samples: int = 0
    malformed: int = 0
    first_bad_lines: list[int] = field(default_factory=list)
    #: Samples dropped because their time is implausible for the stream (record_times).
    implausible_times: int = 0


Loads = Callable[[bytes], Any]


def default_loads() -> Loads:
    """The fastest JSON decoder at hand: orjson (several times faster than the
    standard library on sample lines) when installed, else the standard library."""
    try:
        import orjson
    except ImportError:
        return json.loads
    return orjson.loads


#: Longest line read whole; a longer one is skipped as malformed without holding it
#: in memory (a sample line is a few hundred bytes).
MAX_LINE_BYTES = 1 << 20


def _open_bytes(path: Path) -> IO[bytes]:
    """Open a recording: only a regular file (a FIFO would block, /dev/zero never
    end), opened non-blocking so the check itself cannot hang."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise RecordError(f"{path}: is a directory, not a recording")
        if not stat.S_ISREG(mode):
            raise RecordError(f"{path}: not a regular file (a device, FIFO or socket)")
        os.set_blocking(fd, True)
        raw = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    if path.suffix == ".gz":
        unzipped = gzip.GzipFile(fileobj=raw, mode="rb")
        # GzipFile closes the file it opened itself (``myfileobj``), never one it was
        # given: handing it this one makes close() close both.
        unzipped.myfileobj = raw  # type: ignore[assignment]
        return typing.cast(IO[bytes], unzipped)
    return raw


_SKIP = object()  # a line that gives no sample (blank or malformed)


class RecordReader:
    """Iterate the samples of a recording.

    ``header`` is available after construction; ``stats`` fills in as the
    samples are read. By default a line is decoded straight into a Sample by
    msgspec (sample_decoder); a line that decoder refuses, or every line
    when ``loads`` is given, is decoded by ``loads`` (default: ``default_loads()``)
    and checked by Sample.from_json; a line ``loads`` refuses is decoded again by the
    standard library, which also reads what a strict decoder rejects (NaN, Infinity,
    lone surrogates), so the decoder changes speed, never which samples are read.
    """

    def __init__(self, path: str | os.PathLike[str], *, warn_limit: int = 10,
                 loads: Loads | None = None):
        self.path = Path(path)
        self.stats = ReadStats()
        self._warn_limit = warn_limit
        self._loads = loads if loads is not None else default_loads()
        # A decoder given is the one used; by default lines go straight to Samples.
        self._typed = typed_decoder() if loads is None else None
        try:
            self._fh = _open_bytes(self.path)
            first = self._fh.readline(MAX_LINE_BYTES)
        except FileNotFoundError:
            raise RecordError(f"{self.path}: no such file") from None
        except (OSError, EOFError) as exc:
            raise RecordError(f"{self.path}: cannot read recording: {exc}") from None
        self.stats.lines = 1
        if not first.strip():
            self._fh.close()
            raise RecordError(f"{self.path}: empty file, not an ai-bottleneck recording")
        try:
            header = json.loads(first)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, absurdly nested
            self._fh.close()
            raise RecordError(
                f"{self.path}: line 1 is not JSON; not an ai-bottleneck recording"
            ) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            self._fh.close()
            raise RecordError(
                f"{self.path}: line 1 is not an ai-bottleneck-record header"
            )
        version = header.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            self._fh.close()
            raise RecordError(
                f"{self.path}: record format version {version!r} is newer than this "
                f"reader understands ({FORMAT_VERSION}); upgrade ai-bottleneck"
            )
        self.header: dict[str, Any] = header

    def _bad(self, lineno: int, why: str) -> None:
        self.stats.malformed += 1
        if len(self.stats.first_bad_lines) < self._warn_limit:
            self.stats.first_bad_lines.append(lineno)
            log.warning("%s: line %d skipped: %s", self.path, lineno, why)

    def _decode_refused(self, line: bytes, lineno: int) -> Any:
        """A line the fast decoder refused: blank, readable only by the lenient
        standard library, or malformed (counted, warned, _SKIP)."""
        if not line.strip():
            return _SKIP
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            why = exc.msg
        except UnicodeDecodeError:
            why = "not UTF-8"
        except (ValueError, RecursionError) as exc:
            why = one_line(exc) or type(exc).__name__
        self._bad(lineno, f"not JSON ({why})")
        return _SKIP

    def _general(self, line: bytes, lineno: int) -> Sample | None:
        """The sample of a line decoded to dicts and checked by Sample.from_json; None
        for a blank or malformed line (counted and warned)."""
        try:
            obj = self._loads(line)
        except (ValueError, RecursionError):
            obj = self._decode_refused(line, lineno)
            if obj is _SKIP:
                return None
        try:
            return Sample.from_json(obj, adopt=True)
        except SampleError as exc:
            self._bad(lineno, str(exc))
            return None

    def __iter__(self) -> Iterator[Sample]:
        # The loop runs once per sample of a recording (about a million for a day):
        # the common case is one typed decode (sample_decoder) and two comparisons of
        # the sample's time (ai_bottleneck.record_times), with nothing else per line.
        typed = self._typed
        stats = self.stats
        gate = TimeGate()
        readline = self._fh.readline
        lineno = 1
        try:
            while line := readline(MAX_LINE_BYTES):
                lineno += 1
                stats.lines = lineno
                if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while (rest := readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                        pass
                    self._bad(lineno, f"longer than {MAX_LINE_BYTES} bytes")
                    continue
                if typed is not None:
                    try:
                        sample = typed(line)
                    except REFUSED:
                        sample = None
                    # msgspec refuses what the general path would change or drop (a
                    # number out of range, a boolean or null for a number, a label that
                    # is not a string); an empty probe name, which msgspec takes, goes
                    # to the general path too, which refuses it.
                    if sample is None or not sample.probe:
                        sample = self._general(line, lineno)
                        if sample is None:
                            continue
                else:
                    sample = self._general(line, lineno)
                    if sample is None:
                        continue
                t = sample.t
                if gate.low <= t <= gate.high and not gate.held:
                    if t > gate.newest:
                        gate.advance(t)
                    stats.samples += 1
                    yield sample
                    continue
                for taken in gate.admit(sample):
                    stats.samples += 1
                    yield taken
        except (OSError, EOFError) as exc:
            # A truncated gzip stream or a read error mid-file: keep what was read.
            self._bad(lineno + 1, f"unreadable from here on ({exc})")
        finally:
            self._fh.close()
        for taken in gate.finish():
            stats.samples += 1
            yield taken
        stats.implausible_times = gate.dropped
        if gate.dropped:
            log.warning("%s: %d samples dropped: their time (the first %r) is more than "
                        "%g s away from the samples around them", self.path, gate.dropped,
                        gate.example, gate.max_jump)

    def close(self) -> None:
        self._fh.close()


def read_record(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Sample], ReadStats]:
    reader = RecordReader(path)
    samples = list(reader)
    return reader.header, samples, reader.stats
