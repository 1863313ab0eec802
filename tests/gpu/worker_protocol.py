"""The line protocol between tests/gpu/validate.py and a load worker.

The worker prints ``hello {json}`` once it can take work; then, for each
``phase NAME`` line on its stdin, it sets the load up, prints ``ready {json}``
once the load is steady, keeps it up until a ``stop`` line arrives and prints
``stopped {json}`` (the phase's figures) after freeing what it took. ``quit``
ends it. A phase that fails prints ``failed {json}`` with the reason and the
worker takes the next command. Everything else it says goes to its log file
(the file the oom probe follows), never to stdout.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TextIO

Ready = Callable[[Mapping[str, Any]], None]
Stopping = Callable[[], bool]
Runner = Callable[[Ready, Stopping, TextIO], Mapping[str, Any]]


def say(word: str, info: Mapping[str, Any] | None = None) -> None:
    sys.stdout.write(f"{word} {json.dumps(dict(info or {}))}\n")
    sys.stdout.flush()


def log_line(log: TextIO, text: str) -> None:
    log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} worker: {text}\n")
    log.flush()


def serve(runners: Mapping[str, Runner], log: TextIO, hello: Mapping[str, Any]) -> int:
    commands: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("quit")  # stdin closed: the orchestrator is gone

    threading.Thread(target=read, daemon=True).start()
    say("hello", hello)
    while True:
        command = commands.get()
        if command == "quit":
            return 0
        if command == "stop":  # the phase it meant has already ended (failed)
            continue
        name = command.removeprefix("phase ").strip()
        runner = runners.get(name)
        if not command.startswith("phase ") or runner is None:
            say("failed", {"phase": name, "error": f"unknown command {command!r}"})
            continue
        stop_seen = threading.Event()

        def stopping(stop_seen: threading.Event = stop_seen) -> bool:
            if stop_seen.is_set():
                return True
            try:
                while True:
                    if commands.get_nowait() in ("stop", "quit"):
                        stop_seen.set()
                        return True
            except queue.Empty:
                return False

        log_line(log, f"phase {name} starts")
        try:
            def ready(info: Mapping[str, Any], name: str = name) -> None:
                say("ready", {"phase": name, **info})

            stats = runner(ready, stopping, log)
        except Exception as exc:
            log_line(log, f"phase {name} failed: {type(exc).__name__}: "
                     + " ".join(traceback.format_exception_only(exc)).strip())
            say("failed", {"phase": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        log_line(log, f"phase {name} ends")
        say("stopped", {"phase": name, **stats})
