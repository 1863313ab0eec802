"""The PyTorch load of the validation run: one worker process, one phase at a time.

    python3 -m tests.gpu.torch_load --log WORKER.log

Speaks tests/gpu/worker_protocol.py on stdin/stdout; tests/gpu/phases.py says
what each phase is for. Every wait on the GPU is a blocking-sync event, so the
worker's own thread sleeps instead of spinning a core while the GPU works (a
spinning wait would show as CPU load and muddle the labels). Memory is taken
with plain allocations through PyTorch's allocator, never managed memory, and
given back (``empty_cache``) at the end of each phase. Nothing here changes the
card's settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from tests.gpu.worker_protocol import Ready, Stopping, log_line, serve

GIB = 2**30
HELD_RATIO = 0.93  # memory_held: above the 90% warning, below the 95% "full" threshold
OOM_HELD_RATIO = 0.80
OOM_ASK_RATIO = 0.40
OOM_EVERY_SECONDS = 2.0


def _torch() -> Any:
    import torch  # type: ignore[import-not-found]  # on the GPU machine only

    return torch


def _sync(torch: Any) -> None:
    event = torch.cuda.Event(blocking=True)
    event.record()
    event.synchronize()


def _release(torch: Any) -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def matmul(ready: Ready, stopping: Stopping, log: TextIO) -> Mapping[str, Any]:
    torch = _torch()
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = a @ b
    _sync(torch)
    ready({"n": n})
    done, start = 0, time.perf_counter()
    while not stopping():
        for _ in range(20):
            torch.matmul(a, b, out=c)
        _sync(torch)
        done += 20
    seconds = time.perf_counter() - start
    del a, b, c
    _release(torch)
    return {"products": done, "seconds": seconds, "tflops": 2 * n**3 * done / seconds / 1e12}


def copy(ready: Ready, stopping: Stopping, log: TextIO) -> Mapping[str, Any]:
    torch = _torch()
    size = 2 * GIB
    src = torch.randint(0, 255, (size,), device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(torch)
    ready({"bytes": size})
    done, start = 0, time.perf_counter()
    while not stopping():
        for _ in range(20):
            dst.copy_(src)
        _sync(torch)
        done += 20
    seconds = time.perf_counter() - start
    del src, dst
    _release(torch)
    # bytes read plus bytes written, as KINDS.md counts copy bandwidth
    return {"copies": done, "seconds": seconds, "tb_per_s": 2 * size * done / seconds / 1e12}


def tiny_kernels(ready: Ready, stopping: Stopping, log: TextIO) -> Mapping[str, Any]:
    torch = _torch()
    per_graph = 2000
    x = torch.zeros(256, device="cuda")
    graph = None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                x.add_(1.0)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(per_graph):
                x.add_(1.0)
        graph.replay()
    except Exception as exc:  # graphs unavailable: launch eagerly (the CPU then works too)
        log_line(log, f"tiny_kernels: no CUDA graph ({type(exc).__name__}: {exc}); eager")
        graph = None
    _sync(torch)
    ready({"kernels_per_graph": per_graph, "graph": graph is not None})
    done, start = 0, time.perf_counter()
    while not stopping():
        for _ in range(10):
            if graph is not None:
                graph.replay()
            else:
                for _ in range(per_graph):
                    x.add_(1.0)
        _sync(torch)
        done += 10 * per_graph
    seconds = time.perf_counter() - start
    del graph, x
    _release(torch)
    return {"kernels": done, "seconds": seconds, "kernels_per_second": done / seconds}


def _hold(torch: Any, ratio: float) -> list[Any]:
    """Allocate until the card's used memory reaches ``ratio`` of its total."""
    free, total = torch.cuda.mem_get_info()
    need = int(ratio * total) - (total - free)
    blocks = []
    while need > 0:
        size = min(2 * GIB, need)
        block = torch.empty(size, device="cuda", dtype=torch.uint8)
        block.fill_(1)  # touched, so nothing could be lazily backed
        blocks.append(block)
        need -= size
    _sync(torch)
    return blocks


def memory_held(ready: Ready, stopping: Stopping, log: TextIO) -> Mapping[str, Any]:
    torch = _torch()
    blocks = _hold(torch, HELD_RATIO)
    free, total = torch.cuda.mem_get_info()
    ready({"held_bytes": sum(b.numel() for b in blocks), "used_ratio": 1 - free / total})
    start = time.perf_counter()
    while not stopping():
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    held = sum(b.numel() for b in blocks)
    del blocks
    _release(torch)
    return {"held_bytes": held, "used_ratio": 1 - free / total, "seconds": seconds}


def oom(ready: Ready, stopping: Stopping, log: TextIO) -> Mapping[str, Any]:
    torch = _torch()
    blocks = _hold(torch, OOM_HELD_RATIO)
    _, total = torch.cuda.mem_get_info()
    ask = int(OOM_ASK_RATIO * total)
    ready({"held_bytes": sum(b.numel() for b in blocks), "ask_bytes": ask})
    failures, succeeded, start = 0, 0, time.perf_counter()
    next_try = start
    while not stopping():
        if time.perf_counter() < next_try:
            time.sleep(0.1)
            continue
        next_try += OOM_EVERY_SECONDS
        try:
            extra = torch.empty(ask, device="cuda", dtype=torch.uint8)
        except torch.cuda.OutOfMemoryError as exc:  # the same class as torch.OutOfMemoryError
            failures += 1
            # one line per failure, as a server's log would carry it
            log_line(log, "loading weights failed: torch.OutOfMemoryError: "
                     + " ".join(str(exc).split()))
        else:
            succeeded += 1  # should not happen: the card had more free than asked
            del extra
    seconds = time.perf_counter() - start
    held = sum(b.numel() for b in blocks)
    del blocks
    _release(torch)
    return {"failures": failures, "unexpected_successes": succeeded, "held_bytes": held,
            "ask_bytes": ask, "seconds": seconds}


RUNNERS = {"matmul": matmul, "copy": copy, "tiny_kernels": tiny_kernels,
           "memory_held": memory_held, "oom": oom}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="log file (the oom probe follows it)")
    args = parser.parse_args(argv)
    with open(args.log, "a", encoding="utf-8") as log:
        torch = _torch()
        if not torch.cuda.is_available():
            log_line(log, "torch sees no CUDA device")
            print("failed {\"error\": \"torch sees no CUDA device\"}", flush=True)
            return 1
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info()
        props = torch.cuda.get_device_properties(0)
        hello = {"torch": torch.__version__, "cuda": torch.version.cuda,
                 "device": torch.cuda.get_device_name(0), "total_bytes": total,
                 "free_bytes": free, "multiprocessors": props.multi_processor_count}
        log_line(log, f"torch worker ready: {hello}")
        return serve(RUNNERS, log, hello)


if __name__ == "__main__":
    sys.exit(main())
