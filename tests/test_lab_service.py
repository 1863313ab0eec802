"""The lab's stand-in inference service as a real process under real load: the simulated GPU
follows the work, runs out of memory like PyTorch does, the CPU step really loads the host,
and uploads through a shaped namespace link take the time the rate implies."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.lab.load import BackgroundLoad, run_load
from tests.lab.service import ServiceHandle, ServiceParams, start_service
from tests.lab.simgpu import GIB, GpuOutOfMemory, GpuParams, SimGpu, read_published
from tests.netns import netns_link

OOM_LINE = re.compile(
    r"ERROR lab-service\[\d+\]: torch\.OutOfMemoryError: CUDA out of memory\. "
    r"Tried to allocate 4\.00 GiB\. GPU 0 has a total capacity of 80\.00 GiB of which "
    r"\d+\.\d\d GiB is free\.")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    root = tmp_path_factory.mktemp("lab-service")
    with start_service(root / "gpu.json", root / "service.log", cpu_workers=2) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _default_params(request: pytest.FixtureRequest) -> None:
    if "service" in request.fixturenames:
        request.getfixturevalue("service").control(**ServiceParams().to_json())


def _poll(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool],
          seconds: float) -> tuple[bool, list[dict[str, Any]]]:
    """Read until ``done`` or ``seconds`` pass; every reading is returned."""
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings.append(read())
        if done(readings[-1]):
            return True, readings
        time.sleep(0.05)
    return False, readings


def test_health_and_live_control(service: ServiceHandle) -> None:
    health = service.health()
    assert health["status"] == "ok"
    assert health["params"] == ServiceParams().to_json()
    assert health["gpu"]["memory_used_bytes"] == ServiceParams().memory_base_bytes

    changed = service.control(gpu_slots=3, compute_seconds=0.02)
    assert changed["gpu_slots"] == 3 and changed["compute_seconds"] == 0.02
    assert service.health()["params"] == changed

    for body, problem in ((b'{"gpu_slot": 2}', "gpu_slot: unknown key"),
                          (b'{"gpu_slots": 0}', "gpu_slots: must be >= 1"),
                          (b'{"compute_seconds": "fast"}', "compute_seconds"),
                          (b"not json", "body is not JSON"),
                          (b"[1]", "body must be a JSON object")):
        answer = httpx.post(f"{service.url}/control", content=body, timeout=10, trust_env=False)
        assert answer.status_code == 400, body
        error = answer.json()["error"]
        assert problem in error and "\n" not in error
    assert service.health()["params"] == changed  # a rejected change changes nothing


def test_infer_answers_with_timing_and_the_configured_size(service: ServiceHandle) -> None:
    service.control(response_bytes=12_345, compute_seconds=0.05)
    with httpx.Client(timeout=10, trust_env=False) as client:
        answer = client.post(service.infer_url, content=b"x" * 300_000)
        missing = client.post(f"{service.url}/nothing", content=b"")
        chunked = client.post(service.infer_url, content=iter([b"a", b"b"]))
    assert answer.status_code == 200
    assert len(answer.content) == 12_345
    assert answer.headers["X-Upload-Bytes"] == "300000"
    timing = dict(part.strip().split(";dur=") for part in
                  answer.headers["Server-Timing"].split(","))
    assert set(timing) == {"upload", "cpu", "queue", "gpu"}
    assert float(timing["gpu"]) >= 50.0  # milliseconds: the compute step was taken
    assert missing.status_code == 404
    assert chunked.status_code == 411


def test_a_client_leaving_mid_upload_costs_one_log_line(service: ServiceHandle) -> None:
    log_before = service.log.stat().st_size
    url = urlsplit(service.url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: lab\r\nContent-Length: 1000000\r\n\r\n"
                     + b"x" * 1000)
    ended, _ = _poll(lambda: {"log": service.log.read_text()[log_before:]},
                     lambda r: "client left after 1000 of 1000000 bytes" in r["log"], 5)
    assert ended
    assert "Traceback" not in service.log.read_text()
    assert service.health()["status"] == "ok"


def test_control_token_and_request_size_limit(tmp_path: Path) -> None:
    with start_service(tmp_path / "gpu.json", tmp_path / "service.log", cpu_workers=0,
                       control_token="s3cret", max_request_bytes=100_000) as svc:
        refused = httpx.post(f"{svc.url}/control", json={"gpu_slots": 2}, timeout=10,
                             trust_env=False)
        assert refused.status_code == 403
        assert svc.control(gpu_slots=2)["gpu_slots"] == 2  # the handle sends the token
        too_big = httpx.post(svc.infer_url, content=b"x" * 100_001, timeout=10, trust_env=False)
        assert too_big.status_code == 413
        assert "over the limit of 100000" in too_big.json()["error"]
        fits = httpx.post(svc.infer_url, content=b"x" * 100_000, timeout=10, trust_env=False)
        assert fits.status_code == 200
    assert svc.process.returncode == 0  # SIGTERM stops it cleanly
    assert "stopped" in (tmp_path / "service.log").read_text()


def test_compute_load_raises_then_lowers_published_utilization(service: ServiceHandle) -> None:
    params = service.control(compute_seconds=0.2, gpu_slots=2)
    settled, _ = _poll(service.gpu, lambda g: g["utilization_percent"] == 0, 5)
    assert settled, "utilization did not settle at 0 with no load"

    load = BackgroundLoad(service.infer_url, 4, 50_000, duration_seconds=3.0,
                          timeout_seconds=10).start()
    try:
        busy, readings = _poll(service.gpu, lambda g: g["utilization_percent"] >= 80
                               and g["sm_active_percent"] >= 70, 4)
    finally:
        result = load.finish()
    assert busy, f"the GPU never looked busy: {readings[-3:]}"
    assert result.completed > 0 and result.failed == 0
    peak_memory = max(r["memory_used_bytes"] for r in readings)
    assert peak_memory >= params["memory_base_bytes"] + 2 * params["memory_per_request_bytes"]
    assert all(r["memory_used_bytes"] <= r["memory_total_bytes"] for r in readings)

    idle, readings = _poll(service.gpu, lambda g: g["utilization_percent"] <= 10
                           and g["in_flight"] == 0, 4)
    assert idle, f"utilization did not fall after the load: {readings[-3:]}"
    assert readings[-1]["memory_used_bytes"] == params["memory_base_bytes"]


def test_memory_exhaustion_writes_oom_lines_and_answers_500(service: ServiceHandle) -> None:
    log_before = service.log.stat().st_size
    ooms_before = service.gpu()["oom_total"]
    # Room for two requests in flight (70 + 2 x 4 <= 80 GiB); six clients hold more.
    service.control(memory_base_bytes=70 * GIB, memory_per_request_bytes=4 * GIB,
                    memory_total_bytes=80 * GIB, gpu_slots=8, compute_seconds=0.5)
    result = run_load(service.infer_url, 6, 20_000, rate_per_client=4, duration_seconds=1.5,
                      timeout_seconds=10)
    assert result.statuses[500] >= 1 and result.statuses[200] >= 1
    with service.log.open(encoding="utf-8") as log:
        log.seek(log_before)
        new_lines = log.read().splitlines()
    oom_lines = [line for line in new_lines if "OutOfMemoryError" in line]
    assert len(oom_lines) == result.statuses[500]
    assert all(OOM_LINE.search(line) for line in oom_lines), oom_lines[:2]
    seen, _ = _poll(service.gpu, lambda g: g["oom_total"] - ooms_before == len(oom_lines), 2)
    assert seen


def test_cpu_phase_really_loads_the_host_cpu(service: ServiceHandle) -> None:
    cpu_seconds = 0.25
    service.control(cpu_seconds=cpu_seconds, compute_seconds=0.01)
    workers = psutil.Process(service.process.pid).children()
    assert len(workers) >= 2

    def worker_cpu() -> float:
        return sum(sum(w.cpu_times()[:2]) for w in workers)

    before = worker_cpu()
    psutil.cpu_percent(interval=None)
    result = run_load(service.infer_url, 4, 20_000, duration_seconds=2.5, timeout_seconds=15)
    host_percent = psutil.cpu_percent(interval=None)
    used = worker_cpu() - before
    assert result.completed >= 2 and result.failed == 0
    # Each answered request burned its CPU time in a worker process, not a sleep.
    assert used >= 0.95 * cpu_seconds * result.completed
    assert host_percent >= 60, f"host CPU only {host_percent}% busy during the CPU phase"
    assert service.gpu()["utilization_percent"] <= 30  # 10 ms of GPU per 250 ms of CPU


@pytest.mark.root
def test_uploads_through_a_5_mbit_link_take_the_time_the_rate_implies(tmp_path: Path) -> None:
    rate = 5e6
    payload = 625_000  # two of these are 10 Mbit: 2 s at 5 Mbit/s
    with netns_link(rate_in_bits_per_second=rate) as link, start_service(
            tmp_path / "gpu.json", tmp_path / "service.log", bind=link.ns_addr, link=link,
            cpu_workers=0, params=ServiceParams(compute_seconds=0.01)) as svc:
        result = run_load(svc.infer_url, 2, payload, duration_seconds=15, max_requests=2,
                          timeout_seconds=20)
    assert result.completed == 2, result.to_json()
    ideal = 2 * payload * 8 / rate
    slowest, fastest = max(result.latencies_seconds), min(result.latencies_seconds)
    assert slowest >= 0.9 * ideal, f"2 x {payload} B in {slowest:.2f}s: faster than {rate} bit/s"
    assert fastest >= 0.9 * payload * 8 / rate  # even alone on the link
    assert slowest <= 4 * ideal, f"2 x {payload} B took {slowest:.2f}s"


def test_simgpu_accounts_slots_and_memory_exactly() -> None:
    """The accounting behind the published figures, with a hand-driven clock."""
    now = [0.0]
    messages: list[str] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    gpu = SimGpu(GpuParams(compute_seconds=2.0, gpu_slots=2, memory_base_bytes=10 * GIB,
                           memory_per_request_bytes=3 * GIB, memory_total_bytes=15 * GIB),
                 messages.append, clock=lambda: now[0], sleep=sleep)
    assert gpu.run().compute_seconds == 2.0
    t, any_busy, slot_busy = gpu.counters()
    assert (t, any_busy, slot_busy) == (2.0, 2.0, 2.0)
    now[0] = 4.0  # two idle seconds count for nothing
    assert gpu.counters()[1:] == (2.0, 2.0)
    gpu.configure(GpuParams(compute_seconds=1.0, gpu_slots=2, memory_base_bytes=13 * GIB,
                            memory_per_request_bytes=3 * GIB, memory_total_bytes=15 * GIB))
    with pytest.raises(GpuOutOfMemory, match=r"CUDA out of memory\. Tried to allocate 3\.00 GiB"):
        gpu.run()
    assert gpu.instant() == (13 * GIB, 0, 0, 1)
    assert len(messages) == 1 and "of which 2.00 GiB is free" in messages[0]


def test_published_file_is_the_fake_nvml_schema(service: ServiceHandle) -> None:
    document = json.loads(service.gpu_state.read_text())
    (gpu,) = document["gpus"]
    assert {"name", "uuid", "utilization_percent", "memory_used_bytes", "memory_total_bytes",
            "power_milliwatts", "gpm", "processes"} <= set(gpu)
    assert set(gpu["gpm"]) == {"sm_util", "sm_occupancy", "tensor_util", "dram_bw_util"}
    assert gpu["processes"] == [{"pid": service.process.pid, "name": "python3",
                                 "used_memory_bytes": gpu["memory_used_bytes"]}]
    assert read_published(service.gpu_state)["in_flight"] == document["lab"]["in_flight"]
