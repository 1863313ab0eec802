"""`ai-bottleneck plan` as a user runs it: the installed command in a subprocess, GPUs
from the fake NVML state file, a real recording, a real iperf3 server on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import RecordWriter, make_header
from tests.clitool import assert_no_traceback, assert_one_line_error, clean_env, fake_gpu_env, run
from tests.fakes.fake_nvml import make_gpus, write_state
from tests.servers import HttpServer, ServerConfig
from tests.test_iperf3_probe import free_port, wait_listening
from tests.test_plan import LLAMA_2_7B, LLAMA_31_8B, write_gguf

GIB = 2**30


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Two 24 GiB GPUs seen through the fake NVML."""
    state = tmp_path / "nvml.json"
    write_state(state, make_gpus(2, name="NVIDIA L4", memory_total_bytes=24 * GIB))
    config = tmp_path / "config.toml"
    config.write_text("")
    return fake_gpu_env(tmp_path, state, config)


def plan_json(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    proc = run(["plan", *args, "--json"], env, cwd)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_json_has_the_designed_fields_and_the_host_gpus(tmp_path: Path,
                                                        env: dict[str, str]) -> None:
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_31_8B))
    out = plan_json(["--model", str(folder), "--context", "8192", "--concurrency", "8"],
                    env, tmp_path)
    for key in ("weights_bytes", "kv_cache_bytes_per_token", "kv_cache_bytes",
                "vram_needed_bytes", "vram_available_bytes",
                "bandwidth_needed_bits_per_second", "fits", "evidence"):
        assert key in out
    assert out["kv_cache_bytes_per_token"] == 131072
    assert out["kv_cache_bytes"] == 131072 * 8192 * 8
    assert out["vram_available_bytes"] == 2 * 24 * GIB
    assert isinstance(out["fits"], bool) and out["fits"]
    assert all(isinstance(e, str) for e in out["evidence"])
    assert any("2 GPUs (NVIDIA L4)" in e for e in out["evidence"]), out["evidence"]


def test_text_names_the_verdict_and_the_cheapest_change(tmp_path: Path,
                                                        env: dict[str, str]) -> None:
    folder = tmp_path / "llama2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_2_7B))
    proc = run(["plan", "--model", str(folder), "--gpu-memory", "8GB", "--context", "2048"],
               env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verdict: DOES NOT FIT" in proc.stdout
    assert "cheapest change:" in proc.stdout and "quantise the weights to" in proc.stdout
    proc = run(["plan", "--model", str(folder), "--dtype", "int4", "--gpu-memory", "8GB",
                "--context", "2048"], env, tmp_path)
    assert "verdict: FITS" in proc.stdout, proc.stdout


def test_kv_cache_in_fp8_halves_it(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_31_8B))
    base = ["--model", str(folder), "--gpu-memory", "24GB", "--context", "16384",
            "--concurrency", "3"]
    wide = plan_json(base, env, tmp_path)
    assert not wide["fits"] and wide["cheapest_change"]["kind"] == "kv_cache_fp8"
    narrow = plan_json([*base, "--kv-cache-dtype", "fp8"], env, tmp_path)
    assert narrow["kv_cache_bytes_per_token"] == 65536 and narrow["fits"]
    assert narrow["vram_needed_bytes"] == wide["cheapest_change"]["vram_needed_bytes"]


