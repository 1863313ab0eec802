"""What one sampling pass costs: gpu (fake NVML, 8 GPUs) + host + nic.

Run: python -m tests.bench.bench_sampling [--passes 2000]

Prints CPU microseconds per pass (this thread's CPU time, so other processes
on the machine do not count), split by probe, and the resident memory of a
fresh interpreter after importing the agent and the probes (measured in a
subprocess so this benchmark's own allocations are not counted).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from ai_bottleneck.probes.gpu import GpuProbe
from ai_bottleneck.probes.gpu import Options as GpuOptions
from ai_bottleneck.probes.host import HostProbe
from ai_bottleneck.probes.nic import NicProbe
from tests.fakes.fake_nvml import FakeNvml

RSS_SNIPPET = """
import ai_bottleneck.cli, ai_bottleneck.sampler, ai_bottleneck.record
import ai_bottleneck.probes.gpu, ai_bottleneck.probes.host, ai_bottleneck.probes.nic
with open('/proc/self/status') as fh:
    for line in fh:
        if line.startswith(('VmRSS', 'VmHWM')):
            print(line.split()[0], int(line.split()[1]) * 1024)
"""


def _cpu_us(fn: object, passes: int) -> list[float]:
    out = []
    call = fn  # a bound sample() method
    for _ in range(passes):
        t0 = time.thread_time_ns()
        call()  # type: ignore[operator]
        out.append((time.thread_time_ns() - t0) / 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=2000)
    args = ap.parse_args()

    fake = FakeNvml.with_gpus(8, utilization_percent=60)
    probes = {
        "gpu (8 fake GPUs)": GpuProbe(GpuOptions(), backend=fake),
        "host": HostProbe(),
        "nic": NicProbe(),
    }
    for p in probes.values():
        assert p.check().usable, p.name
        p.sample()  # prime the rate state
    # Include the fake's share honestly: it is part of what one pass costs here.
    per_probe = {name: _cpu_us(p.sample, args.passes) for name, p in probes.items()}
    totals = [sum(v[i] for v in per_probe.values()) for i in range(args.passes)]
    for p in probes.values():
        p.close()

    rss = subprocess.run([sys.executable, "-c", RSS_SNIPPET], capture_output=True, text=True,
                         check=True).stdout.split()
    rss_bytes = dict(zip(rss[::2], (int(x) for x in rss[1::2]), strict=True))

    print(f"{'what':<22} {'median µs':>10} {'p95 µs':>10}")
    for name, v in [*per_probe.items(), ("one pass (total)", totals)]:
        q = statistics.quantiles(v, n=20)
        print(f"{name:<22} {statistics.median(v):>10.0f} {q[18]:>10.0f}")
    print(f"passes: {args.passes}; CPU time from time.thread_time_ns")
    print(f"RSS after import (fresh interpreter): {rss_bytes['VmRSS:'] / 2**20:.1f} MiB "
          f"(peak {rss_bytes['VmHWM:'] / 2**20:.1f} MiB)")
    print(f"at 1 Hz one pass per second = {statistics.median(totals) / 1e4:.3f}% of one core")


if __name__ == "__main__":
    main()
