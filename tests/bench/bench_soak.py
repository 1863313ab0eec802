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

Besides: scrapes over 100 ms, the kernel's listen queue overflows (ovfl), the
agent's CPU use (cpu%, of one core) and the time its threads waited for a CPU
(wait%); at the end, for each slow scrape, how long the scraping thread itself
waited for a CPU and how long the agent did (the kernel's CPU pressure stall
count of a cgroup the benchmark puts the agent in), so the machine's other
work is told from the agent's own latency.

Targets (issue 12): every scrape answered, each in under 100 ms; RSS growth under
2 MB after the first 5 minutes (after the first report on shorter runs); fds
and threads flat. The live page keeps a compact copy of an hour of windows by
default, filling through the first hour (docs/report.md: the fake GPUs' readings
stay the same, so the copies here are small); ``--page-history 120`` keeps two
minutes of them, to see whether anything else grows. The machine may be busy
with other work: run it more than once and compare.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ai_bottleneck.probes.nvml import BACKEND_ENV
from tests.bench.bench_agent import free_port, rss_bytes, wait_ready
from tests.fakes.fake_nvml import BACKEND_SPEC, STATE_ENV, make_gpus, write_state

REPO = Path(__file__).resolve().parents[2]
SCRAPES_PER_SECOND = 50
IDLE_CONNECTIONS = 200
DRIPPERS = 64
TARGET_MAX_SECONDS = 0.100  # every scrape, not a percentile
TARGET_RSS_GROWTH_BYTES = 2e6

CONFIG = """
[agent]
interval_seconds = 0.1
window_seconds = 10
listen = "127.0.0.1:{port}"
record_file = "{record}"
[probes.oom]
enabled = false
[endpoint]
page_history_seconds = {history}
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


class CpuPressure:
    """The agent in a cgroup (v2) of its own, for its CPU pressure: ``waited()`` is the
    kernel's count of time during which at least one of the agent's threads was
    runnable but had no CPU (cpu.pressure "some", seconds). Over a slow scrape, that
    is time the machine's other work took from the agent. None where no cgroup v2
    can be made (not root, no unified hierarchy)."""

    ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))

    def __init__(self, pid: int) -> None:
        self.path: Path | None = None
        for root in self.ROOTS:
            if not (root / "cgroup.procs").exists() or not (root / "cpu.pressure").exists():
                continue
            path = root / f"ai-bottleneck-soak-{os.getpid()}"
            try:
                path.mkdir()
                (path / "cgroup.procs").write_text(str(pid))
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            self.path = path
            break

    def waited(self) -> float | None:
        if self.path is None:
            return None
        try:
            some = (self.path / "cpu.pressure").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(some.rsplit("total=", 1)[1]) / 1e6

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # empty once the agent has exited


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


@dataclass
class Scrape:
    """One scrape: wall seconds from connect() to the body read (None: failed), of
    which connecting took ``connect``; ``starved`` is how long this scraping thread
    itself sat runnable without a CPU meanwhile (its run-queue delay): time the
    machine's other work took from the client, not the agent's latency."""

    seconds: float | None
    connect: float
    starved: float
    agent_starved: float | None = None  # of it, the agent waited for a CPU (PSI)


def _run_delay() -> float:
    """This thread's time spent runnable but waiting for a CPU (schedstat, seconds)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _scrape(port: int, pressure: CpuPressure) -> Scrape:
    waited = _run_delay()
    agent_waited = pressure.waited()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connect = float("nan")
    try:
        conn.connect()
        connect = time.perf_counter() - t0
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    took = time.perf_counter() - t0
    agent_after = pressure.waited()
    agent_starved = (agent_after - agent_waited if agent_waited is not None
                     and agent_after is not None else None)
    return Scrape(took if ok else None, connect, _run_delay() - waited, agent_starved)


