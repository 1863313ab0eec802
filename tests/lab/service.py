"""A stand-in inference service for the scenario lab: a real HTTP server in its own process.

    python -m tests.lab.service --bind ADDR --port P --gpu-state FILE --log FILE
        [--control-token TOKEN] [--cpu-workers N] [--max-request-bytes N] [--params JSON]
        [--gpu-model h100|a100]

Endpoints:
- ``POST /infer``: reads the whole upload (Content-Length required, bounded), burns
  ``cpu_seconds`` of real host CPU in a process pool (pre-processing), then computes on the
  simulated GPU (tests/lab/simgpu.py) and answers ``response_bytes`` bytes with a
  ``Server-Timing`` header (upload, cpu, queue, gpu). A simulated OOM answers 500.
- ``POST /control``: a JSON object with any of the ServiceParams fields changes them live
  and answers the full new set; with ``--control-token`` it needs ``X-Control-Token``.
- ``GET /health``: ``{"status": "ok", "params": {...}, "gpu": {...}}``.

On start it prints one JSON line on stdout, ``{"listening": [addr, port]}`` (``--port 0``
picks a free port), and publishes the simulated GPU's state to ``--gpu-state`` every 100 ms.
SIGTERM or SIGINT stop it cleanly. ``start_service`` runs it as a subprocess, on loopback or
inside a tests/netns.py namespace, for tests and the scenario runner.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import itertools
import json
import multiprocessing
import os
import selectors
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ai_bottleneck.probes.options import OptionError, option_info, parse_options
from tests.lab.simgpu import (
    DEFAULT_GPU_MODEL,
    GIB,
    GPU_MODELS,
    GpuModel,
    GpuOutOfMemory,
    GpuParams,
    Publisher,
    SimGpu,
    read_published,
)

if TYPE_CHECKING:
    from tests.netns import Link

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 256 * 1024
SOCKET_TIMEOUT_SECONDS = 60.0  # a stalled client frees its thread after this
TOKEN_HEADER = "X-Control-Token"


@dataclass(frozen=True)
class ServiceParams:
    """What one phase of a scenario sets on the service (the /control JSON)."""

    compute_seconds: float = field(
        default=0.05, metadata=option_info(min=0, max=600, doc="GPU time per request"))
    gpu_slots: int = field(
        default=1, metadata=option_info(min=1, max=1024, doc="requests computing at once"))
    memory_per_request_bytes: int = field(
        default=GIB // 2, metadata=option_info(min=0, doc="GPU memory a request holds in flight"))
    memory_base_bytes: int = field(
        default=16 * GIB, metadata=option_info(min=0, doc="GPU memory of the loaded model"))
    memory_total_bytes: int = field(
        default=80 * GIB, metadata=option_info(min=1, doc="GPU memory size"))
    cpu_seconds: float = field(
        default=0.0, metadata=option_info(min=0, max=60, doc="host CPU pre-processing per request"))
    response_bytes: int = field(
        default=1024, metadata=option_info(min=0, max=DEFAULT_MAX_REQUEST_BYTES,
                                      doc="size of each answer"))

    def gpu(self) -> GpuParams:
        return GpuParams(self.compute_seconds, self.gpu_slots, self.memory_base_bytes,
                         self.memory_per_request_bytes, self.memory_total_bytes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def burn_cpu(seconds: float) -> float:
    """Use ``seconds`` of this process's CPU time (hashing), bounded in wall time; returns
    the CPU seconds used. CPU time, not wall time, so a contended host takes longer, as a
    real CPU-bound pre-processing step would."""
    start = time.process_time()
    wall_limit = time.monotonic() + max(5.0, 20 * seconds)
    block = b"lab" * 4096
    while time.process_time() - start < seconds and time.monotonic() < wall_limit:
        for _ in range(50):
            block = hashlib.sha256(block).digest() * 384
    return time.process_time() - start


def _watch_parent(parent: int) -> None:
    """Pool workers leave when the service dies, even by SIGKILL."""
    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)
    threading.Thread(target=loop, daemon=True).start()


class ServiceLog:
    """The service's log file: one line per event, flushed at once (log-based OOM
    detection reads it while the service runs)."""

    def __init__(self, path: Path):
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def _write(self, level: str, message: str) -> None:
        stamp = datetime.datetime.now().isoformat(sep=" ", timespec="milliseconds")
        with self._lock:
            self._file.write(f"{stamp} {level} lab-service[{os.getpid()}]: {message}\n")
            self._file.flush()

    def info(self, message: str) -> None:
        self._write("INFO", message)

    def error(self, message: str) -> None:
        self._write("ERROR", message)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class LabService:
    """State shared by the request threads: parameters, simulated GPU, CPU pool, log."""

    def __init__(self, params: ServiceParams, log: ServiceLog, gpu_state: Path, *,
                 cpu_workers: int, control_token: str | None, max_request_bytes: int,
                 gpu_model: GpuModel):
        self.log = log
        self.control_token = control_token
        self.max_request_bytes = max_request_bytes
        self._params = params
        self._lock = threading.Lock()
        self._request_ids = itertools.count(1)
        self.gpu = SimGpu(params.gpu(), log.error)
        self.publisher = Publisher(self.gpu, gpu_state, model=gpu_model)
        # spawn, not fork: forking a threaded server is unsafe.
        self.cpu_workers = cpu_workers
        self.pool = (ProcessPoolExecutor(cpu_workers, mp_context=multiprocessing.get_context(
            "spawn"), initializer=_watch_parent, initargs=(os.getpid(),))
            if cpu_workers > 0 else None)

    def start(self) -> None:
        if self.pool is not None:  # start the workers now, not on the first request
            futures = [self.pool.submit(burn_cpu, 0.0) for _ in range(self.cpu_workers)]
            for f in futures:
                f.result(timeout=60)
        self.publisher.start()

    def close(self) -> None:
        self.publisher.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    @property
    def params(self) -> ServiceParams:
        return self._params

    def next_request_id(self) -> int:
        with self._lock:
            return next(self._request_ids)

    def control(self, changes: Mapping[str, Any]) -> ServiceParams:
        with self._lock:
            params = parse_options(ServiceParams, {**self._params.to_json(), **changes})
            self._params = params
            self.gpu.configure(params.gpu())
        self.log.info(f"control: {json.dumps(params.to_json(), sort_keys=True)}")
        return params

    def preprocess(self, seconds: float) -> float:
        if seconds <= 0:
            return 0.0
        if self.pool is None:
            return burn_cpu(seconds)
        future: Future[float] = self.pool.submit(burn_cpu, seconds)
        return future.result(timeout=max(30.0, 40 * seconds))


class LabHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients connecting at once must not wait for SYN retries
    app: LabService

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the address up in DNS (getfqdn), which can hang in a
        # namespace without a resolver; the lab needs no server name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-upload is normal in the lab: one line, no traceback.
        exc = sys.exc_info()[1]
        self.app.log.info(f"connection from {client_address[0]} ended: {exc!r}")


class Handler(BaseHTTPRequestHandler):
    server: LabHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document).encode())

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _read_body(self, limit: int) -> bytes | None:
        """The whole body, or None after answering why not."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "send Content-Length, not chunked")
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return None
        if length < 0 or length > limit:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"body of {length} bytes is over the limit of {limit}")
            return None
        chunks = []
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(remaining, READ_CHUNK_BYTES))
            if not chunk:
                raise ConnectionError(f"client left after {length - remaining} of {length} "
                                      "bytes")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def do_GET(self) -> None:
        if self.path != "/health":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: GET {self.path}")
            return
        app = self.server.app
        gpu = read_published(app.publisher.path)
        self._send_json(HTTPStatus.OK, {"status": "ok", "params": app.params.to_json(),
                                        "gpu": gpu})

    def do_POST(self) -> None:
        if self.path == "/infer":
            self._infer()
        elif self.path == "/control":
            self._control()
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {self.path}")

    def _control(self) -> None:
        app = self.server.app
        body = self._read_body(64 * 1024)
        if body is None:
            return
        token = self.headers.get(TOKEN_HEADER, "")
        if app.control_token is not None and not hmac.compare_digest(
                token.encode(), app.control_token.encode()):
            self._error(HTTPStatus.FORBIDDEN, f"/control needs the right {TOKEN_HEADER}")
            return
        try:
            changes = json.loads(body or b"{}")
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}")
            return
        if not isinstance(changes, dict):
            self._error(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
            return
        try:
            params = app.control(changes)
        except OptionError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._send_json(HTTPStatus.OK, params.to_json())

    def _infer(self) -> None:
        app = self.server.app
        arrived = time.monotonic()
        body = self._read_body(app.max_request_bytes)
        if body is None:
            return
        uploaded = time.monotonic()
        request_id = app.next_request_id()
        params = app.params
        try:
            cpu = app.preprocess(params.cpu_seconds)
            timing = app.gpu.run()
        except GpuOutOfMemory as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
            return
        except Exception as exc:  # a pool or queue failure is this request's 503
            app.log.error(f"request {request_id} failed: {exc!r}")
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"{type(exc).__name__}: {exc}")
            return
        server_timing = (f"upload;dur={(uploaded - arrived) * 1000:.1f}, "
                         f"cpu;dur={cpu * 1000:.1f}, "
                         f"queue;dur={timing.queue_seconds * 1000:.1f}, "
                         f"gpu;dur={timing.compute_seconds * 1000:.1f}")
        self._send(HTTPStatus.OK, b"\0" * params.response_bytes, "application/octet-stream",
                   {"Server-Timing": server_timing, "X-Request-Id": str(request_id),
                    "X-Upload-Bytes": str(len(body))})


