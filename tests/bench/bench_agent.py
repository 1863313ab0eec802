"""Benchmark: the agent's endpoint and footprint beside the Debian node exporter.

    python -m tests.bench.bench_agent [--seconds 60] [--scrapes 1000]

Starts `ai-bottleneck run` (fake NVML with 8 GPUs, the real host and nic
probes, sampling at 1 Hz) and /usr/bin/prometheus-node-exporter (its default
collectors), each on a free loopback port, and prints for each:

- scrape latency p50/p99: one keep-alive HTTP/1.1 connection to each, the
  same client scraping them in turn, ``--scrapes`` times each; a scrape is
  request sent to body read; Prometheus's Accept header, no compression;
- scrapes per second on one connection, back to back, for each in turn (and
  the latencies of those scrapes, with the other endpoint quiet);
- server CPU per scrape: the endpoint's utime+stime over the scrapes in turn,
  divided by their number (what other load on the machine does not inflate);
- CPU seconds per hour and % of one core: utime+stime from /proc/PID/stat
  over an idle period of ``--seconds`` (no scrapes; the agent samples at 1 Hz);
- RSS (VmRSS) at the end, from /proc/PID/status.

Targets: agent scrape p99 <= 2 ms and at most half of node_exporter's; agent
RSS <= 35 MB; agent CPU <= 1% of one core at 1 Hz. Without node_exporter
installed the agent's figures are printed alone. The machine may be busy:
run it more than once and compare.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ai_bottleneck.probes.nvml import BACKEND_ENV
from tests.fakes.fake_nvml import BACKEND_SPEC, STATE_ENV, make_gpus, write_state

REPO = Path(__file__).resolve().parents[2]
NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")
# What Prometheus 2.x sends; both endpoints then answer in their preferred format.
ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
          "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0

TARGET_P99_MS = 2.0
TARGET_P99_SHARE = 0.5
TARGET_RSS_BYTES = 35e6
TARGET_CPU_SHARE = 0.01

AGENT_CONFIG = """
[agent]
interval_seconds = 1
window_seconds = 10
listen = "127.0.0.1:0"
[probes.oom]
enabled = false
[probes.http]
enabled = false
[probes.download]
enabled = false
[probes.iperf3]
enabled = false
"""


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    latencies: list[float] = field(default_factory=list)
    alone: list[float] = field(default_factory=list)
    body_bytes: int = 0
    rate: float = 0.0
    cpu_per_scrape: float = 0.0
    cpu_seconds: float = 0.0
    idle_seconds: float = 0.0
    rss_bytes: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def get(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/metrics", headers={"Accept": ACCEPT})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    return len(body)


def wait_ready(port: int, proc: subprocess.Popen[bytes], what: str,
               ready: str = "") -> None:
    """Until /metrics answers 200 (and holds ``ready``, when given)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                body = response.read().decode()
            finally:
                conn.close()
            if response.status == 200 and ready in body:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer on port {port} in {START_TIMEOUT:g}s")


@contextmanager
def running(args: list[str], env: dict[str, str] | None, log: Path) -> Iterator[
        subprocess.Popen[bytes]]:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=fh)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def agent_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = re.search(r"serving metrics on http://\S+:(\d+)", log.read_text())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"the agent did not start in {START_TIMEOUT:g}s:\n{log.read_text()}")


def measure_scrapes(targets: list[Target], scrapes: int) -> None:
    conns = {t.name: http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
             for t in targets}
    try:
        for t in targets:  # open the connection, warm caches
            for _ in range(20):
                get(conns[t.name])
        cpu_before = {t.name: cpu_seconds(t.proc.pid) for t in targets}
        for _ in range(scrapes):  # in turn, so both see the same machine load
            for t in targets:
                t0 = time.perf_counter()
                t.body_bytes = get(conns[t.name])
                t.latencies.append(time.perf_counter() - t0)
        for t in targets:  # the server's own CPU: a figure other load does not inflate
            t.cpu_per_scrape = (cpu_seconds(t.proc.pid) - cpu_before[t.name]) / scrapes
        for t in targets:  # back to back on one connection
            n, t0 = 0, time.perf_counter()
            while n < scrapes and time.perf_counter() - t0 < 10:
                t1 = time.perf_counter()
                get(conns[t.name])
                t.alone.append(time.perf_counter() - t1)
                n += 1
            t.rate = n / (time.perf_counter() - t0)
    finally:
        for conn in conns.values():
            conn.close()


