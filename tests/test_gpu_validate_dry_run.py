"""The validation run's dry run: tests/gpu/validate.py end to end on this machine.

The same orchestration as on a lent GPU machine, with the fake NVML backend in file
mode, a stand-in nvidia-smi reading the same state, and a stand-in load worker that
sets the fake readings each phase would give (tests/gpu/standin_*.py), phases of a
few seconds. It shows that every step runs inside its limits, that every output
file and field is there and parses, and that a run cut short by its deadline still
leaves its outputs and no process behind. What a real card reads is the device
run's business (docs/validation.md); nothing here stands for it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.assembly import assemble_replay
from tests.clitool import LABELS, REPO_ROOT
from tests.gpu import fixtures, smi
from tests.gpu.phases import BY_NAME, PHASES
from tests.gpu.summary import OUTPUTS

pytestmark = pytest.mark.slow
OVERHEAD_SECONDS = 4.0
CONTEXTS = {"idle", *(p.name for p in PHASES)}


def _dry_run(out: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.gpu.validate", "--dry-run", "--out", str(out),
         "--work", str(work), "--overhead-seconds", str(OVERHEAD_SECONDS), *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("validate")
    done = _dry_run(base / "out", base / "work")
    summary = json.loads((base / "out" / "summary.json").read_text())
    return {"proc": done, "out": base / "out", "summary": summary, "base": base}


def _member(out: Path, name: str) -> bytes:
    with tarfile.open(out / "validation.tar.gz") as tar:
        member = tar.extractfile(f"validation/{name}")
        assert member is not None, name
        return member.read()


def test_the_dry_run_ends_well_and_leaves_every_output(run: dict[str, Any]) -> None:
    proc, s = run["proc"], run["summary"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in run["out"].iterdir()) == sorted(OUTPUTS)
    assert s["mode"] == "dry-run" and s["ok"] is True and not s["deadline_hit"]
    assert [x["name"] for x in s["steps"]] == [
        "install", "probes", "compare_idle", "phases", "overhead"]
    assert all(x["rc"] == 0 and not x.get("timed_out") for x in s["steps"])
    log = (run["out"] / "run.log").read_text()
    for step in ("install_check", "probes", "compare_idle", "overhead", *(
            f"diagnose_{p.name}" for p in PHASES)):
        assert f"{step}: rc=0" in log or f"{step}:" in log, step


def test_the_install_check_and_probes_see_the_package_and_the_gpu(
        run: dict[str, Any]) -> None:
    found = run["summary"]["card"]["installed"]
    assert found["version"] and found["missing"] == []
    assert {"gpu", "host", "nic", "oom"} <= set(found["probes"])
    assert "nvidia-ml-py" in found["requirements"]
    probes = _member(run["out"], "probes.out").decode()
    gpu_line = next(line for line in probes.splitlines() if line.startswith("gpu "))
    assert "usable" in gpu_line and "Fake NVIDIA H200 (dry run)" in gpu_line
    assert run["summary"]["probes"]["gpu"].startswith("usable: 1 GPU(s)")
    assert run["summary"]["probes"]["iperf3"].startswith("unusable: ")
    assert run["summary"]["card"]["nvidia_smi"]["name"] == "Fake NVIDIA H200 (dry run)"


def test_every_nvml_value_stands_beside_nvidia_smi_in_every_context(
        run: dict[str, Any]) -> None:
    with open(run["out"] / "nvml_vs_smi.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["context"] for r in rows} == CONTEXTS
    for context in CONTEXTS:
        values = {r["value"] for r in rows if r["context"] == context}
        wanted = {p.ours for p in smi.PAIRS} | {v for v, _ in smi.GPM_METRICS} | {
            v for v, _ in smi.PCIE_COLUMNS} | {"name", "uuid", "pci_bus_id", "process_count"}
        assert wanted <= values, (context, wanted - values)
    # Both sides read one fake state: every value compared must agree, which holds
    # only if units, scales and parsing (CSV, hex masks, flags, dmon columns) are right.
    compared = [r for r in rows if r["agree"] in ("True", "False")]
    assert len(compared) >= 25 * len(CONTEXTS)
    assert [r for r in compared if r["agree"] != "True"] == []
    busy = {r["value"]: r for r in rows if r["context"] == "matmul"}
    assert float(busy["sm_active_ratio"]["nvidia_smi"]) == pytest.approx(0.97)
    assert float(busy["utilization_ratio"]["ours"]) == pytest.approx(1.0)
    held = {r["value"]: r for r in rows if r["context"] == "memory_held"}
    assert float(held["process_count"]["ours"]) == 1.0
    (per_pid,) = [r for v, r in held.items() if v.endswith(" process_memory_used_bytes")]
    assert per_pid["agree"] == "True" and float(per_pid["ours"]) > 0.9 * 143771 * 2**20


def test_each_phase_is_recorded_labelled_and_replays_to_the_live_labels(
        run: dict[str, Any], tmp_path: Path) -> None:
    phases = {p["name"]: p for p in run["summary"]["phases"]}
    assert list(phases) == [p.name for p in PHASES]
    for name, p in phases.items():
        assert p["recording_bytes"] and p["windows"], name
        assert p["worker_ready"]["phase"] == name and p["worker_stopped"]["phase"] == name
        assert all(w["label"] in LABELS for w in p["windows"]), name
        assert p["evidence"], name
        assert p["gpm"] is True and p["expected_label"] == BY_NAME[name].expected_label
        recording = tmp_path / f"{name}.jsonl.gz"
        recording.write_bytes(_member(run["out"], f"rec/{name}.jsonl.gz"))
        assert [r.label for r in assemble_replay(recording).results] == [
            w["label"] for w in p["windows"]], name
    # Rules that come before any CPU rule, so a busy test machine cannot change them:
    assert phases["matmul"]["majority_label"] == "gpu_bound"
    assert phases["copy"]["majority_label"] == "gpu_bound"
    assert phases["oom"]["majority_label"] == "vram_bound"
    assert phases["oom"]["worker_stopped"]["failures"] >= 2
    assert "out-of-memory" in " ".join(phases["oom"]["evidence"])
    assert "CUDA out of memory" in _member(run["out"], "worker.log").decode()


def test_nvidia_smi_is_only_ever_asked_to_read(run: dict[str, Any]) -> None:
    # The card's settings are never changed: every call is a query, a listing or dmon.
    calls = [json.loads(line) for line in _member(
        run["out"], "nvidia_smi_calls.jsonl").decode().splitlines()]
    assert len(calls) >= 4 * len(CONTEXTS) + 1
    for argv in calls:
        if argv[0] == "dmon":
            assert set(argv[1:]) <= {"-c", "1", "-s", "t", "--gpm-metrics", "2,3,5,10"}, argv
        elif argv == ["--help-query-gpu"]:
            pass
        else:
            kinds = {a.split("=", 1)[0] for a in argv}
            assert kinds <= {"--query-gpu", "--query-compute-apps", "--format", "-l", "1"}, argv


def test_the_overhead_figures_cover_the_span_for_both_programs(run: dict[str, Any]) -> None:
    o = run["summary"]["overhead"]
    assert o["seconds"] == pytest.approx(OVERHEAD_SECONDS, abs=1.5)
    for who in ("agent", "nvidia_smi"):
        assert o[who]["total"] >= 0 and o[who]["per_second"] >= 0, who
    assert o["nvidia_smi_rows"] >= OVERHEAD_SECONDS - 1
    assert "ratio_agent_to_nvidia_smi" in o and o["agent_peak_rss_bytes"] > 0


def test_fixtures_made_from_a_run_name_the_card_and_refuse_the_fake(
        run: dict[str, Any], tmp_path: Path) -> None:
    written = fixtures.make(run["out"], tmp_path)
    assert len(written) == 2 * len(PHASES)
    for name in ("matmul", "copy", "oom"):
        sidecar = tmp_path / f"{name}.json"
        assert fixtures.problems(sidecar, real_card=False) == [], name
        found = fixtures.problems(sidecar, real_card=True)
        assert len(found) == 1 and "not on a real card" in found[0], found
    # An expectation that does not fit the recording's signal (GPM here) is caught.
    sidecar = tmp_path / "matmul.json"
    document = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**document, "expected_label": "idle"}))
    found = fixtures.problems(sidecar, real_card=False)
    assert any("the phase expects 'gpu_bound' with GPM" in f for f in found), found


def test_a_second_try_runs_only_the_phases_asked_for(tmp_path: Path) -> None:
    done = _dry_run(tmp_path / "out", tmp_path / "work", "--steps", "phases",
                    "--phases", "oom")
    assert done.returncode == 0, done.stdout + done.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["ok"] is True and [p["name"] for p in s["phases"]] == ["oom"]
    assert s["phases"][0]["majority_label"] == "vram_bound"
    bad = _dry_run(tmp_path / "out2", tmp_path / "work2", "--phases", "nope")
    assert bad.returncode == 2 and "unknown step or phase 'nope'" in bad.stdout
    # a scratch folder that is not an earlier run's is never emptied
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    refused = _dry_run(tmp_path / "out3", tmp_path / "mine")
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert (tmp_path / "mine" / "keep.txt").exists()


def test_a_run_past_its_deadline_keeps_its_outputs_and_leaves_no_process(
        tmp_path: Path) -> None:
    done = _dry_run(tmp_path / "out", tmp_path / "work", "--deadline-seconds", "8")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["deadline_hit"] is True and s["ok"] is False
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    assert len(s["phases"]) < len(PHASES) and s["pids"]
    # the phase the deadline cut is listed; only complete recordings become fixtures
    made = fixtures.make(tmp_path / "out", tmp_path / "fixtures")
    assert {p.stem for p in made if p.suffix == ".json"} == {
        p["name"] for p in s["phases"] if p["diagnose_rc"] == 0}
    alive = [pid for pid in s["pids"] if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    assert alive == []