def serve(args: argparse.Namespace) -> int:
    try:
        params = parse_options(ServiceParams, json.loads(args.params))
    except (ValueError, OptionError) as exc:
        print(f"lab service: --params: {exc}", file=sys.stderr)
        return 2
    log = ServiceLog(args.log)
    app = LabService(params, log, args.gpu_state, cpu_workers=args.cpu_workers,
                     control_token=args.control_token, max_request_bytes=args.max_request_bytes,
                     gpu_model=GPU_MODELS[args.gpu_model])
    try:
        app.start()
        server = LabHTTPServer((args.bind, args.port), Handler)
    except OSError as exc:
        app.close()
        log.close()
        print(f"lab service: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 1
    server.app = app

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    log.info(f"listening on {host}:{port} with {json.dumps(params.to_json(), sort_keys=True)}")
    print(json.dumps({"listening": [host, port]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        app.close()
        log.info("stopped")
        log.close()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.service",
                                     description="Stand-in inference service for the lab.")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gpu-state", type=Path, required=True,
                        help="JSON file the fake NVML reads (AI_BOTTLENECK_FAKE_NVML)")
    parser.add_argument("--log", type=Path, required=True, help="service log (OOM lines)")
    parser.add_argument("--control-token", default=None)
    parser.add_argument("--cpu-workers", type=int, default=2,
                        help="processes for CPU pre-processing (0: in the request thread)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--params", default="{}", help="initial ServiceParams as JSON")
    parser.add_argument("--gpu-model", choices=sorted(GPU_MODELS), default=DEFAULT_GPU_MODEL,
                        help="the simulated card (a100: no GPM metrics)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(argv))


# ---- running it as a subprocess (tests, scenario runner) ----

@dataclass
class ServiceHandle:
    """A running lab service: its base URL, process and files."""

    url: str
    process: subprocess.Popen[bytes]
    gpu_state: Path
    log: Path
    control_token: str | None

    @property
    def infer_url(self) -> str:
        return f"{self.url}/infer"

    def control(self, **changes: Any) -> dict[str, Any]:
        headers = {TOKEN_HEADER: self.control_token} if self.control_token else {}
        response = httpx.post(f"{self.url}/control", json=changes, headers=headers,
                              timeout=10.0, trust_env=False)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/health", timeout=10.0, trust_env=False)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def gpu(self) -> dict[str, Any]:
        """The published simulated-GPU state, as the fake NVML would read it."""
        return read_published(self.gpu_state)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert process.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError(f"lab service said nothing within {timeout:g}s")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"lab service exited with {process.wait(timeout=5)}")
            line += chunk
    return line


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def start_service(gpu_state: Path, log: Path, *, bind: str = "127.0.0.1", port: int = 0,
                  link: Link | None = None, cpu_workers: int = 2,
                  control_token: str | None = None, params: ServiceParams | None = None,
                  max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                  gpu_model: str = DEFAULT_GPU_MODEL,
                  start_timeout: float = 30.0) -> Iterator[ServiceHandle]:
    """Run the service as a subprocess (inside ``link``'s namespace when given, listening
    on ``bind``); stopped and reaped on exit, also on failure."""
    argv = [sys.executable, "-m", "tests.lab.service", "--bind", bind, "--port", str(port),
            "--gpu-state", str(gpu_state), "--log", str(log),
            "--cpu-workers", str(cpu_workers), "--max-request-bytes", str(max_request_bytes),
            "--params", json.dumps((params or ServiceParams()).to_json()),
            "--gpu-model", gpu_model]
    if control_token is not None:
        argv += ["--control-token", control_token]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    kwargs: dict[str, Any] = {"cwd": REPO_ROOT, "env": env, "stdout": subprocess.PIPE,
                              "stdin": subprocess.DEVNULL}
    process = link.popen(argv, **kwargs) if link is not None else subprocess.Popen(argv,
                                                                                  **kwargs)
    try:
        listening = json.loads(_read_line(process, start_timeout))["listening"]
        host = f"[{listening[0]}]" if ":" in listening[0] else listening[0]
        yield ServiceHandle(f"http://{host}:{listening[1]}", process, gpu_state, log,
                            control_token)
    finally:
        _stop(process)


if __name__ == "__main__":
    sys.exit(main())