def test_gguf_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    out = plan_json(["--model", str(path)], env, tmp_path)
    assert out["model"]["architecture"] == "llama"
    assert out["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 2


def test_bandwidth_against_the_article_figures(tmp_path: Path, env: dict[str, str]) -> None:
    # 10 users uploading 5 MB within 4 s need 100 Mbit/s.
    out = plan_json(["--params", "7B", "--dtype", "int4", "--payload", "5MB",
                     "--concurrency", "10", "--latency", "4s"], env, tmp_path)
    assert out["bandwidth_needed_bits_per_second"] == pytest.approx(100e6)


def record(path: Path, samples: list[Sample]) -> None:
    with RecordWriter(path, make_header(window_seconds=10.0)) as w:
        w.write_many(samples)


def test_from_recording_answers_where_the_host_saturates(tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    path = tmp_path / "run.jsonl"
    samples = [Sample(t=float(t), probe="gpu", labels={"gpu": "0", "uuid": "GPU-1",
                                                       "name": "NVIDIA A10"},
                      values={"utilization_ratio": 0.5, "memory_used_bytes": 1e9,
                              "memory_total_bytes": 24e9}) for t in range(3)]
    samples += [Sample(t=float(t), probe="http", labels={"target": "http://api/ocr"},
                       values={"total_seconds": 1.0, "status": 200, "server_seconds": 0.5,
                               "request_bytes": 5e6, "response_bytes": 2e3})
                for t in range(4)]
    samples += [Sample(t=1.0, probe="engine", labels={"engine": "vllm", "target": "x"},
                       values={"requests_running": 4, "requests_waiting": 0}),
                Sample(t=1.0, probe="nic", labels={"nic": "eth0"},
                       values={"link_speed_bits_per_second": 1e9}),
                Sample(t=2.0, probe="download", labels={"url": "http://mirror/big"},
                       values={"bits_per_second": 100e6, "bytes": 5e7, "seconds": 4.0})]
    record(path, samples)
    out = plan_json(["--from", str(path)], env, tmp_path)
    sat = out["saturation"]
    assert sat["requests"] == 4
    assert sat["gpu_requests_per_second"] == pytest.approx(4 / 0.5)
    # The measured 100 Mbit/s path, not the 1 Gbit/s NIC, carries the 5 MB uploads.
    assert sat["link_requests_per_second"] == pytest.approx(100e6 / (5e6 * 8))
    assert sat["limited_by"] == "link"
    assert out["concurrency"] == 4
    text = run(["plan", "--from", str(path)], env, tmp_path).stdout
    assert "saturates at: about 2.5 requests/s, limited by the link" in text, text


def test_recording_without_what_saturation_needs_cannot_tell(tmp_path: Path,
                                                            env: dict[str, str]) -> None:
    path = tmp_path / "bare.jsonl"
    record(path, [Sample(t=1.0, probe="host", values={"cpu_utilization_ratio": 0.2})])
    out = plan_json(["--from", str(path)], env, tmp_path)
    assert out["fits"] is False and out["unchecked"] == ["saturation"]
    assert out["saturation"]["arrival_rate_per_second"] is None


def test_measure_runs_the_iperf3_probe(tmp_path: Path, env: dict[str, str]) -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("the iperf3 program is not installed")
    port = free_port()
    server = subprocess.Popen(["iperf3", "--server", "--one-off", "--bind", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_listening(server.pid, port)
        out = plan_json(["--payload", "5MB", "--latency", "1", "--measure",
                         "--iperf3", f"127.0.0.1:{port}"], env, tmp_path)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)
    assert out["bandwidth_available_bits_per_second"] > 40e6
    assert any("iperf3 to 127.0.0.1" in e for e in out["evidence"]), out["evidence"]
    assert out["fits"]


def test_measure_runs_the_download_probe_on_a_thin_link(tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    # The server sends at 2 MB/s (16 Mbit/s): ten 1 MB uploads within 2 s need 40 Mbit/s.
    config = ServerConfig("stream", body_bytes=50_000_000, body_rate=2e6)
    with HttpServer(config) as server:
        out = plan_json(["--payload", "1MB", "--latency", "2", "--concurrency", "10",
                         "--measure", "--download", server.url("/big")], env, tmp_path)
    assert out["bandwidth_available_bits_per_second"] == pytest.approx(16e6, rel=0.2)
    assert out["bandwidth_fits"] is False and not out["fits"]
    by_kind = {c["kind"]: c for c in out["changes"]}
    assert by_kind["wider_link"]["bandwidth_needed_bits_per_second"] == pytest.approx(40e6)
    assert by_kind["fewer_concurrent"]["concurrency"] in (3, 4)  # 16 Mbit/s x 2 s / 8 Mbit
    assert any("download to " in e for e in out["evidence"]), out["evidence"]


@pytest.fixture
def bad_files(tmp_path: Path) -> Iterator[Path]:
    good = tmp_path / "good.gguf"
    write_gguf(good)
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:50])
    st = tmp_path / "st"
    st.mkdir()
    (st / "config.json").write_text(json.dumps(LLAMA_2_7B))
    (st / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    yield tmp_path


@pytest.mark.parametrize("args,fragment", [
    (["--model", "missing"], "no such file"),
    (["--model", "cut.gguf"], "truncated"),
    (["--model", "st"], "corrupt header"),
    (["--model", "badjson"], "not valid JSON"),
    (["--model", "good.gguf", "--params", "7B"], "not both"),
    (["--params", "seven"], "--params"),
    (["--params", "0"], "--params"),
    (["--params", "7B", "--context", "0"], "--context"),
    (["--params", "7B", "--concurrency", "-3"], "--concurrency"),
    (["--payload", "-5MB", "--latency", "1"], "--payload"),
    (["--payload", "0", "--latency", "1"], "--payload"),
    (["--payload", "5MB"], "--latency"),
    (["--payload", "5MB", "--latency", "0s"], "--latency"),
    (["--params", "7B", "--gpu-memory", "lots"], "--gpu-memory"),
    (["--params", "7B", "--dtype", "int3"], "--dtype"),
    (["--from", "missing.jsonl"], "no such file"),
    (["--params", "7B", "--measure"], "--measure"),
    ([], "nothing to plan"),
])
def test_bad_input_is_one_line_and_exit_2(bad_files: Path, args: list[str],
                                          fragment: str) -> None:
    proc = run(["plan", *args], clean_env(bad_files), bad_files)
    assert_one_line_error(proc, fragment)
