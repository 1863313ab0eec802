"""Logging to stderr in a form journald reads well.

Under systemd (stderr is the journal stream JOURNAL_STREAM names) each line
starts with the sd-daemon priority prefix ``<N>`` so journald files it at the
right level, and carries no timestamp of its own (journald adds one). On a
terminal, lines carry a local timestamp instead.
"""

from __future__ import annotations

import logging
import os
import sys

_SD_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _SD_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd connected, as JOURNAL_STREAM says.

    The variable holds "DEVICE:INODE" of that stream, and is inherited by every
    child, including shells started from a service (a desktop's terminal
    emulator is one): only a match with the descriptor itself counts.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not (sep and device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # stderr replaced, closed or absent
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def setup_logging(verbose: int = 0, *, daemon: bool = False) -> None:
    """Level WARNING by default (INFO for the daemon); -v raises one step, -vv to DEBUG."""
    base = logging.INFO if daemon else logging.WARNING
    level = max(logging.DEBUG, base - 10 * verbose)
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request, URL and all, at INFO (the daemon's level): a URL's
    # credentials would reach the journal. The probes report their calls themselves.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
