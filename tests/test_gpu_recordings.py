"""Replay of the recordings made on a real GPU by the validation run (docs/validation.md).

Each fixture under tests/data/gpu/ is one load phase recorded by `diagnose --record`
on a lent GPU machine (tests/gpu/validate.py), with its header naming the card and
the phase, and PHASE.json beside it holding the expected label and the labels the
live run gave. Every fixture must name the card its GPU samples came from, come from
a real card (not the dry run's fake), replay to the live run's labels, and have the
expected label in the majority of its windows.

No real-card recording exists yet: until a session with a GPU makes them
(`python -m tests.gpu.fixtures DIR`), the one test here is skipped, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gpu.fixtures import FIXTURES, discover, problems
from tests.gpu.phases import BY_NAME

SIDECARS = discover(FIXTURES)
NONE_YET = ("no real-GPU recordings under tests/data/gpu/ yet: they come from the "
            "validation run on a lent GPU machine (docs/validation.md)")


@pytest.mark.skipif(not SIDECARS, reason=NONE_YET)
@pytest.mark.parametrize("sidecar", SIDECARS or [None], ids=lambda p: p.stem if p else "none")
def test_each_real_gpu_recording_names_its_card_and_replays_to_its_label(
        sidecar: Path | None) -> None:
    assert sidecar is not None
    assert sidecar.stem in BY_NAME, f"{sidecar.name}: not a phase of tests/gpu/phases.py"
    assert problems(sidecar, real_card=True) == []
