"""An iperf3 server this agent runs for its peers' iperf3 probes (off by default).

The daemon starts it, calls ``ensure_running()`` on its ticks (a server that
died is started again, no more often than ``restart_delay_seconds``) and
stops it on exit. iperf3's own ``--idle-timeout`` resets a server that a
half-finished client left stuck.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ai_bottleneck.probes.base import Clock, one_line, option_info


@dataclass(frozen=True)
class ServerOptions:
    enabled: bool = field(default=False, metadata=option_info(
        doc="run an iperf3 server for peers"))
    bind_address: str = field(default="", metadata=option_info(
        doc="address to listen on (iperf3 -B); empty = all addresses"))
    port: int = field(default=5201, metadata=option_info(min=1, max=65535, doc="port to listen on"))
    idle_restart_seconds: int = field(default=60, metadata=option_info(
        min=1, max=3600, doc="iperf3 --idle-timeout: reset a server idle this long, so a "
                             "client that vanished mid-test cannot leave it stuck"))
    restart_delay_seconds: float = field(default=5.0, metadata=option_info(
        min=0, max=600, doc="least time between starts of a server that keeps dying"))


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int) -> Callable[[], None]:
    """For Popen's preexec_fn: the server gets SIGTERM when the agent dies, even by
    SIGKILL; without it the server outlived the agent and the next agent's server
    could not bind its port. (Only an async-signal-safe prctl call runs there.) The
    signal comes when the *thread* that started the server ends: the daemon's main
    thread or a run's sampling thread, each of which stops its servers before it
    ends anyway."""
    def arm() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the agent died before the line above ran
            os._exit(1)
    return arm


def server_argv(options: ServerOptions, program: str = "iperf3") -> list[str]:
    argv = [program, "--server", "--port", str(options.port),
            "--idle-timeout", str(options.idle_restart_seconds)]
    if options.bind_address:
        argv += ["--bind", options.bind_address]
    return argv


class Iperf3Server:
    """One ``iperf3 --server`` child process, restarted when it dies."""

    def __init__(self, options: ServerOptions, *, program: str = "iperf3",
                 clock: Clock = time.monotonic):
        self.options = options
        self.program = program
        self._clock = clock
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._last_start: float | None = None

    @property
    def running(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def start(self) -> str | None:
        """Start the server if it is not running. None on success, else why not (one
        line). A server that exits at once (port taken) is reported on the next
        ``ensure_running``."""
        with self._lock:
            return self._start()

    def _start(self) -> str | None:
        if self._proc is not None and self._proc.poll() is None:
            return None
        self._reap()
        self._last_start = self._clock()
        # stdout (a report per test) is not wanted; stderr goes to a file so a server that
        # dies can say why without a pipe that nobody reads filling up.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        try:
            self._proc = subprocess.Popen(server_argv(self.options, self.program),
                                          stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=self._stderr,
                                          start_new_session=True,
                                          # Safe here: the hook takes no lock Python
                                          # holds (no import, no logging), and glibc
                                          # keeps malloc usable after fork.
                                          preexec_fn=_die_with(os.getpid()))  # noqa: PLW1509
        except OSError as exc:
            self._stderr.close()
            self._stderr = None
            return f"cannot start iperf3 server: {one_line(exc)}"
        return None

    def ensure_running(self) -> str | None:
        """Restart a server that died. None when it is running and nothing happened,
        else one line saying what happened (exit status and iperf3's last message)."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                return None
            if proc is None:
                return self._start()
            why = self._exit_reason(proc)
            if (self._last_start is not None
                    and self._clock() - self._last_start < self.options.restart_delay_seconds):
                return f"iperf3 server {why}; restart held back for a moment"
            problem = self._start()
            return f"iperf3 server {why}; " + (problem or "restarted")

    def _exit_reason(self, proc: subprocess.Popen[bytes]) -> str:
        message = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().decode("utf-8", "replace").splitlines()
                     if ln.strip() and "exiting" not in ln]
            message = f" ({one_line(lines[-1])})" if lines else ""
        return f"exited with status {proc.returncode}{message}"

    def _reap(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stop(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._reap()
