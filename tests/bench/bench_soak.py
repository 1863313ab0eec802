"""Soak benchmark: the agent left running under abuse, watched over time.

    python -m tests.bench.bench_soak [--minutes 60] [--report-seconds 60]

Starts `ai-bottleneck run` (fake NVML with 8 GPUs, the real host and nic
probes, sampling at 10 Hz, recording every sample to a file) and, in another
process, a client that holds 200 idle TCP connections (from 127.0.0.2) and 64
clients dripping a request header one byte every half second (from 127.0.0.3)
open against its endpoint, reconnecting any the agent closes. This process
scrapes /metrics 50 times a second, each scrape on a new connection without
keep-alive (request sent to body read). Every ``--report-seconds`` it prints
the agent's RSS (VmRSS), open fds, threads, the scrape latencies of that period
(p50, p99, max) and failed scrapes, and the connections the abuser holds.

Targets (issue 12): every scrape answered, p99 under 100 ms; RSS growth under
2 MB after the first 5 minutes (after the first report on shorter runs); fds
and threads flat. The machine may be busy with other work: run it more than
once and compare.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ai_bottleneck.probes.nvml import BACKEND_ENV
from tests.bench.bench_agent import free_port, rss_bytes, wait_ready
from tests.fakes.fake_nvml import BACKEND_SPEC, STATE_ENV, make_gpus, write_state

REPO = Path(__file__).resolve().parents[2]
SCRAPES_PER_SECOND = 50
IDLE_CONNECTIONS = 200
DRIPPERS = 64
TARGET_P99_SECONDS = 0.100
TARGET_RSS_GROWTH_BYTES = 2e6

CONFIG = """
[agent]
interval_seconds = 0.1
window_seconds = 10
listen = "127.0.0.1:{port}"
record_file = "{record}"
[probes.oom]
enabled = false
"""


# -- the abusing client (a process of its own) -------------------------------------------


def _hold(port: int, seconds: float) -> None:
    """Hold IDLE_CONNECTIONS idle and DRIPPERS dripping connections until ``seconds``
    have passed, reconnecting what the agent closes; print how many every 10 s."""
    payload = b"GET /metrics HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 100_000
    idle: list[socket.socket] = []
    drip: list[tuple[socket.socket, int]] = []
    reconnects = 0
    end = time.monotonic() + seconds
    last_report = 0.0

    def connect(source: str) -> socket.socket | None:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            return s
        except OSError:
            s.close()
            return None

    def alive(s: socket.socket) -> bool:
        try:
            return s.recv(1) != b""  # the agent never sends to these unprompted
        except BlockingIOError:
            return True
        except OSError:
            return False

    while time.monotonic() < end:
        for s in [s for s in idle if not alive(s)]:
            idle.remove(s)
            s.close()
            reconnects += 1
        while len(idle) < IDLE_CONNECTIONS and (fresh := connect("127.0.0.2")) is not None:
            idle.append(fresh)
        kept = []
        for s, i in drip:
            try:
                if not alive(s):
                    raise OSError
                s.send(payload[i:i + 1])
                kept.append((s, i + 1))
            except OSError:
                s.close()
                reconnects += 1
        drip = kept
        while len(drip) < DRIPPERS and (fresh := connect("127.0.0.3")) is not None:
            drip.append((fresh, 0))
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            print(f"held {len(idle)} {len(drip)} {reconnects}", flush=True)
        time.sleep(0.5)
    for s in idle:
        s.close()
    for s, _ in drip:
        s.close()


class Abuser:
    def __init__(self, port: int, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.bench_soak", "--hold", str(port),
             "--hold-seconds", str(seconds)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.held = (0, 0, 0)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if parts[:1] == ["held"]:
                self.held = (int(parts[1]), int(parts[2]), int(parts[3]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# -- the agent and the scrapes -----------------------------------------------------------


def _proc_figures(pid: int) -> tuple[int, int, int]:
    rss = rss_bytes(pid)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, fds, threads


def _scrape(port: int) -> float | None:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return time.perf_counter() - t0 if ok else None


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--report-seconds", type=float, default=60.0)
    ap.add_argument("--no-abuse", action="store_true",
                    help="no idle or dripping connections: the agent and the scrapes alone "
                         "(to tell what the abuse costs)")
    ap.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hold-seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hold is not None:
        _hold(args.hold, args.hold_seconds)
        return 0

    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        port = free_port()
        state = home / "nvml.json"
        write_state(state, make_gpus(8, utilization_percent=90, memory_used_bytes=40 * 2**30))
        config = home / "config.toml"
        config.write_text(CONFIG.format(port=port, record=home / "soak.jsonl"))
        env = {**os.environ, BACKEND_ENV: BACKEND_SPEC, STATE_ENV: str(state),
               "PYTHONPATH": str(REPO)}
        env.pop("AI_BOTTLENECK_CONFIG", None)
        agent = subprocess.Popen([sys.executable, "-m", "ai_bottleneck.cli", "run",
                                  "--config", str(config)], env=env, cwd=home,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=open(home / "agent.log", "wb"))  # noqa: SIM115
        abuser: Abuser | None = None
        try:
            wait_ready(port, agent, "the agent")
            if not args.no_abuse:
                abuser = Abuser(port, seconds + 30)
                time.sleep(3)  # the abuser's connections are open
            print(f"soak: {args.minutes:g} min; agent sampling at 10 Hz with a recording; "
                  f"{SCRAPES_PER_SECOND} scrapes/s without keep-alive; abuser holds "
                  f"{0 if args.no_abuse else IDLE_CONNECTIONS} idle + "
                  f"{0 if args.no_abuse else DRIPPERS} dripping connections")
            print(f"{'min':>6} {'rss MB':>8} {'fds':>5} {'thr':>5} {'scrapes':>8} "
                  f"{'failed':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  abuser idle/drip/"
                  f"reconnects")
            rows: list[tuple[float, int, int, int]] = []
            all_latencies: list[float] = []
            failed_total = 0
            start = time.monotonic()
            next_report = start + args.report_seconds
            latencies: list[float] = []
            failed = 0
            n = 0
            while True:
                now = time.monotonic()
                if now - start >= seconds:
                    break
                if agent.poll() is not None:
                    raise RuntimeError(f"the agent exited with {agent.returncode}")
                took = _scrape(port)
                if took is None:
                    failed += 1
                else:
                    latencies.append(took)
                n += 1
                if time.monotonic() >= next_report:
                    rss, fds, threads = _proc_figures(agent.pid)
                    minute = (time.monotonic() - start) / 60
                    rows.append((minute, rss, fds, threads))
                    held = abuser.held if abuser is not None else (0, 0, 0)
                    print(f"{minute:6.1f} {rss / 1e6:8.2f} {fds:5d} {threads:5d} "
                          f"{len(latencies) + failed:8d} {failed:6d} "
                          f"{_quantile(latencies, 0.5) * 1e3:7.2f} "
                          f"{_quantile(latencies, 0.99) * 1e3:7.2f} "
                          f"{max(latencies, default=float('nan')) * 1e3:7.2f}  "
                          f"{held[0]}/{held[1]}/{held[2]}", flush=True)
                    all_latencies += latencies
                    failed_total += failed
                    latencies, failed = [], 0
                    next_report += args.report_seconds
                delay = start + n / SCRAPES_PER_SECOND - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            all_latencies += latencies
            failed_total += failed
        finally:
            if abuser is not None:
                abuser.close()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
        log = (home / "agent.log").read_text(errors="replace")

    settle = 5.0 if args.minutes > 10 else rows[0][0] if rows else 0.0
    after = [r for r in rows if r[0] >= settle - 1e-9]
    growth = (max(r[1] for r in after) - after[0][1]) if after else float("nan")
    p99 = _quantile(all_latencies, 0.99)
    print()
    print(f"scrapes: {len(all_latencies) + failed_total}, failed {failed_total}; "
          f"p99 {p99 * 1e3:.2f} ms vs target < {TARGET_P99_SECONDS * 1e3:.0f} ms: "
          f"{'met' if p99 < TARGET_P99_SECONDS and not failed_total else 'NOT met'}")
    print(f"RSS growth after minute {settle:g}: {growth / 1e6:.2f} MB vs target < "
          f"{TARGET_RSS_GROWTH_BYTES / 1e6:g} MB: "
          f"{'met' if growth < TARGET_RSS_GROWTH_BYTES else 'NOT met'}")
    if after:
        print(f"fds {min(r[2] for r in after)}..{max(r[2] for r in after)}, threads "
              f"{min(r[3] for r in after)}..{max(r[3] for r in after)} after minute {settle:g}")
    print(f"agent exit {agent.returncode}; tracebacks in its log: {log.count('Traceback')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