def _listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace: connections the kernel
    dropped because a listener's accept queue was full (a client then retries
    its SYN after 1 s)."""
    lines = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines()
             if ln.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("ListenOverflows", 0))


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """The agent's CPU time (user + system) and its threads' summed run-queue delay."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    waited = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            waited += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a connection's thread that ended meanwhile
    return cpu, waited / 1e9


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _summary(scrapes: list[Scrape], overflows: int) -> None:
    """Every scrape against the target, and what the slow ones were waiting for."""
    ok = [s.seconds for s in scrapes if s.seconds is not None]
    failed = len(scrapes) - len(ok)
    p99, worst = _quantile(ok, 0.99), max(ok, default=float("nan"))
    slow = [s for s in scrapes if s.seconds is not None and s.seconds > TARGET_MAX_SECONDS]
    print()
    print(f"scrapes: {len(scrapes)}, failed {failed}; p99 {p99 * 1e3:.2f} ms, max "
          f"{worst * 1e3:.2f} ms, {len(slow)} over {TARGET_MAX_SECONDS * 1e3:.0f} ms; target "
          f"every scrape answered in < {TARGET_MAX_SECONDS * 1e3:.0f} ms: "
          f"{'met' if not slow and not failed else 'NOT met'}")
    # A slow scrape whose own client thread waited for a CPU for most of it measures
    # the machine's other work, not the agent; one whose connect() took a second met
    # a full accept queue (the kernel drops the SYN, the client retries after 1 s).
    # A slow scrape that would have been under the target without the time the agent
    # (or the scraper) was runnable but had no CPU was slowed by the machine's other
    # work: the kernel's pressure stall count says so, not a guess.
    measured = [s for s in slow if s.agent_starved is not None]
    starved = [s for s in measured if (s.seconds or 0) - max(s.agent_starved or 0, s.starved)
               < TARGET_MAX_SECONDS]
    connecting = [s for s in slow if s.connect > TARGET_MAX_SECONDS]
    if slow and not measured:
        print("  (the agent's CPU pressure could not be read: no cgroup v2 here)")
    print(f"  of the slow ones: {len(starved)} under {TARGET_MAX_SECONDS * 1e3:.0f} ms but for "
          f"the time the agent or the scraper waited for a CPU (the machine's other work), "
          f"{len(measured) - len(starved)} not; {len(connecting)} slow to connect; listen "
          f"queue overflows during the run (whole network namespace): {overflows}")
    for s in sorted(slow, key=lambda s: -(s.seconds or 0))[:8]:
        agent = "n/a" if s.agent_starved is None else f"{s.agent_starved * 1e3:.1f} ms"
        print(f"  slow scrape: {(s.seconds or 0) * 1e3:.1f} ms, connect {s.connect * 1e3:.1f} ms,"
              f" the agent waiting for a CPU {agent}, the scraper {s.starved * 1e3:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--report-seconds", type=float, default=60.0)
    ap.add_argument("--no-abuse", action="store_true",
                    help="no idle or dripping connections: the agent and the scrapes alone "
                         "(to tell what the abuse costs)")
    ap.add_argument("--page-history", type=float, default=3600.0,
                    help="[endpoint] page_history_seconds: the live page's windows the agent "
                         "keeps in memory (default an hour, as the agent's own; shorter shows "
                         "whether RSS levels off once that history is full)")
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
        config.write_text(CONFIG.format(port=port, record=home / "soak.jsonl",
                                        history=args.page_history))
        env = {**os.environ, BACKEND_ENV: BACKEND_SPEC, STATE_ENV: str(state),
               "PYTHONPATH": str(REPO)}
        env.pop("AI_BOTTLENECK_CONFIG", None)
        agent = subprocess.Popen([sys.executable, "-m", "ai_bottleneck.cli", "run",
                                  "--config", str(config)], env=env, cwd=home,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=open(home / "agent.log", "wb"))  # noqa: SIM115
        abuser: Abuser | None = None
        pressure = CpuPressure(agent.pid)
        try:
            wait_ready(port, agent, "the agent")
            if not args.no_abuse:
                abuser = Abuser(port, seconds + 30)
                time.sleep(3)  # the abuser's connections are open
            print(f"soak: {args.minutes:g} min; agent sampling at 10 Hz with a recording and "
                  f"{args.page_history:g} s of live page history (10 s windows); "
                  f"{SCRAPES_PER_SECOND} scrapes/s without keep-alive; abuser holds "
                  f"{0 if args.no_abuse else IDLE_CONNECTIONS} idle + "
                  f"{0 if args.no_abuse else DRIPPERS} dripping connections")
            print(f"{'min':>6} {'rss MB':>8} {'fds':>5} {'thr':>5} {'scrapes':>8} "
                  f"{'failed':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'>100ms':>6} "
                  f"{'ovfl':>5} {'cpu%':>5} {'wait%':>6}  abuser idle/drip/reconnects")
            rows: list[tuple[float, int, int, int]] = []
            everything: list[Scrape] = []
            start = time.monotonic()
            next_report = start + args.report_seconds
            period: list[Scrape] = []
            overflows0 = overflows_start = _listen_overflows()
            cpu0, wait0 = _cpu_seconds(agent.pid)
            wall0 = time.monotonic()
            n = 0
            while True:
                now = time.monotonic()
                if now - start >= seconds:
                    break
                if agent.poll() is not None:
                    raise RuntimeError(f"the agent exited with {agent.returncode}")
                period.append(_scrape(port, pressure))
                n += 1
                if time.monotonic() >= next_report:
                    rss, fds, threads = _proc_figures(agent.pid)
                    minute = (time.monotonic() - start) / 60
                    rows.append((minute, rss, fds, threads))
                    held = abuser.held if abuser is not None else (0, 0, 0)
                    ok = [s.seconds for s in period if s.seconds is not None]
                    overflows, (cpu, wait), wall = (_listen_overflows(),
                                                    _cpu_seconds(agent.pid), time.monotonic())
                    print(f"{minute:6.1f} {rss / 1e6:8.2f} {fds:5d} {threads:5d} "
                          f"{len(period):8d} {len(period) - len(ok):6d} "
                          f"{_quantile(ok, 0.5) * 1e3:7.2f} {_quantile(ok, 0.99) * 1e3:7.2f} "
                          f"{max(ok, default=float('nan')) * 1e3:7.2f} "
                          f"{sum(t > TARGET_MAX_SECONDS for t in ok):6d} "
                          f"{overflows - overflows0:5d} "
                          f"{100 * (cpu - cpu0) / (wall - wall0):5.1f} "
                          f"{100 * (wait - wait0) / (wall - wall0):6.1f}  "
                          f"{held[0]}/{held[1]}/{held[2]}", flush=True)
                    overflows0, cpu0, wait0, wall0 = overflows, cpu, wait, wall
                    everything += period
                    period = []
                    next_report += args.report_seconds
                delay = start + n / SCRAPES_PER_SECOND - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            everything += period
            overflows_total = _listen_overflows() - overflows_start
        finally:
            if abuser is not None:
                abuser.close()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
            pressure.remove()
        log = (home / "agent.log").read_text(errors="replace")

    settle = 5.0 if args.minutes > 10 else rows[0][0] if rows else 0.0
    after = [r for r in rows if r[0] >= settle - 1e-9]
    growth = (max(r[1] for r in after) - after[0][1]) if after else float("nan")
    _summary(everything, overflows_total)
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