def measure_idle(targets: list[Target], seconds: float) -> None:
    before = {t.name: cpu_seconds(t.proc.pid) for t in targets}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    for t in targets:
        t.cpu_seconds = cpu_seconds(t.proc.pid) - before[t.name]
        t.idle_seconds = elapsed
        t.rss_bytes = rss_bytes(t.proc.pid)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(agent: Target, node: Target | None, seconds: float) -> None:
    def cpu_per_hour(t: Target) -> float:
        return t.cpu_seconds / t.idle_seconds * 3600

    def row(what: str, a: float, n: float | None, fmt: str, target: str,
            ok: bool | None = None) -> None:
        ratio = f"{a / n:.2f}" if n else "-"  # also for a node_exporter figure of 0
        nv = format(n, fmt) if n is not None else "-"
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"{what:<26} {format(a, fmt):>10} {nv:>14} {ratio:>10}  {target:<30} {verdict}")

    a50, a99 = percentile(agent.latencies, 0.5) * 1e3, percentile(agent.latencies, 0.99) * 1e3
    n50 = percentile(node.latencies, 0.5) * 1e3 if node else None
    n99 = percentile(node.latencies, 0.99) * 1e3 if node else None
    print(f"{'':<26} {'agent':>10} {'node_exporter':>14} {'agent/node':>10}  {'target':<30}")
    row("scrape p50 (ms)", a50, n50, ".3f", "")
    row("scrape p99 (ms)", a99, n99, ".3f",
        f"<= {TARGET_P99_MS:g} ms and <= {TARGET_P99_SHARE:g}x node",
        a99 <= TARGET_P99_MS and (n99 is None or a99 <= TARGET_P99_SHARE * n99))
    row("scrapes/s (one conn)", agent.rate, node.rate if node else None, ".0f", "")
    row("  p50 back to back (ms)", percentile(agent.alone, 0.5) * 1e3,
        percentile(node.alone, 0.5) * 1e3 if node else None, ".3f", "")
    row("  p99 back to back (ms)", percentile(agent.alone, 0.99) * 1e3,
        percentile(node.alone, 0.99) * 1e3 if node else None, ".3f", "")
    row("server CPU per scrape (ms)", agent.cpu_per_scrape * 1e3,
        node.cpu_per_scrape * 1e3 if node else None, ".3f", "")
    row("CPU s/hour (idle, 1 Hz)", cpu_per_hour(agent),
        cpu_per_hour(node) if node else None, ".1f", "")
    share = agent.cpu_seconds / agent.idle_seconds
    row("CPU % of one core", share * 100,
        node.cpu_seconds / node.idle_seconds * 100 if node else None, ".3f",
        f"<= {TARGET_CPU_SHARE * 100:g}%", share <= TARGET_CPU_SHARE)
    row("RSS (MB, 10^6 bytes)", agent.rss_bytes / 1e6, node.rss_bytes / 1e6 if node else None,
        ".1f", f"<= {TARGET_RSS_BYTES / 1e6:g} MB", agent.rss_bytes <= TARGET_RSS_BYTES)
    row("body (bytes)", agent.body_bytes, node.body_bytes if node else None, ".0f", "")
    print(f"\n{len(agent.latencies)} scrapes each, in turn, one keep-alive connection each; "
          f"idle period {seconds:g}s; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f} at the end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="idle period for the CPU figure (default 60)")
    ap.add_argument("--scrapes", type=int, default=1000,
                    help="scrapes of each endpoint for the latency figures (default 1000)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        state = work / "nvml.json"
        write_state(state, make_gpus(8, utilization_percent=60,
                                     memory_used_bytes=40 * 2**30))
        config = work / "agent.toml"
        config.write_text(AGENT_CONFIG)
        env = {k: v for k, v in os.environ.items()
               if k not in ("JOURNAL_STREAM", "AI_BOTTLENECK_CONFIG")}
        env.update({"PYTHONPATH": str(REPO), BACKEND_ENV: BACKEND_SPEC, STATE_ENV: str(state)})
        command = [sys.executable, "-m", "ai_bottleneck.cli", "run", "--config", str(config)]
        agent_log = work / "agent.log"
        with running(command, env, agent_log) as agent_proc:
            port = agent_port(agent_log, agent_proc)
            # Wait for the first GPU round so the scrapes carry all 8 GPUs.
            wait_ready(port, agent_proc, "the agent", 'ai_bottleneck_gpu_up{gpu="7"')
            agent = Target("agent", agent_proc, port)
            if not NODE_EXPORTER.is_file():
                print(f"{NODE_EXPORTER} is not installed (Debian package "
                      f"prometheus-node-exporter): the agent's figures alone\n")
                measure_scrapes([agent], args.scrapes)
                measure_idle([agent], args.seconds)
                report(agent, None, args.seconds)
                return
            node_port = free_port()
            with running([str(NODE_EXPORTER), f"--web.listen-address=127.0.0.1:{node_port}"],
                         None, work / "node.log") as node_proc:
                wait_ready(node_port, node_proc, "node_exporter")
                node = Target("node_exporter", node_proc, node_port)
                measure_scrapes([agent, node], args.scrapes)
                measure_idle([agent, node], args.seconds)
                report(agent, node, args.seconds)


if __name__ == "__main__":
    main()
