"""Turning a validation run's recordings into replay fixtures, and checking them.

After a run on a real card, with its outputs fetched to DIR (the folder holding
validation.tar.gz and summary.json):

    python -m tests.gpu.fixtures DIR            # writes tests/data/gpu/PHASE.{jsonl.gz,json}

Each fixture is the phase's recording, byte for byte in its samples, with one
field added to its header: ``validation`` names the card (nvidia-smi's name,
driver, the date), the phase and the label expected of it. Beside it,
PHASE.json keeps the labels the live run gave and the worker's figures.
tests/test_gpu_recordings.py replays every fixture and holds it to both.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ai_bottleneck.assembly import assemble_replay
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.record import RecordReader
from tests.gpu.phases import BY_NAME

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data" / "gpu"
FAKE_UUID_PREFIX = "GPU-fa4e"  # tests/fakes/nvml_state.make_gpus
MAX_FIXTURE_BYTES = 300_000


def _member(tar: tarfile.TarFile, name: str) -> bytes | None:
    try:
        member = tar.extractfile(f"validation/{name}")
    except KeyError:
        return None
    return member.read() if member is not None else None


def gpm_read(samples: Iterable[Sample]) -> bool:
    """Whether GPM was read in most of the recording's GPU samples (else: coarse only)."""
    flags = [s.values.get("gpm_available") for s in samples
             if s.probe == "gpu" and s.ok and "pid" not in s.labels]
    return bool(flags) and 2 * sum(1 for f in flags if f == 1.0) > len(flags)


def make(run_dir: Path, dest: Path = FIXTURES) -> list[Path]:
    """Write one fixture per recorded phase of the run in ``run_dir``; their paths."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    smi = summary["card"].get("nvidia_smi") or {}
    if not smi.get("name"):
        raise SystemExit(f"{run_dir}: summary.json names no card (nvidia-smi gave no name)")
    date = time.strftime("%Y-%m-%d", time.gmtime(summary["started"]))
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(run_dir / "validation.tar.gz") as tar:
        for phase in summary["phases"]:
            name = phase["name"]
            raw = _member(tar, f"rec/{name}.jsonl.gz")
            if raw is None or phase.get("diagnose_rc") != 0:
                print(f"{name}: no complete recording in the run (diagnose exit "
                      f"{phase.get('diagnose_rc')}); left out", file=sys.stderr)
                continue
            header_line, _, body = gzip.decompress(raw).partition(b"\n")
            header = json.loads(header_line)
            recording = dest / f"{name}.jsonl.gz"
            recording.write_bytes(raw)
            reader = RecordReader(recording)
            gpm = gpm_read(reader)
            reader.close()
            expected = BY_NAME[name].expected(gpm)
            header["validation"] = {
                "card": smi["name"], "driver_version": smi.get("driver_version"),
                "uuid": smi.get("uuid"), "date": date, "mode": summary["mode"],
                "phase": name, "gpm": gpm, "expected_label": expected}
            recording.write_bytes(gzip.compress(
                json.dumps(header, separators=(",", ":")).encode() + b"\n" + body, mtime=0))
            sidecar = {"phase": name, "expected_label": expected, "gpm": gpm,
                       "load": BY_NAME[name].load, "why": BY_NAME[name].why,
                       "live_labels": [w["label"] for w in phase["windows"]],
                       "card": smi["name"], "date": date, "mode": summary["mode"],
                       "worker_ready": phase.get("worker_ready"),
                       "worker_stopped": phase.get("worker_stopped")}
            sidecar_path = dest / f"{name}.json"
            sidecar_path.write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
            written += [recording, sidecar_path]
    return written


def discover(where: Path = FIXTURES) -> list[Path]:
    """The fixtures' sidecars (PHASE.json with a PHASE.jsonl.gz beside it)."""
    return sorted(p for p in where.glob("*.json") if p.with_suffix(".jsonl.gz").exists())


def problems(sidecar_path: Path, *, real_card: bool = True) -> list[str]:
    """Why this fixture does not hold; empty when it does.

    The header must name the card the samples came from; with ``real_card`` the
    run must have been on a device, not the dry run's fake. The replayed labels
    must equal the live run's, and the majority must be the expected label.
    """
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    recording = sidecar_path.with_suffix(".jsonl.gz")
    found: list[str] = []
    if recording.stat().st_size > MAX_FIXTURE_BYTES:
        found.append(f"{recording.name}: {recording.stat().st_size} bytes, over "
                     f"{MAX_FIXTURE_BYTES}")
    reader = RecordReader(recording)
    validation = reader.header.get("validation") or {}
    card = validation.get("card")
    samples = list(reader)
    reader.close()
    names = {s.labels["name"] for s in samples if s.probe == "gpu" and "name" in s.labels}
    if not card:
        found.append("the header names no card (field validation.card)")
    elif names != {card}:
        found.append(f"the header names {card!r} but the GPU samples name {sorted(names)}")
    if real_card and (validation.get("mode") != "device"
                      or str(validation.get("uuid", "")).startswith(FAKE_UUID_PREFIX)):
        found.append(f"recorded in mode {validation.get('mode')!r} (uuid "
                     f"{validation.get('uuid')}), not on a real card")
    phase = BY_NAME.get(sidecar["phase"])
    if phase is None:
        found.append(f"{sidecar['phase']!r} is not a phase of tests/gpu/phases.py")
    elif sidecar["expected_label"] != phase.expected(gpm_read(samples)):
        found.append(f"expected label {sidecar['expected_label']!r}, but the phase expects "
                     f"{phase.expected(gpm_read(samples))!r} with "
                     f"{'GPM' if gpm_read(samples) else 'the coarse signal only'}")
    if validation.get("expected_label") != sidecar["expected_label"]:
        found.append("header and sidecar disagree on the expected label")
    replayed = [r.label for r in assemble_replay(recording).results]
    if replayed != sidecar["live_labels"]:
        found.append(f"replay gives {replayed}, the live run gave {sidecar['live_labels']}")
    if replayed:
        label, count = Counter(replayed).most_common(1)[0]
        if label != sidecar["expected_label"] or 2 * count <= len(replayed):
            found.append(f"phase {sidecar['phase']}: expected {sidecar['expected_label']}, "
                         f"replayed windows {replayed}")
    else:
        found.append("the recording replays to no window")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the fetched outputs of a validation run")
    parser.add_argument("--dest", type=Path, default=FIXTURES)
    args = parser.parse_args(argv)
    for path in make(args.run_dir, args.dest):
        print(path)
    bad = 0
    for sidecar in discover(args.dest):
        found = problems(sidecar, real_card=False)
        bad += bool(found)
        print(f"{sidecar.stem}: {'; '.join(found) or 'replays as expected'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
