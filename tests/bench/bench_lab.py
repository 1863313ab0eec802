"""The scenario lab benchmark: every scenario played against `ai-bottleneck diagnose`,
graded per label, with the issue's targets beside the measured figures.

    python -m tests.bench.bench_lab [--quick] [--out results.json] [--scenario NAME]...
        [--min-f1 F] [--record-dir DIR] [--keep DIR] [--no-retry]

Full: windows of 10 s sampled every second (the agent's defaults), twelve windows a phase,
about 30 minutes. ``--quick``: the CI lengths (5 s windows every 0.5 s, five windows a
phase), about 8 minutes. Needs root (network namespaces, tc). Prints the table and writes
the JSON (``--out``); exits 1 when macro-F1 is under ``--min-f1`` (default: 0.9 with
--quick, the target 0.95 otherwise) or a scenario could not be played, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tests.lab.runner import FULL, QUICK
from tests.lab.suite import TARGETS, run_suite, scenarios_for

QUICK_MIN_F1 = 0.9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_lab",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI lengths instead of the full ones")
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--scenario", action="append", default=[], metavar="NAME",
                    help="play only this scenario (repeatable; default: all)")
    ap.add_argument("--min-f1", type=float, default=None,
                    help=f"exit 1 under this macro-F1 (default {QUICK_MIN_F1} with --quick, "
                         f"{TARGETS.macro_f1} otherwise)")
    ap.add_argument("--record-dir", type=Path,
                    help="keep each run's recording (NAME.jsonl.gz) and ground truth "
                         "(NAME.json) here")
    ap.add_argument("--keep", type=Path, help="keep the working files (logs, configs) here")
    ap.add_argument("--no-retry", action="store_true",
                    help="never play a scenario again when other work disturbed it")
    args = ap.parse_args(argv)
    settings = QUICK if args.quick else FULL
    names = args.scenario or list(scenarios_for(settings))
    known = scenarios_for(settings)
    for name in names:
        if name not in known:
            print(f"bench_lab: unknown scenario {name!r} (known: {', '.join(known)})",
                  file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("bench_lab: needs root (network namespaces and tc rate limits)", file=sys.stderr)
        return 2
    min_f1 = args.min_f1 if args.min_f1 is not None else (
        QUICK_MIN_F1 if args.quick else TARGETS.macro_f1)
    if args.record_dir is not None:
        args.record_dir.mkdir(parents=True, exist_ok=True)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        workdir = args.keep or Path(tmp)
        result = run_suite(names, settings, workdir, record_dir=args.record_dir,
                           retry_disturbed=not args.no_retry, progress=progress)
    print(result.table())
    if args.out is not None:
        args.out.write_text(json.dumps(result.to_json(), indent=1, sort_keys=True) + "\n",
                            encoding="utf-8")
        print(f"\nresults written to {args.out}")
    macro_f1 = result.score().macro_f1
    if result.failures or macro_f1 is None or macro_f1 < min_f1:
        print(f"\nFAIL: macro-F1 {macro_f1 if macro_f1 is None else round(macro_f1, 3)} "
              f"(minimum {min_f1}), {len(result.failures)} scenario(s) not played")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
