"""Benchmark: totals rebuilt from the agent's counters against node_exporter's.

    python -m tests.bench.bench_counters [--minutes 5] [--scrape-seconds 15]

Starts `ai-bottleneck run` (host and nic probes, loopback included, 1 Hz) and
/usr/bin/prometheus-node-exporter (cpu, netdev, netstat, pressure collectors),
each on a free loopback port, and a bounded loopback TCP load (bursts of a
few MB/s with pauses) so the NIC and TCP counters move. Every
``--scrape-seconds`` it scrapes both at once, as Prometheus would, and at
the end rebuilds each total as the sum of increases between scrapes (a
decrease is a counter reset: the new value is the increase, as Prometheus'
``increase()`` counts it).

Pairs compared (same kernel counter on both sides): lo and eth0 (where the
host has one) bytes and packets in both directions, TCP OutSegs and
RetransSegs, CPU seconds of all CPUs per mode, PSI stall seconds. Target:
each within 1% over 5 minutes (a pair whose totals are both under its noise
floor is reported, not judged). For contrast,
the lo receive bytes rebuilt from the window-mean gauge (gauge x scrape
interval) is printed too.

The agent's counters are its latest sample's (at most one sampling interval
old at a scrape); both ends of the run carry that lag, so it cancels for a
steady load.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.bench.bench_agent import NODE_EXPORTER, agent_port, free_port, running, wait_ready

TARGET_SHARE = 0.01
ACCEPT = "text/plain;version=0.0.4"

AGENT_CONFIG = """
[agent]
interval_seconds = 1
window_seconds = 10
listen = "127.0.0.1:0"
[probes.nic]
include = ["lo"]
[probes.gpu]
enabled = false
[probes.oom]
enabled = false
[probes.http]
enabled = false
[probes.download]
enabled = false
[probes.iperf3]
enabled = false
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Pick = Callable[[Samples], float | None]


def scrape(port: int) -> Samples:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept": ACCEPT})
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"port {port}: /metrics answered {response.status}")
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one(name: str, **labels: str) -> Pick:
    key = (name, tuple(sorted(labels.items())))
    return lambda samples: samples.get(key)


def summed(name: str, **labels: str) -> Pick:
    """The sum over every series of ``name`` that has ``labels``."""
    wanted = set(labels.items())

    def pick(samples: Samples) -> float | None:
        found = [v for (n, lv), v in samples.items() if n == name and wanted <= set(lv)]
        return sum(found) if found else None
    return pick


@dataclass(frozen=True)
class Pair:
    what: str
    agent: Pick
    node: Pick
    floor: float  # below this on both sides the ratio is noise: reported, not judged


def pairs() -> list[Pair]:
    out = [
        *(Pair(f"eth0 {direction} {unit}",
               one(f"ai_bottleneck_nic_{short}_{unit}_total", nic="eth0"),
               one(f"node_network_{direction}_{unit}_total", device="eth0"),
               1e6 if unit == "bytes" else 1e3)
          for direction, short in (("receive", "rx"), ("transmit", "tx"))
          for unit in ("bytes", "packets")),
        Pair("lo receive bytes", one("ai_bottleneck_nic_rx_bytes_total", nic="lo"),
             one("node_network_receive_bytes_total", device="lo"), 1e6),
        Pair("lo transmit bytes", one("ai_bottleneck_nic_tx_bytes_total", nic="lo"),
             one("node_network_transmit_bytes_total", device="lo"), 1e6),
        Pair("lo receive packets", one("ai_bottleneck_nic_rx_packets_total", nic="lo"),
             one("node_network_receive_packets_total", device="lo"), 1e3),
        Pair("lo transmit packets", one("ai_bottleneck_nic_tx_packets_total", nic="lo"),
             one("node_network_transmit_packets_total", device="lo"), 1e3),
        Pair("TCP segments sent", one("ai_bottleneck_host_tcp_out_segments_total"),
             one("node_netstat_Tcp_OutSegs"), 1e3),
        Pair("TCP retransmits", one("ai_bottleneck_host_tcp_retransmits_total"),
             one("node_netstat_Tcp_RetransSegs"), 100),
    ]
    for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
        out.append(Pair(f"CPU seconds, {mode}",
                        one("ai_bottleneck_host_cpu_seconds_total", mode=mode),
                        summed("node_cpu_seconds_total", mode=mode), 5.0))
    for resource in ("cpu", "io", "memory"):
        for kind, node_name in (("some", "waiting"), ("full", "stalled")):
            if resource == "cpu" and kind == "full":
                continue  # node_exporter 1.5 does not export CPU "full"
            out.append(Pair(f"PSI {resource} {kind} seconds",
                            one("ai_bottleneck_host_pressure_stalled_seconds_total",
                                resource=resource, kind=kind),
                            one(f"node_pressure_{resource}_{node_name}_seconds_total"), 1.0))
    return out


