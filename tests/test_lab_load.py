"""The lab's load generator against real servers on loopback: its bounds (count, time,
rate), its error accounting, and abandoning in-flight requests at the end."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.lab.load import BackgroundLoad, LoadResult, run_load
from tests.lab.service import ServiceHandle, ServiceParams, start_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    root = tmp_path_factory.mktemp("lab-load")
    with start_service(root / "gpu.json", root / "service.log", cpu_workers=0,
                       params=ServiceParams(compute_seconds=0.01, gpu_slots=8)) as handle:
        yield handle


class SilentServer:
    """Accepts connections, reads what comes (``read_delay`` seconds between 16 KiB reads)
    and never answers: a stalled upload or a server that does not respond."""

    def __init__(self, read_delay: float):
        self._read_delay = read_delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.received = 0
        self.closed_by_client = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.1)
            while not self._stop.is_set():
                try:
                    data = conn.recv(16 * 1024)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self.received += len(data)
                self._stop.wait(self._read_delay)
            else:
                return
            self.closed_by_client.set()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()


def _client_connections_to(port: int) -> list[str]:
    return [c.status for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]


@pytest.fixture
def silent_server() -> Iterator[type[SilentServer]]:
    made: list[SilentServer] = []

    class Tracked(SilentServer):
        def __init__(self, read_delay: float):
            super().__init__(read_delay)
            made.append(self)

    yield Tracked
    for server in made:
        server.close()


def test_stops_at_max_requests(service: ServiceHandle) -> None:
    result = run_load(service.infer_url, 3, 10_000, duration_seconds=20, max_requests=7,
                      timeout_seconds=10)
    assert (result.started, result.completed, result.failed) == (7, 7, 0)
    assert result.statuses == {200: 7}
    assert len(result.latencies_seconds) == 7
    assert result.bytes_sent == 70_000
    assert result.wall_seconds < 20  # the count, not the duration, ended it


def test_stops_at_the_duration(service: ServiceHandle) -> None:
    result = run_load(service.infer_url, 2, 1_000, duration_seconds=1.0, max_requests=100_000,
                      timeout_seconds=10)
    assert result.completed > 2 and result.failed == 0
    assert 1.0 <= result.wall_seconds < 1.0 + 2.0  # deadline + at most one bounded request


def test_rate_per_client_is_an_upper_bound(service: ServiceHandle) -> None:
    # Two clients at 4 requests/s for 1.5 s: client 0 sends at 0, 0.25, ... 1.25 and
    # client 1 an eighth of a second later: 12 requests, never more.
    result = run_load(service.infer_url, 2, 1_000, rate_per_client=4, duration_seconds=1.5,
                      timeout_seconds=10)
    assert 6 <= result.started <= 12
    assert result.completed == result.started


def test_ramp_staggers_the_clients(service: ServiceHandle) -> None:
    # Client 1 of 2 starts after half the 2 s ramp plus half its 1 s interval (1.5 s); at
    # one request per second each, only client 0 sends inside the first 0.9 s.
    result = run_load(service.infer_url, 2, 1_000, rate_per_client=1, duration_seconds=0.9,
                      ramp_seconds=2.0, timeout_seconds=10)
    assert result.started == 1


def test_connection_errors_are_failures_with_their_kind() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    result = run_load(f"http://127.0.0.1:{port}/infer", 2, 1_000, duration_seconds=2,
                      max_requests=5, timeout_seconds=2)
    assert result.started == 5 and result.failed == 5 and result.completed == 0
    assert result.errors == {"ConnectError": 5}
    assert result.abandoned == 0


def test_stop_abandons_a_stalled_upload(silent_server: type[SilentServer]) -> None:
    server = silent_server(read_delay=0.05)  # ~300 KiB/s: 20 MB would take a minute
    load = BackgroundLoad(f"http://127.0.0.1:{server.port}/infer", 1, 20_000_000,
                          duration_seconds=60, timeout_seconds=60).start()
    deadline = time.monotonic() + 10
    while server.received == 0 and time.monotonic() < deadline:  # the upload is under way
        time.sleep(0.05)
    stopped = time.monotonic()
    result = load.finish(timeout=20)
    took = time.monotonic() - stopped
    assert result.abandoned == 1 and result.failed == 0 and result.completed == 0
    assert took < 10, f"stop took {took:.1f}s to abandon the upload"
    # The server still has megabytes buffered to read, so look from the client's side.
    assert _client_connections_to(server.port) == [], "the abandoned connection is open"
    assert 0 < server.received < 20_000_000


def test_deadline_abandons_a_response_that_never_comes(
        silent_server: type[SilentServer]) -> None:
    server = silent_server(read_delay=0.0)
    result = run_load(f"http://127.0.0.1:{server.port}/infer", 3, 10_000,
                      duration_seconds=1.0, timeout_seconds=60, abandon_grace_seconds=0.5)
    assert result.abandoned == result.started >= 1 and result.failed == 0
    assert result.wall_seconds < 1.0 + 0.5 + 5  # deadline + grace, far from the 60 s timeout
    assert server.closed_by_client.wait(5)


def test_bad_arguments_are_refused() -> None:
    for clients, payload_bytes in ((0, 1), (1, -1)):
        with pytest.raises(ValueError, match="clients >= 1"):
            run_load("http://127.0.0.1:9/", clients, payload_bytes, duration_seconds=1)
    with pytest.raises(ValueError, match="rate_per_client"):
        run_load("http://127.0.0.1:9/", 1, 1, rate_per_client=0)


def test_result_json_has_quantiles() -> None:
    result = LoadResult(started=4, completed=4, latencies_seconds=[0.4, 0.1, 0.3, 0.2])
    result.statuses[200] = 4
    document = result.to_json()
    assert document["statuses"] == {"200": 4}
    latency = document["latency_seconds"]
    assert latency["median"] == pytest.approx(0.25)
    assert latency["p95"] == pytest.approx(0.385)  # 0.3 + 0.85 x (0.4 - 0.3)
    assert latency["max"] == 0.4
    assert LoadResult().to_json()["latency_seconds"] == {"median": None, "p95": None,
                                                          "max": None}
