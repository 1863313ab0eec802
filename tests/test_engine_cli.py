"""`ai-bottleneck diagnose --engine URL` end to end: the installed command, a real HTTP
server on loopback serving a vLLM metrics page that changes while it runs, the fake
NVML backend as the only fake; then the recording replayed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import clitool
from tests.engine_pages import EngineState, metrics_server, vllm
from tests.fakes.fake_nvml import make_gpus, write_state

DURATION = 8
WINDOW = 2


@dataclass
class Run:
    proc: Any
    record: Path
    home: Path
    env: dict[str, str]
    scrapes: int

    @property
    def out(self) -> dict[str, Any]:
        return dict(json.loads(self.proc.stdout))


@pytest.fixture(scope="module")
def kv_full_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A vLLM whose KV cache is full: 12 waiting, preemptions growing, requests
    finishing after 3 s in the queue; the GPU 95% busy with 90% of memory reserved."""
    home = tmp_path_factory.mktemp("engine-run")
    config = home / "config.toml"
    config.write_text("[agent]\ninterval_seconds = 0.5\n", encoding="utf-8")
    state_file = home / "nvml.json"
    write_state(state_file, make_gpus(1, utilization_percent=95, gpm={
        "sm_util": 95, "sm_occupancy": 50, "tensor_util": 40, "dram_bw_util": 30},
        memory_used_bytes=72 * 10**9))
    env = clitool.fake_gpu_env(home, state_file, config)
    state = EngineState(running=32, waiting=12, kv_usage=0.99, preemptions=7)
    stop = threading.Event()
    with metrics_server(vllm(state)) as server:
        def serve() -> None:
            while not stop.wait(0.25):  # bounded by the run below
                state.preemptions += 1
                state.finish(2, queue=3.0, ttft=3.2, inter_token=0.03, compute=1.0)
                server.page = vllm(state)
        changer = threading.Thread(target=serve, daemon=True)
        changer.start()
        record = home / "run.jsonl"
        try:
            proc = clitool.run(["diagnose", "--duration", f"{DURATION}s", "--window",
                                f"{WINDOW}s", "--json", "--record", str(record),
                                "--engine", server.url], env, home)
        finally:
            stop.set()
            changer.join(timeout=5)
        scrapes = server.scrapes
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    yield Run(proc, record, home, env, scrapes)


def test_diagnose_reads_the_engine_and_names_the_full_kv_cache(kv_full_run: Run) -> None:
    out = kv_full_run.out
    assert kv_full_run.scrapes >= DURATION  # every 0.5 s, give or take start-up
    labels = [w["label"] for w in out["windows"]]
    assert out["verdict"]["label"] == "vram_bound", (labels, out["verdict"])
    assert labels.count("vram_bound") >= len(labels) - 1, labels
    evidence = "\n".join(out["windows"][-1]["evidence"])
    assert "KV cache 99% used" in evidence and "12 request(s) waiting" in evidence
    assert "preempted in this window" in evidence


def test_the_recording_has_engine_samples_and_replays_to_the_live_labels(
        kv_full_run: Run) -> None:
    lines = kv_full_run.record.read_text(encoding="utf-8").splitlines()
    engine = [json.loads(line) for line in lines[1:] if '"probe": "engine"' in line
              or '"probe":"engine"' in line]
    assert engine and engine[-1]["labels"]["engine"] == "vllm"
    assert engine[-1]["values"]["kv_cache_usage_ratio"] == 0.99
    assert any("queue_seconds" in s["values"] for s in engine)
    proc = clitool.run(["replay", str(kv_full_run.record), "--json"], kv_full_run.env,
                       kv_full_run.home)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    replayed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert replayed == kv_full_run.out["windows"]


def test_the_report_gives_the_engine_key_numbers(kv_full_run: Run) -> None:
    proc = clitool.run(["replay", str(kv_full_run.record)], kv_full_run.env, kv_full_run.home)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, x in enumerate(lines) if x.split()[:2] == ["ENGINE", "RUN"])
    assert lines[header].split() == ["ENGINE", "RUN", "WAIT", "KV", "PREEMPT", "QUEUE",
                                     "P95", "TTFT", "P95", "ITL", "P95"]
    assert all(len(x) <= 80 for x in lines[header:header + 3]), lines[header:header + 3]
    row = lines[header + 1].split()
    # running and waiting as mean/highest window, KV peak, preemptions, then the
    # queue p95 (mean/worst window) the engine measured; the URL on a line below.
    assert row[0] == "vllm" and row[2] == "12/12" and row[3] == "99%", row
    assert int(row[4]) > 0 and row[5] != "-", row
    assert lines[header + 2].startswith("  vllm at http://127.0.0.1:"), lines[header + 2]


def test_probes_lists_the_engine_probe(tmp_path: Path) -> None:
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(tmp_path / "none.toml")})
    (tmp_path / "none.toml").write_text("", encoding="utf-8")
    proc = clitool.run(["probes"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("engine "))
    assert "unusable" in row and "--engine" in row


def test_a_bad_engine_url_is_one_line_blaming_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(config)})
    proc = clitool.run(["diagnose", "--duration", "1s", "--window", "1s", "--engine",
                        "ftp://x/metrics"], env, tmp_path)
    clitool.assert_one_line_error(proc, "--engine", "ftp://x/metrics")


def test_engine_targets_in_the_config_are_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[probes.engine]\ntargets = ["http://127.0.0.1:8000/metrics", '
                    '{ url = "http://10.0.0.7:8002/metrics", engine = "triton" }]\n',
                    encoding="utf-8")
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(good)})
    proc = clitool.run(["probes"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("engine "))
    assert "usable" in row and "2 metrics endpoints" in row, row
    bad = tmp_path / "bad.toml"
    bad.write_text('[probes.engine]\ntargets = [{ url = "http://h/metrics", engine = "ollama" }]\n',
                   encoding="utf-8")
    proc = clitool.run(["diagnose", "--config", str(bad), "--duration", "1s", "--window", "1s"],
                       env, tmp_path)
    clitool.assert_one_line_error(proc, "probes.engine.targets[0].engine", "ollama")
