"""Follow log sources, reading each line once: files (like ``tail -F``) and the journal.

Files:

- It starts at the end of the file (what was logged before the agent started
  is not news), unless told to read from the start. A file that does not exist
  yet is read from its start once it appears: all of it is new.
- Rotation by rename (logrotate's default, Python's RotatingFileHandler) is
  seen as a new inode at the path. The old file stays open and is read to its
  end before the follower moves on, so the lines written just before the
  rotation are not lost. Rotation by truncation (copytruncate) is seen as the
  file becoming shorter than the position read.
- Only complete lines are returned; a partial last line is held until its
  newline arrives (or until the file is rotated away, when it is final).
- Each call reads at most ``max_bytes``; the rest waits for the next call.

A file rotated twice between two calls loses the middle file; so does
``tail -F``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import BinaryIO

from ai_bottleneck.probes.base import Clock

CHUNK_BYTES = 64 * 1024


_TAIL_BYTES = 64


class FileFollower:
    """One followed file. Not thread-safe: one reader calls ``read_lines``."""

    def __init__(self, path: Path | str, *, from_start: bool = False,
                 max_line_bytes: int = 64 * 1024):
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self._start_at_end = not from_start
        self._file: BinaryIO | None = None
        self._ident: tuple[int, int] | None = None
        self._partial = bytearray()
        # The last bytes read, to tell at the next read whether the file is still the
        # one read so far: truncated and refilled past the old offset in one interval,
        # its size alone would not show it.
        self._tail = b""
        #: The file was deleted (no path leads to it any more); it is still read to
        #: its end. A file moved away by rotation is not gone.
        self.gone = False

    @property
    def following(self) -> bool:
        """True while a file is open (the path may already point elsewhere)."""
        return self._file is not None

    def read_lines(self, max_bytes: int) -> list[str]:
        """The complete lines written since the last call, up to ``max_bytes`` read.

        Returns [] while the file does not exist. Raises OSError for a file that
        exists but cannot be read (permissions, a directory).
        """
        lines: list[str] = []
        if self._file is None and not self._open():
            return lines
        self._check_rewritten(lines)
        left = max_bytes
        while left > 0 and self._file is not None:
            chunk = self._file.read(min(left, CHUNK_BYTES))
            if chunk:
                left -= len(chunk)
                self._tail = (self._tail + chunk)[-_TAIL_BYTES:]
                self._feed(chunk, lines)
                continue
            # At the end of the open file: is the path still this file?
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                # Moved away (rotation: the new file comes soon) keeps a link to the old
                # one; deleted leaves none, and nothing will ever be written there again
                # that anyone else can read. Keep the old one open either way.
                self.gone = os.fstat(self._file.fileno()).st_nlink == 0
                break
            self.gone = False
            if (st.st_dev, st.st_ino) != self._ident:
                self._flush_partial(lines)
                self._close_file()
                if not self._open():
                    break
            elif st.st_size < self._file.tell():
                self._flush_partial(lines)  # truncated: start over at its beginning
                self._file.seek(0)
                self._tail = b""
            else:
                break
        return lines

    def _check_rewritten(self, lines: list[str]) -> None:
        """Truncated since the last read (smaller than where we are), or truncated and
        written again past that point (the bytes before it changed): read from the start."""
        f = self._file
        if f is None:
            return
        pos = f.tell()
        st = os.fstat(f.fileno())
        same = st.st_size >= pos
        if same and self._tail and pos >= len(self._tail):
            same = os.pread(f.fileno(), len(self._tail), pos - len(self._tail)) == self._tail
        if not same:
            self._flush_partial(lines)
            f.seek(0)
            self._tail = b""

    def _open(self) -> bool:
        # Only the first look at the path may skip what is there; a file that appears
        # or replaces the old one later is read from its start.
        start_at_end, self._start_at_end = self._start_at_end, False
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (kept open between calls)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(f.fileno())
            if start_at_end:
                f.seek(0, os.SEEK_END)
        except OSError:
            f.close()
            raise
        self._file = f
        self._ident = (st.st_dev, st.st_ino)
        pos = f.tell()
        keep = min(pos, _TAIL_BYTES)
        self._tail = os.pread(f.fileno(), keep, pos - keep) if keep else b""
        return True

    def _feed(self, chunk: bytes, lines: list[str]) -> None:
        self._partial += chunk
        *complete, rest = self._partial.split(b"\n")
        lines.extend(_decode(raw) for raw in complete)
        self._partial = bytearray(rest)
        while len(self._partial) > self.max_line_bytes:
            # A "line" this long is not a log line; cut it to keep memory bounded.
            lines.append(_decode(self._partial[: self.max_line_bytes]))
            del self._partial[: self.max_line_bytes]

    def _flush_partial(self, lines: list[str]) -> None:
        if self._partial:
            lines.append(_decode(self._partial))
            self._partial.clear()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._ident = None

    def close(self) -> None:
        self._close_file()
        self._partial.clear()


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", "replace").rstrip("\r")


class JournalError(Exception):
    """The journal could not be read; the message is one line for the sample."""


def parse_journal_entry(line: str) -> tuple[str | None, str | None]:
    """(MESSAGE, __CURSOR) of one line of ``journalctl --output=json``.

    MESSAGE is a string, or a list of byte values when it is not valid UTF-8.
    """
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None, None
    if not isinstance(entry, dict):
        return None, None
    cursor = entry.get("__CURSOR")
    message = entry.get("MESSAGE")
    if isinstance(message, list):
        try:
            message = bytes(message).decode("utf-8", "replace")
        except (TypeError, ValueError):
            message = None
    return (message if isinstance(message, str) else None,
            cursor if isinstance(cursor, str) else None)


class JournalFollower:
    """The systemd journal of one unit, read by polling ``journalctl`` from a cursor.

    Each call runs ``journalctl -u UNIT --after-cursor=C --output=json`` and stops
    it after ``max_entries`` entries (the rest waits for the next call) or after
    ``timeout_seconds``. Polling keeps no process running between samples, so
    there is nothing to die or to restart. The first call only finds where the
    journal ends (unless ``from_start``); a unit with no entries yet is then
    read from the time of that call.
    """

    def __init__(self, unit: str, *, program: str = "journalctl", from_start: bool = False,
                 max_entries: int = 10_000, timeout_seconds: float = 10.0,
                 directory: Path | None = None, clock: Clock = time.time):
        self.unit = unit
        self.program = program
        self.max_entries = max_entries
        self.timeout_seconds = timeout_seconds
        self.directory = directory
        self._clock = clock
        self._cursor: str | None = None
        self._since: int | None = None
        self._positioned = from_start

    def available(self) -> str | None:
        """None when journalctl can be run, else why not."""
        if shutil.which(self.program) is None:
            return (f"{self.program} not found: the journal of {self.unit} cannot be read "
                    "on this host")
        return None

    def _base_argv(self) -> list[str]:
        argv = [self.program, "--unit", self.unit, "--output=json", "--no-pager", "--quiet"]
        if self.directory is not None:
            argv.append(f"--directory={self.directory}")
        return argv

    def read_lines(self) -> list[str]:
        """Messages logged since the last call (at most ``max_entries``)."""
        if not self._positioned:
            # Where does the journal end now? Nothing before this counts.
            since = int(self._clock())
            _, cursor = self._run([*self._base_argv(), "--lines=1"], limit=1)
            self._positioned = True
            if cursor is None:
                self._since = since
            self._cursor = cursor
            return []
        argv = self._base_argv()
        if self._cursor is not None:
            argv.append(f"--after-cursor={self._cursor}")
        elif self._since is not None:
            argv.append(f"--since=@{self._since}")
        messages, cursor = self._run(argv, limit=self.max_entries)
        if cursor is not None:
            self._cursor = cursor
        return messages

    def _run(self, argv: list[str], limit: int) -> tuple[list[str], str | None]:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace")
        except FileNotFoundError:
            raise JournalError(f"{self.program} not found: the journal of {self.unit} "
                               "cannot be read on this host") from None
        except OSError as exc:
            raise JournalError(f"cannot run {self.program}: {exc}") from None
        # A timer rather than communicate(timeout): output is read line by line and
        # the process is stopped once enough entries came, without reading the rest.
        timer = threading.Timer(self.timeout_seconds, proc.kill)
        timer.start()
        messages: list[str] = []
        cursor: str | None = None
        entries = 0
        stopped_early = False
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                message, entry_cursor = parse_journal_entry(line)
                if entry_cursor is None:
                    continue
                entries += 1
                cursor = entry_cursor
                if message is not None:
                    messages.append(message)  # one entry is one line, even if multi-line
                if entries >= limit:
                    stopped_early = True
                    proc.kill()
                    break
            _, err = proc.communicate()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        timed_out = not stopped_early and proc.returncode == -signal.SIGKILL
        if timed_out:
            raise JournalError(f"{self.program} for {self.unit} did not finish within "
                               f"{self.timeout_seconds:g} s")
        if not stopped_early and proc.returncode != 0:
            lines = (err or "").strip().splitlines()
            detail = lines[-1] if lines else "no message"
            raise JournalError(f"{self.program} --unit {self.unit} exited with status "
                               f"{proc.returncode}: {detail}")
        return messages, cursor
