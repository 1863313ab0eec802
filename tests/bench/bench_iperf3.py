"""Benchmark: does the iperf3 probe measure a shaped link at its configured rate?

    sudo python -m tests.bench.bench_iperf3 [--rates 10mbit,50mbit] [--duration 5]

For each rate, a network namespace joined by a veth pair with tc tbf at that
rate on both sides (tests/netns.py), an iperf3 server inside it, and the probe
measuring upload (send) and download (receive, iperf3 -R). Prints measured /
configured side by side with the target (within 5%).

tbf counts whole Ethernet frames; iperf3 counts TCP payload. A full-size
frame of 1514 bytes carries 1448 bytes of payload (with TCP timestamps), so
a perfect measurement reads about 95.6% of the tbf rate. The table prints that
ceiling too, so a reader can tell the probe's error from header overhead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from ai_bottleneck.probes.iperf3 import Iperf3Probe, Options
from ai_bottleneck.probes.options import parse_options, parse_rate
from tests.netns import netns_link

TARGET_RATIO_ERROR = 0.05
PAYLOAD_CEILING = 1448 / 1514  # TCP payload share of a full frame on the wire


def wait_listening(pid: int, port: int, timeout: float = 10.0) -> None:
    """Wait, without connecting, until ``pid``'s namespace listens on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    return
        time.sleep(0.02)
    raise TimeoutError(f"iperf3 server not listening on {port}")


def measure(rate: float, duration: int, omit: int, repeat: int) -> list[tuple[str, float]]:
    results = []
    with netns_link(rate_in_bits_per_second=rate, rate_out_bits_per_second=rate) as link:
        port = 5201
        server = link.popen(["iperf3", "--server", "--bind", link.ns_addr, "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for direction, reverse in (("send", False), ("receive", True)):
                for _ in range(repeat):
                    wait_listening(server.pid, port)
                    probe = Iperf3Probe(parse_options(Options, {
                        "targets": [f"{link.ns_addr}:{port}"], "duration_seconds": duration,
                        "omit_seconds": omit, "reverse": reverse}))
                    [sample] = probe.sample()
                    if not sample.ok:
                        raise SystemExit(f"iperf3 probe failed at {rate:g} bit/s "
                                         f"{direction}: {sample.error}")
                    results.append((direction, sample.values["bits_per_second"]))
        finally:
            server.kill()
            server.wait(timeout=10)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="10mbit,50mbit",
                        help="comma-separated tbf rates (default 10mbit,50mbit)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per test")
    parser.add_argument("--omit", type=int, default=1, help="slow-start seconds left out")
    parser.add_argument("--repeat", type=int, default=2, help="tests per rate and direction")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_iperf3: needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    try:
        rates = [parse_rate(r) for r in args.rates.split(",")]
    except ValueError as exc:
        print(f"bench_iperf3: --rates: {exc}", file=sys.stderr)
        return 2
    print(f"iperf3 probe vs tc tbf rate: {args.duration} s tests, {args.omit} s omitted, "
          f"{args.repeat} per row; target |measured/configured - 1| <= "
          f"{TARGET_RATIO_ERROR:.0%}; payload ceiling {PAYLOAD_CEILING:.3f}")
    header = (f"{'tbf rate':>10} {'direction':>9} {'measured':>12} {'ratio':>7} "
              f"{'ratio/ceiling':>13} {'target':>7}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for rate in rates:
        for direction, measured in measure(rate, args.duration, args.omit, args.repeat):
            ratio = measured / rate
            worst = max(worst, abs(ratio - 1))
            verdict = "ok" if abs(ratio - 1) <= TARGET_RATIO_ERROR else "MISS"
            print(f"{rate / 1e6:>6g} Mb/s {direction:>9} {measured / 1e6:>7.3f} Mb/s "
                  f"{ratio:>7.3f} {ratio / PAYLOAD_CEILING:>13.3f} {verdict:>7}")
    print(f"worst |ratio - 1| = {worst:.3f} (target {TARGET_RATIO_ERROR:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
