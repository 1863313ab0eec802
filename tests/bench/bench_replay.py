"""How fast `replay` labels a day: a synthetic 24-hour recording at 1 Hz.

    python -m tests.bench.bench_replay [--hours 24] [--gpus 4] [--no-processes]
                                       [--python OTHER_INTERPRETER ...]

Writes the recording with the real RecordWriter (not timed), then times the
real reader alone and the whole replay (reader + windows + classifier +
hysteresis) through ai_bottleneck.assembly.assemble_replay, and prints samples per second and
seconds per day next to the target: the whole day in under 5 s. The reader
decodes lines straight into Samples with msgspec where installed (its general
path, orjson or the standard library's decoder plus checks in Python, reads the
lines msgspec refuses); the general path alone is timed too, for comparison.

The same code runs at different speeds under different builds of one Python
version (a distribution's build against one compiled with a version manager's
defaults: no profile-guided optimization, libpython shared), so the interpreter
is printed with the figures, and ``--python`` times the same replay of the same
recording under other interpreters in the same run (each needs ai_bottleneck
installed, e.g. a venv made with it), alternating with this one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

from ai_bottleneck.assembly import assemble_replay as replay
from ai_bottleneck.record import RecordReader, default_loads, make_header
from tests.synth import write_day

TARGET_SECONDS_PER_DAY = 5.0


def _timed(fn: object) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu, result


def interpreter() -> str:
    """Which Python runs this, and how it was built (what decides its speed)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            shared = "libpython" in maps.read()
    except OSError:
        shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
    optimized = "--enable-optimizations" in (sysconfig.get_config_var("CONFIG_ARGS") or "")
    return (f"Python {sys.version.split()[0]} {sys.executable} (base {sys.base_prefix}; "
            f"{'libpython a shared library' if shared else 'libpython in the executable'}"
            f"{', configured --enable-optimizations' if optimized else ''})")


def _replay(path: Path) -> tuple[float, float, Counter[str]]:
    """One whole replay, streamed as `replay --json` prints each window and lets it go:
    (wall seconds, CPU seconds, windows by label)."""
    wall, cpu, labels = _timed(lambda: Counter(r.label for r in replay(path).results))
    return wall, cpu, labels  # type: ignore[return-value]


def _other(python: str, path: Path) -> tuple[str, float]:
    """One timed replay of ``path`` under another interpreter: (its description, seconds)."""
    code = ("import json, sys; from pathlib import Path; "
            "from tests.bench.bench_replay import _replay, interpreter; "
            "print(json.dumps([interpreter(), _replay(Path(sys.argv[1]))[0]]))")
    try:
        done = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=600, check=False, cwd=Path(__file__).parents[2])
    except OSError as exc:
        raise SystemExit(f"--python {python}: cannot run it: {exc}") from None
    except subprocess.TimeoutExpired:
        raise SystemExit(f"--python {python}: no answer within 600 s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"--python {python}: failed (is ai_bottleneck installed for it?): "
                         f"{last}")
    described, seconds = json.loads(done.stdout)
    return str(described), float(seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--no-processes", action="store_true",
                    help="leave out the per-process GPU samples (one per GPU per second)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--keep", type=Path, help="write the recording here and keep it")
    ap.add_argument("--python", action="append", default=[], metavar="INTERPRETER",
                    help="also time the whole replay under this interpreter (repeatable)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:  # before writing a day: can they replay?
        empty = Path(tmp) / "empty.jsonl"
        empty.write_text(json.dumps(make_header(window_seconds=10.0, probes=[])) + "\n")
        for python in args.python:
            _other(python, empty)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "day.jsonl"
        t0 = time.perf_counter()
        n = write_day(path, hours=args.hours, gpus=args.gpus, processes=not args.no_processes)
        per_second = n / (args.hours * 3600)
        print(f"recording: {args.hours:g} h at 1 Hz, {args.gpus} GPUs"
              f"{'' if args.no_processes else ' (+1 process each)'}, host, 2 NICs + TCP, "
              f"1 HTTP call/s: {n:,} samples ({per_second:.0f}/s), "
              f"{path.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - t0:.1f} s")

        print(f"interpreter: {interpreter()}")
        loads = default_loads()
        general = f"{getattr(loads, '__module__', '?')}.{loads.__name__}"
        print(f"decoder: msgspec, straight to Samples (general path: {general})")
        read_runs = []
        general_runs = []
        stdlib_runs = []
        full_runs = []
        others: dict[str, list[float]] = {python: [] for python in args.python}
        described: dict[str, str] = {}
        for _ in range(args.repeat):
            read_runs.append(_timed(lambda: sum(1 for _ in RecordReader(path)))[:2])
            general_runs.append(_timed(
                lambda: sum(1 for _ in RecordReader(path, loads=loads)))[:2])
            if loads is not json.loads:
                stdlib_runs.append(_timed(
                    lambda: sum(1 for _ in RecordReader(path, loads=json.loads)))[:2])
            wall, cpu, labels = _replay(path)
            full_runs.append((wall, cpu))
            for python, runs in others.items():
                described[python], seconds = _other(python, path)
                runs.append(seconds)

    scale = 24.0 / args.hours
    read_wall, read_cpu = min(read_runs)
    full_wall, full_cpu = min(full_runs)
    label_wall = max(0.0, full_wall - read_wall)
    rows = [("reader only", read_wall),
            (f"reader only, {general.split('.', maxsplit=1)[0]}", min(general_runs)[0])]
    if stdlib_runs:
        rows.append(("reader only, stdlib json", min(stdlib_runs)[0]))
    rows += [("labelling (replay - reader)", label_wall), ("replay: reader + labelling", full_wall)]
    print(f"{'stage':<28}{'seconds':>9}{'samples/s':>12}{'s per day':>11}{'target':>9}")
    for name, wall in rows:
        print(f"{name:<28}{wall:>9.2f}{n / wall if wall else float('inf'):>12,.0f}"
              f"{wall * scale:>11.2f}{'':>9}")
    verdict = "met" if full_wall * scale < TARGET_SECONDS_PER_DAY else "NOT met"
    print(f"whole day: {full_wall * scale:.2f} s (cpu {full_cpu * scale:.2f} s; reader "
          f"cpu {read_cpu * scale:.2f} s) vs target < {TARGET_SECONDS_PER_DAY:.0f} s: {verdict}")
    for python, runs in others.items():
        best = min(runs) * scale
        verdict = "met" if best < TARGET_SECONDS_PER_DAY else "NOT met"
        print(f"whole day under {described[python]}: {best:.2f} s vs target < "
              f"{TARGET_SECONDS_PER_DAY:.0f} s: {verdict}")
    print(f"best of {args.repeat}; windows by label: {dict(sorted(labels.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
