"""The simulated GPU of the lab's engine scenarios, driven by what the real llama.cpp server
does: the engine computes on this machine's CPU, so a stand-in GPU publishes the work it
would be doing (tests/lab/simgpu.py's state file, read by the fake NVML).

    python -m tests.lab.engine_gpu SERVER_URL STATE_FILE ENGINE_PID

Runs beside the server (in its network namespace, so that polling it never crosses the
lab's shaped link). Every ``POLL_SECONDS`` it reads ``/slots`` and counts the slots that
serve a request (``is_processing``); over the last ``UTILIZATION_PERIOD_SECONDS`` it
publishes, as simgpu does for the stand-in service:
- utilization: the share of polls with at least one slot busy ("a kernel was running");
- SM activity: the mean share of slots busy;
- memory: constant, the weights and the KV cache that llama.cpp allocates at start
  (``MEMORY_USED_BYTES`` of ``MEMORY_TOTAL_BYTES``: a Llama-class model on an 80 GB card).
A poll that fails keeps the last reading. Exits when its parent (the lab runner) is gone.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from tests.lab.simgpu import GIB, GPU_MODELS, UTILIZATION_PERIOD_SECONDS, GpuState, publish

POLL_SECONDS = 0.1
MEMORY_USED_BYTES = 40 * GIB
MEMORY_TOTAL_BYTES = 80 * GIB


def busy_slots(document: object) -> tuple[int, int] | None:
    """(slots serving a request, all slots) from a /slots answer."""
    if not isinstance(document, list) or not document:
        return None
    busy = sum(1 for s in document if isinstance(s, dict) and s.get("is_processing") is True)
    return busy, len(document)


def state_of(history: deque[tuple[float, int, int]], pid: int) -> GpuState:
    polls = len(history)
    any_busy = sum(1 for _, busy, _ in history if busy) / polls if polls else 0.0
    sm = sum(busy / slots for _, busy, slots in history) / polls if polls else 0.0
    last_busy = history[-1][1] if history else 0
    return GpuState(utilization_percent=math.floor(any_busy * 100 + 0.5),
                    sm_active_percent=round(sm * 100, 1), memory_used_bytes=MEMORY_USED_BYTES,
                    memory_total_bytes=MEMORY_TOTAL_BYTES, in_flight=last_busy,
                    busy_slots=last_busy, oom_total=0, pid=pid, model=GPU_MODELS["h100"])


def main(argv: list[str]) -> int:
    url, state, pid = argv[0].rstrip("/") + "/slots", Path(argv[1]), int(argv[2])
    parent = os.getppid()
    history: deque[tuple[float, int, int]] = deque()
    publish(state, state_of(history, pid))
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while os.getppid() == parent:
            began = time.monotonic()
            try:
                counted = busy_slots(client.get(url).json())
            except (httpx.HTTPError, ValueError):
                counted = None
            if counted is not None:
                history.append((began, *counted))
            while history and history[0][0] < began - UTILIZATION_PERIOD_SECONDS:
                history.popleft()
            publish(state, state_of(history, pid))
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - began)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