def rebuilt(values: list[float | None]) -> float | None:
    """Sum of increases between consecutive readings; a decrease is a reset."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return None
    total = 0.0
    for before, after in itertools.pairwise(known):
        total += after - before if after >= before else after
    return total


class LoopbackLoad:
    """Bounded loopback TCP traffic: bursts of ~4 MB/s for 3 s, 2 s quiet, until stopped
    or ``max_seconds`` passed; the server discards what it reads."""

    def __init__(self, max_seconds: float) -> None:
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._server = socket.create_server(("127.0.0.1", 0))
        self._threads = [threading.Thread(target=self._serve, daemon=True),
                         threading.Thread(target=self._send, daemon=True)]

    def __enter__(self) -> LoopbackLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.close()
        for t in self._threads:
            t.join(10)

    def _serve(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(1.0)
            while not self._stop.is_set():
                try:
                    if not conn.recv(1 << 16):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def _send(self) -> None:
        chunk = b"x" * 16384
        with socket.create_connection(self._server.getsockname()) as conn:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                burst_end = time.monotonic() + 3.0
                while time.monotonic() < burst_end and not self._stop.is_set():
                    conn.sendall(chunk)
                    time.sleep(0.004)  # ~4 MB/s
                self._stop.wait(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--scrape-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    if not NODE_EXPORTER.exists():
        print(f"{NODE_EXPORTER} missing: apt-get install prometheus-node-exporter")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "config.toml"
        config.write_text(AGENT_CONFIG)
        agent_log, node_log = folder / "agent.log", folder / "node.log"
        node_port = free_port()
        node_args = [str(NODE_EXPORTER), f"--web.listen-address=127.0.0.1:{node_port}",
                     "--collector.disable-defaults", "--collector.cpu", "--collector.netdev",
                     "--collector.netstat", "--collector.pressure",
                     "--collector.netdev.device-exclude=^$"]  # lo too
        agent_args = [sys.executable, "-m", "ai_bottleneck.cli", "run", "--config", str(config)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with running(agent_args, env, agent_log) as agent, \
                running(node_args, None, node_log) as node:
            port = agent_port(agent_log, agent)
            wait_ready(port, agent, "the agent", ready='ai_bottleneck_nic_rx_bytes_total{nic="lo"}')
            wait_ready(node_port, node, "node_exporter")
            readings: list[tuple[Samples, Samples]] = []
            seconds = args.minutes * 60
            started = time.monotonic()
            with LoopbackLoad(seconds + 30), ThreadPoolExecutor(2) as pool:
                while True:
                    a, n = pool.submit(scrape, port), pool.submit(scrape, node_port)
                    readings.append((a.result(), n.result()))
                    elapsed = time.monotonic() - started
                    if elapsed >= seconds:
                        break
                    time.sleep(min(args.scrape_seconds, seconds - elapsed))
            wall = time.monotonic() - started
    print(f"bench_counters: {len(readings)} scrapes over {wall:.0f} s "
          f"(every {args.scrape_seconds:g} s); target: each pair within "
          f"{TARGET_SHARE:.0%}")
    print(f"{'counter':28} {'agent':>16} {'node_exporter':>16} {'diff':>8}  verdict")
    failed = 0
    for p in pairs():
        a_total = rebuilt([p.agent(a) for a, _n in readings])
        n_total = rebuilt([p.node(n) for _a, n in readings])
        if a_total is None or n_total is None:
            print(f"{p.what:28} {'-':>16} {'-':>16} {'':>8}  not exported "
                  f"({'agent' if a_total is None else 'node_exporter'})")
            continue
        if max(a_total, n_total) < p.floor:
            print(f"{p.what:28} {a_total:16.6g} {n_total:16.6g} {'':>8}  below noise floor "
                  f"{p.floor:g}: not judged")
            continue
        diff = (a_total - n_total) / n_total if n_total else float("inf")
        ok = abs(diff) <= TARGET_SHARE
        failed += not ok
        print(f"{p.what:28} {a_total:16.6g} {n_total:16.6g} {diff:+8.3%}  "
              f"{'ok' if ok else 'MISSED'}")
    gauge = [a.get(("ai_bottleneck_nic_rx_bytes_per_second", (("nic", "lo"),)))
             for a, _n in readings]
    if all(g is not None for g in gauge[1:]):
        from_gauge = sum(g * args.scrape_seconds for g in gauge[1:] if g is not None)
        n_total = rebuilt([one("node_network_receive_bytes_total", device="lo")(n)
                           for _a, n in readings]) or 0.0
        if n_total:
            print(f"(for contrast: lo receive bytes from the window-mean gauge x "
                  f"{args.scrape_seconds:g} s: {from_gauge:.6g}, "
                  f"{(from_gauge - n_total) / n_total:+.1%} against node_exporter)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
