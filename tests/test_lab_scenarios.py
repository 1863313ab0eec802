"""The scenario lab, live: every scenario played against `ai-bottleneck diagnose` at CI
lengths (tests/lab/runner.py QUICK: 5 s windows, five a phase; about 11 minutes), graded
together. Fails when macro-F1 drops under 0.9; the table (figures beside the issue's
targets) is printed either way. The full lengths are the benchmark's:
`python -m tests.bench.bench_lab`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.runner import QUICK
from tests.lab.suite import run_suite, scenarios_for

MIN_MACRO_F1 = 0.9
#: Retries of scenarios that other work on the host disturbed stop here, so the test stays
#: under 15 minutes (the first attempts take about 11, the two shared-host scenarios on
#: real cgroups about 2 of them).
BUDGET_SECONDS = 13.5 * 60


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.slow
def test_quick_scenarios_label_above_the_f1_floor(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_suite(list(scenarios_for(QUICK)), QUICK, tmp_path,
                       budget_seconds=BUDGET_SECONDS, progress=lines.append)
    table = "\n".join([*lines, "", result.table()])
    print(table)
    assert not result.failures, table
    assert len(result.runs) == len(scenarios_for(QUICK)), table
    macro_f1 = result.score().macro_f1
    assert macro_f1 is not None and macro_f1 >= MIN_MACRO_F1, table
