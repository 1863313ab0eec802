"""The orchestrator's side of the worker protocol (tests/gpu/worker_protocol.py)."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.gpu.overhead import stop_group


class Worker:
    """A load worker process (``python -m tests.gpu.MODULE --log LOG``), its answers read
    on a thread. Its stderr goes to WORK/MODULE.stderr."""

    def __init__(self, python: str, module: str, work: Path, log: Path,
                 env: Mapping[str, str], cwd: Path, say: Callable[[str], None]) -> None:
        self.module = module
        self.say = say
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr = open(work / f"{module}.stderr", "a", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [python, "-m", f"tests.gpu.{module}", "--log", str(log)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            cwd=cwd, env=dict(env), start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def wait(self, words: tuple[str, ...], timeout: float) -> tuple[str, Any] | None:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                return None
            word, _, rest = line.partition(" ")
            if word in words:
                try:
                    return word, json.loads(rest or "{}")
                except ValueError:
                    return word, {"text": rest}
        return None

    def kill_if_silent(self, answer: tuple[str, Any] | None) -> None:
        """A worker that did not answer may be stuck inside CUDA: end it, a new one follows."""
        if answer is None:
            self.say(f"worker {self.module} did not answer in time: ending it")
            self.close()

    def close(self) -> None:
        self.send("quit")
        stop_group(self.proc, 15, 20)
        self.stderr.close()
