"""The real llama.cpp server (``llama-server``) for tests, serving the tiny random model
of tests/llama_model.py on loopback with ``--metrics``.

The program is found through ``AI_BOTTLENECK_LLAMA_SERVER``, then ``llama-server`` on
PATH, then the build that ``.ci/build-llama-server`` leaves in its cache. Where it is
missing, tests skip with the command that builds it; under CI (``CI=true``) they
fail instead, since CI builds it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.llama_model import write_tiny_llama
from tests.netns import Link

CI_BUILD = Path("/var/cache/ai-bottleneck-ci/llama-server/llama-server")


def find_llama_server() -> str:
    for candidate in (os.environ.get("AI_BOTTLENECK_LLAMA_SERVER"),
                      shutil.which("llama-server"), str(CI_BUILD)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = ("llama-server not found: build it with `bash .ci/build-llama-server` or set "
               "AI_BOTTLENECK_LLAMA_SERVER")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class LlamaServer:
    base_url: str
    slots: int
    log: Path
    pid: int = 0

    @property
    def metrics_url(self) -> str:
        return self.base_url + "/metrics"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_end(log: Path, lines: int = 4) -> str:
    """The log's last lines, newest first: an error cut short still shows where it stopped."""
    return " | ".join(reversed(log.read_text(errors="replace").splitlines()[-lines:]))


@contextmanager
def llama_server(tmp: Path, *, slots: int = 2, context: int = 8192,
                 ready_seconds: float = 60.0, link: Link | None = None) -> Iterator[LlamaServer]:
    """Start llama-server on a free loopback port (or inside ``link``'s namespace, at
    its address) and wait until /health answers 200; stop it (SIGTERM, then SIGKILL)
    however the test ends."""
    program = find_llama_server()
    model = write_tiny_llama(tmp / "tiny-llama.gguf")
    host, port = (link.ns_addr, 8080) if link is not None else ("127.0.0.1", _free_port())
    log = tmp / "llama-server.log"
    argv = [program, "--model", str(model), "--host", host, "--port", str(port),
            "--metrics", "--parallel", str(slots), "--ctx-size", str(context),
            "--threads", "1", "--threads-http", str(slots + 4), "--no-webui"]
    with log.open("wb") as out:
        options: dict[str, object] = {"stdout": out, "stderr": subprocess.STDOUT,
                                      "stdin": subprocess.DEVNULL}
        proc = link.popen(argv, **options) if link is not None else subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + ready_seconds
        last = "no answer yet"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}; its log ends: "
                                   + _log_end(log))
            try:
                answer = httpx.get(base + "/health", timeout=1.0)
                if answer.status_code == 200:
                    break
                last = f"/health answered {answer.status_code}"
            except httpx.HTTPError as exc:
                last = f"/health: {type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not ready within {ready_seconds:g} s at {base} "
                                   f"({last}); its log ends: " + _log_end(log))
            time.sleep(0.2)
        yield LlamaServer(base, slots, log, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
