"""Writing a recording without ever stopping the run that feeds it.

A recording is a side product: a full disk, a quota, a yanked USB stick or
/dev/full under it must not stop sampling or labelling. ``RecordWriter``
therefore never raises once the file is open. A batch that cannot be written
*pauses* the recording: one log line, the batch's samples are counted as
lost, and what was half written is cut off again (``ftruncate`` to the end of
the last whole batch), so the file stays a valid recording. Every later batch
tries again; the first that goes through resumes the recording (one more log
line). ``up``, ``errors_total``, ``samples_lost`` and ``last_error`` say how it
is going (the exporter and ``/healthz`` read them).

Files are created, never opened over something already there: ``O_EXCL`` and
``O_NOFOLLOW`` (a planted symlink cannot make a root agent write elsewhere),
mode 0640, and a taken name gets a time suffix. A gzip recording is one
deflate stream flushed after each batch; the compressor's state is copied
before a batch so a batch that failed is taken back out of the stream too.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ai_bottleneck import __version__
from ai_bottleneck.probes.sample import Sample, one_line

log = logging.getLogger("ai_bottleneck.record")

#: Permissions of a new recording: it names hosts, targets and error texts.
RECORD_MODE = 0o640
_KNOWN_SUFFIXES = (".jsonl.gz", ".jsonl", ".gz")
#: ``write()`` queues lines; past this many bytes it writes them out.
_QUEUE_BYTES = 256 * 1024


FORMAT_NAME = "ai-bottleneck-record"
FORMAT_VERSION = 1


def make_header(**extra: Any) -> dict[str, Any]:
    """The first line of a recording: format, version, when, by what, on which host."""
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created": time.time(),
        "writer": f"ai-bottleneck {__version__}",
        "host": socket.gethostname(),
    }
    header.update(extra)
    return header


class RecordError(Exception):
    """The file cannot be read or created as a recording at all (one line, names the file)."""


def _candidates(path: Path, now: float | None) -> Iterable[Path]:
    """``path``, then ``stem-YYYYmmddTHHMMSS.ext``, then ``...-2.ext`` and so on."""
    yield path
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    stem, ext = path.name, ""
    for known in _KNOWN_SUFFIXES:
        if stem.endswith(known):
            stem, ext = stem[: -len(known)], known
            break
    yield path.with_name(f"{stem}-{stamp}{ext}")
    for n in range(2, 1000):
        yield path.with_name(f"{stem}-{stamp}-{n}{ext}")


def create_exclusive(path: Path, now: float | None = None) -> tuple[Path, int]:
    """Create a new file for a recording at ``path`` or, when that name is taken, at a
    suffixed name beside it. Returns the name used and a write-only descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for candidate in _candidates(path, now):
        try:
            return candidate, os.open(candidate, flags, RECORD_MODE)
        except FileExistsError:
            if candidate == path:
                try:
                    mode = os.lstat(path).st_mode
                except OSError:
                    mode = stat.S_IFREG
                if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    raise RecordError(f"{path}: cannot write recording: not a regular file"
                                      ) from None
            continue
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if exc.errno == errno.ELOOP:
                reason = "is a symbolic link"
            raise RecordError(f"{candidate}: cannot write recording: {reason}") from None
    raise RecordError(f"{path}: cannot write recording: every suffixed name is taken")


class RecordWriter:
    """Append samples to a new recording; a batch that cannot be written pauses it.

    ``write`` queues one sample; ``write_many`` (what the sampling loop calls with
    each batch) and ``flush`` push the queued lines to the file, so a crash loses
    at most the batch being written. ``path`` is the file actually written (a
    taken name gets a suffix). Only creating the file can raise (RecordError).
    """

    def __init__(self, path: str | os.PathLike[str], header: Mapping[str, Any] | None = None):
        if header is None:
            header = make_header()
        self.requested_path = Path(path)
        self.path, self._fd = create_exclusive(self.requested_path)
        self._gzip = self.path.suffix == ".gz"
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, 31) if self._gzip else None
        self._offset = 0  # end of the last batch written whole
        self._lock = threading.Lock()
        self._header: bytes | None = self._encode(dict(header))
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.count = 0  # samples taken and not lost: in the file, or queued for it
        self.samples_lost = 0
        self.errors_total = 0
        self.pauses = 0
        self.up = True
        self.last_error: str | None = None
        self.flush()

    @staticmethod
    def _encode(obj: Mapping[str, Any]) -> bytes:
        return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()

    def write(self, sample: Sample) -> None:
        line = self._encode(sample.to_json())
        with self._lock:
            self._pending.append(line)
            self._pending_bytes += len(line)
            self.count += 1
            if self._pending_bytes >= _QUEUE_BYTES:  # many write()s without a flush
                self._flush_locked()

    def write_many(self, samples: Iterable[Sample]) -> None:
        lines = [self._encode(s.to_json()) for s in samples]
        with self._lock:
            self._pending.extend(lines)
            self.count += len(lines)
            self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._fd < 0 or (not self._pending and self._header is None):
            return
        lines = self._pending
        self._pending, self._pending_bytes = [], 0
        data = b"".join(([self._header] if self._header is not None else []) + lines)
        deflate = None
        if self._deflate is not None:
            deflate = self._deflate.copy()  # the stream as it was, should this batch fail
            data = deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH)
        try:
            self._write_at(data, self._offset)
        except OSError as exc:
            self._failed(exc, len(lines))
            return
        self._offset += len(data)
        if deflate is not None:
            self._deflate = deflate
        self._header = None
        if not self.up:
            self.up = True
            log.warning("recording to %s resumed (%d samples were not recorded)",
                        self.path, self.samples_lost)

    def _write_at(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            view, offset = view[n:], offset + n

    def _failed(self, exc: OSError, samples: int) -> None:
        self.errors_total += 1
        self.samples_lost += samples
        self.count -= samples
        self.last_error = one_line(exc.strerror or str(exc) or type(exc).__name__)
        try:  # a half-written batch would be a torn line: cut it off again
            os.ftruncate(self._fd, self._offset)
        except OSError:
            log.debug("recording %s: could not cut back a failed batch", self.path,
                      exc_info=True)
        if self.up:
            self.up = False
            self.pauses += 1
            log.error("recording to %s paused: %s; sampling goes on, and recording resumes "
                      "when writing works again", self.path, self.last_error)

    def close(self) -> None:
        """Write what is queued (and the gzip trailer) and close; never raises."""
        with self._lock:
            if self._fd < 0:
                return
            self._flush_locked()
            if self._deflate is not None:  # tried even when paused: the trailer is 10 bytes
                try:
                    tail = self._deflate.flush(zlib.Z_FINISH)
                    self._write_at(tail, self._offset)
                    self._offset += len(tail)
                except OSError as exc:
                    self._failed(exc, 0)
            try:
                os.close(self._fd)
            except OSError as exc:  # NFS reports some write errors only here
                self._failed(exc, 0)
            self._fd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def lost_note(self) -> str | None:
        """One line for a report on what the recording lost, or None when it lost nothing."""
        if not self.errors_total:
            return None
        state = "paused at the end" if not self.up else f"paused {self.pauses} times"
        return (f"recording to {self.path} {state}: {self.samples_lost} samples were not "
                f"recorded ({self.last_error})")

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
