"""The dry run's stand-in for the PyTorch worker: the phases as the fake NVML shows them.

    python3 -m tests.gpu.standin_load --log WORKER.log

Same protocol as tests/gpu/torch_load.py (tests/gpu/worker_protocol.py), but a
phase only writes what a real card would read under that load into the fake
NVML state file (AI_BOTTLENECK_FAKE_NVML), and the oom phase writes the line
PyTorch's allocator raises into the followed log. It stands in for the load so
the orchestration, timeouts and outputs are exercised; it proves nothing about
a card.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from tests.fakes.nvml_state import STATE_ENV, read_state, update_gpu
from tests.gpu.worker_protocol import Ready, Stopping, log_line, serve

GIB = 2**30
IDLE: dict[str, Any] = {"utilization_percent": 0, "power_milliwatts": 90_000,
                        "gpm": {"sm_util": 0, "sm_occupancy": 0, "tensor_util": 0,
                                "dram_bw_util": 0}}
LOADS: dict[str, dict[str, Any]] = {
    "matmul": {"utilization_percent": 100, "power_milliwatts": 650_000,
               "gpm": {"sm_util": 97, "sm_occupancy": 20, "tensor_util": 90,
                       "dram_bw_util": 35}},
    "copy": {"utilization_percent": 100, "power_milliwatts": 450_000,
             "gpm": {"sm_util": 60, "sm_occupancy": 40, "tensor_util": 0,
                     "dram_bw_util": 92}},
    "tiny_kernels": {"utilization_percent": 100, "power_milliwatts": 150_000,
                     "gpm": {"sm_util": 2, "sm_occupancy": 1, "tensor_util": 0,
                             "dram_bw_util": 1}},
    "memory_held": {},
    "oom": {},
}
HELD_RATIO = {"memory_held": 0.93, "oom": 0.80}


def _state_path() -> str:
    return os.environ[STATE_ENV]


def _set(**readings: Any) -> None:
    update_gpu(_state_path(), 0, **readings)


def _runner(name: str) -> Any:
    def run(ready: Ready, stopping: Stopping, log: TextIO) -> Mapping[str, Any]:
        total = int(read_state(_state_path())["gpus"][0]["memory_total_bytes"])
        base = 600 * 2**20  # the worker's CUDA context
        held = int(HELD_RATIO.get(name, 0) * total) - base if name in HELD_RATIO else 0
        used = base + max(held, 2 * GIB if name != "tiny_kernels" else 0)
        _set(**{**IDLE, **LOADS[name]}, memory_used_bytes=used,
             processes=[{"pid": os.getpid(), "name": "python3", "used_memory_bytes": used}])
        ready({"stand_in": True, "used_bytes": used})
        failures, start, next_oom = 0, time.monotonic(), time.monotonic()
        while not stopping():
            if name == "oom" and time.monotonic() >= next_oom:
                failures += 1
                next_oom += 1.0
                log_line(log, "loading weights failed: torch.OutOfMemoryError: CUDA out of "
                         f"memory. Tried to allocate {0.4 * total / GIB:.2f} GiB (stand-in)")
            time.sleep(0.05)
        _set(**IDLE, memory_used_bytes=base,
             processes=[{"pid": os.getpid(), "name": "python3", "used_memory_bytes": base}])
        return {"stand_in": True, "seconds": time.monotonic() - start, "failures": failures}
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    with open(args.log, "a", encoding="utf-8") as log:
        log_line(log, "stand-in worker ready")
        return serve({name: _runner(name) for name in LOADS}, log,
                     {"device": "stand-in (fake NVML)", "stand_in": True})


if __name__ == "__main__":
    sys.exit(main())
