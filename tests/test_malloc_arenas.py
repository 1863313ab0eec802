"""The agent's malloc arena cap (ai_bottleneck.malloc_arenas): threads that allocate
at the same time share two arenas (glibc's malloc_stats lists them), an operator's
MALLOC_ARENA_MAX wins. The daemon sets the cap as it starts (bench_soak shows the effect)."""

from __future__ import annotations

import os
import subprocess
import sys

_SCRIPT = """
import ctypes, sys, threading
from ai_bottleneck.malloc_arenas import limit_arenas
print(limit_arenas() if sys.argv[1] == "cap" else "uncapped", flush=True)
barrier = threading.Barrier(12)
def work():
    barrier.wait()
    keep = [bytearray(50_000) for _ in range(50)]  # malloc'd in an arena, not pymalloc's
    del keep
threads = [threading.Thread(target=work) for _ in range(12)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def _arenas(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True,
                          text=True, timeout=60, check=True, env=env)
    return proc.stdout.strip(), proc.stderr.count("Arena ")


def test_threads_allocating_at_once_share_two_arenas() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    said, capped = _arenas("cap", env)
    assert said == "True"
    assert 1 <= capped <= 2
    _, uncapped = _arenas("uncapped", env)
    assert uncapped > capped  # glibc's own default: an arena per contending thread


def test_the_operators_malloc_arena_max_wins() -> None:
    said, arenas = _arenas("cap", {**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert said == "False" and arenas == 1
