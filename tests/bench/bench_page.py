"""What the live page holds per window: its compact copies against whole windows.

    python -m tests.bench.bench_page [--hours 1] [--gpus 8]

Replays a synthetic recording (tests/synth.py's day: every GPU, the host, two NICs
and an HTTP target, all changing every window) and each lab recording, feeds the
windows to a LivePage, and prints the Python memory (tracemalloc) the page holds per
window, once with its compact copies (agent/live_page.py) and once keeping the
windows whole. No target: the figures behind docs/report.md.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from ai_bottleneck import live_page
from ai_bottleneck.assembly import assemble_replay
from ai_bottleneck.live_page import LivePage
from tests.synth import write_day

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"


def _per_window(path: Path, keep: Callable[..., object] | None) -> tuple[float, int]:
    """Bytes the page holds per window of ``path``; ``keep`` replaces compact()."""
    saved = live_page.compact
    if keep is not None:
        live_page.compact = keep  # type: ignore[assignment]
    try:
        page = LivePage(history_seconds=1e12, clock=lambda: 0.0)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        n = 0
        for result in assemble_replay(path).results:
            page.add(result)
            n += 1
        result = None
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / max(n, 1), n
    finally:
        live_page.compact = saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--gpus", type=int, default=8)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "hour.jsonl"
        write_day(synthetic, hours=args.hours, gpus=args.gpus)
        recordings = [synthetic, *sorted(LAB.glob("*.jsonl.gz"))]
        list(assemble_replay(recordings[-1]).results)  # modules and caches loaded first
        tracemalloc.start()
        print(f"{'recording':34s} {'windows':>7s} {'compact KB':>10s} {'whole KB':>9s}")
        for path in recordings:
            compact, n = _per_window(path, None)
            whole, _ = _per_window(path, lambda result, previous: result)
            name = (f"synthetic {args.hours:g} h, {args.gpus} GPUs" if path == synthetic
                    else path.name)
            print(f"{name:34s} {n:7d} {compact / 1e3:10.1f} {whole / 1e3:9.1f}")
        tracemalloc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
