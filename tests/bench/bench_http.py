"""Benchmark: the HTTP probe against curl, the download probe against a tbf rate.

    python -m tests.bench.bench_http [--rounds 40]

Part 1 (any user): a local test server in its own process; curl -w
"%{time_total}" and the HTTP probe take turns calling it, a fresh connection
each, and the table gives the median absolute difference of the totals
(target: at most 1 ms).

Part 2 (root: network namespace and tc): a server behind a veth pair limited
to 10 Mbit/s each way by tc tbf. The download probe's rate against the
configured rate (target: within 5%), with curl's average speed beside it, and
a 5 MB upload through the same link, where the probe must put the time in
the upload phase.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai_bottleneck.probes.download import create as create_download
from ai_bottleneck.probes.http import create as create_http
from tests.netns import netns_link
from tests.servers import subprocess_server

MS = 1000.0


def curl(url: str, *extra: str, fmt: str = "%{time_total}") -> float:
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", fmt, *extra, url],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return float(out)


def probe_total(options: dict[str, Any]) -> Callable[[], float]:
    probe = create_http(options)

    def call() -> float:
        (sample,) = probe.sample()
        if sample.error:
            raise RuntimeError(sample.error)
        return sample.values["total_seconds"]

    return call


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.9 * len(xs)) - 1)]


def part_curl(rounds: int) -> None:
    print(f"HTTP probe total_seconds vs curl -w %{{time_total}}: same local server "
          f"(own process), {rounds} interleaved pairs per case, a fresh connection per call")
    print("diff = probe - curl, per pair")
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "upload.bin"
        body.write_bytes(os.urandom(1_000_000))
        with subprocess_server("delay") as (host, port), \
                subprocess_server("sink") as (sink_host, sink_port):
            base = f"http://{host}:{port}"
            sink = f"http://{sink_host}:{sink_port}/upload"
            cases: list[tuple[str, list[str], str, dict[str, Any]]] = [
                ("GET, 2 B answer", [], f"{base}/", {}),
                ("GET, 20 ms server time", [], f"{base}/?delay=0.02", {}),
                ("GET, 100 kB answer", [], f"{base}/?bytes=100000", {}),
                # At loopback speed this row shows the client's own cost of
                # parsing the body (about 50 us per 64 KB read in Python); on a
                # real link the reads overlap with the bytes arriving.
                ("GET, 1 MB answer", [], f"{base}/?bytes=1000000", {}),
                # -H "Expect:": curl would otherwise wait for "100 Continue" first.
                ("POST, 1 MB upload", ["--data-binary", f"@{body}", "-H", "Expect:",
                                       "-H", "Content-Type: application/octet-stream"],
                 sink, {"method": "POST", "body_file": str(body)}),
            ]
            header = (f"{'case':<24} {'curl median':>12} {'probe median':>13} "
                      f"{'median diff':>12} {'median |diff|':>14} {'p90 |diff|':>11}"
                      "  target <= 1 ms")
            print(header)
            print("-" * len(header))
            for name, curl_args, url, target in cases:
                call = probe_total({"targets": [{"url": url, **target}]})
                curl(url, *curl_args)  # warm both up: page cache, imports, ARP
                call()
                curls, probes = [], []
                for _ in range(rounds):
                    curls.append(curl(url, *curl_args))
                    probes.append(call())
                signed = [b - a for a, b in zip(curls, probes, strict=True)]
                diffs = [abs(d) for d in signed]
                med = statistics.median(diffs)
                print(f"{name:<24} {statistics.median(curls) * MS:>9.3f} ms "
                      f"{statistics.median(probes) * MS:>10.3f} ms "
                      f"{statistics.median(signed) * MS:>+9.3f} ms {med * MS:>11.3f} ms "
                      f"{p90(diffs) * MS:>8.3f} ms  {'met' if med <= 0.001 else 'MISSED'}")


def part_tbf(runs: int) -> None:
    rate = 10e6
    # What HTTP can carry at most over a 1500-byte MTU: tbf counts whole frames
    # (1448 payload bytes in 1514 with timestamps on), the probe counts payload.
    payload_ceiling = rate * 1448 / 1514
    print(f"\nDownload probe vs tc tbf rate {rate / 1e6:g} Mbit/s (veth into a network "
          f"namespace; payload ceiling at 1500 MTU {payload_ceiling / 1e6:.2f} Mbit/s), "
          f"4 MB per run, warm-up 1 s")
    header = (f"{'run':<4} {'probe Mbit/s':>13} {'probe/tbf':>10} {'curl avg Mbit/s':>16} "
              f"{'curl/tbf':>9}  target within 5%")
    print(header)
    print("-" * len(header))
    with netns_link(rate_in_bits_per_second=rate, rate_out_bits_per_second=rate) as link, \
            subprocess_server("stream", bind=link.ns_addr, launcher=link.popen,
                              body_bytes=4_000_000) as (host, port):
        url = f"http://{host}:{port}/file"
        probe = create_download({"url": url, "max_seconds": 10, "warmup_seconds": 1.0})
        ratios = []
        try:
            for i in range(runs):
                curl_bps = curl(url, fmt="%{speed_download}") * 8
                (sample,) = probe.sample()
                if sample.error:
                    raise RuntimeError(sample.error)
                bps = sample.values["bits_per_second"]
                ratios.append(bps / rate)
                print(f"{i + 1:<4} {bps / 1e6:>13.3f} {bps / rate:>10.3f} "
                      f"{curl_bps / 1e6:>16.3f} {curl_bps / rate:>9.3f}  "
                      f"{'met' if abs(bps / rate - 1) <= 0.05 else 'MISSED'}")
        finally:
            probe.close()
        print(f"median probe/tbf {statistics.median(ratios):.3f}; probe/payload ceiling "
              f"{statistics.median(ratios) * rate / payload_ceiling:.3f}")

    print("\n5 MB upload through the same 10 Mbit/s link: where the probe puts the time "
          f"(wire time at the tbf rate {5e6 * 8 / rate:.2f} s)")
    with netns_link(rate_in_bits_per_second=rate, rate_out_bits_per_second=rate) as link, \
            subprocess_server("sink", bind=link.ns_addr, launcher=link.popen) as (host, port):
        probe_http = create_http({"targets": [{"url": f"http://{host}:{port}/",
                                               "method": "POST", "body_bytes": "5MB",
                                               "timeout_seconds": 30}]})
        try:
            (sample,) = probe_http.sample()
        finally:
            probe_http.close()
        if sample.error:
            raise RuntimeError(sample.error)
        v = sample.values
        print(f"total {v['total_seconds']:.3f} s = upload {v['upload_seconds']:.3f} s + server "
              f"{v['server_seconds']:.3f} s + download {v['download_seconds']:.3f} s "
              f"(+ connect {v['connect_seconds']:.4f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_http")
    parser.add_argument("--rounds", type=int, default=40, help="curl/probe pairs per case")
    parser.add_argument("--runs", type=int, default=3, help="downloads through the link")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("skipping the curl comparison: curl is not installed")
    else:
        part_curl(args.rounds)
    if os.geteuid() != 0 or not (shutil.which("tc") and shutil.which("ip")):
        print("\nskipping the tbf part: it needs root, ip and tc (network namespaces, "
              "tc qdisc tbf)")
    else:
        part_tbf(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
