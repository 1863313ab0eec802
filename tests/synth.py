"""Synthetic samples in the agreed value vocabulary, for classifier tests and the
replay benchmark.

Window tests describe a window by its steady readings, one *part* per source:

    window_of(gpu(util=0.18, sm=0.15), host(cpu=0.2), nic(tx=0.94e9),
              http(total=4.2, upload=3.9, server=0.2))

Each part is a function of the second it samples; ``scene`` calls every part
once per second of the window, so the window's aggregates are exactly the
numbers written (mean = p95 = max for a steady reading).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ai_bottleneck.findings import Classification
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import RecordWriter, make_header
from ai_bottleneck.windows import Window

T0 = 1_700_000_000.0
GiB = 2**30
A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"
#: Clock-event reasons and their NVML bits.
CLOCK_EVENTS = {"gpu_idle": 0x1, "sw_power_cap": 0x4, "hw_slowdown": 0x8,
                "sw_thermal_slowdown": 0x20, "hw_thermal_slowdown": 0x40}

Part = Callable[[float], Sample | Sequence[Sample] | None]


# -- single samples ------------------------------------------------------------------

def gpu_sample(t: float, index: int = 0, *, util: float, sm: float | None = None,
               dram: float | None = None, mem: float = 0.10, total: float = 80e9,
               name: str = A100, power: float | None = None, power_limit: float | None = None,
               processes: int = 1, oom_total: float | None = None,
               slowdown: str | None = None, full: bool = False) -> Sample:
    """One GPU reading. ``sm`` given means GPM was read (Hopper and newer)."""
    values: dict[str, float] = {
        "utilization_ratio": util, "memory_used_bytes": mem * total,
        "memory_total_bytes": total, "process_count": processes,
        "gpm_available": 1.0 if sm is not None else 0.0,
    }
    if sm is not None:
        values["sm_active_ratio"] = sm
        values["dram_active_ratio"] = dram if dram is not None else sm * 0.6
    if power is not None:
        values["power_watts"] = power
    if power_limit is not None:
        values["power_limit_watts"] = power_limit
    if oom_total is not None:
        values["oom_events_total"] = oom_total
    for reason in CLOCK_EVENTS:
        if slowdown is not None or full:
            values[f"clocks_event_{reason}_flag"] = 1.0 if reason == slowdown else 0.0
    if full:
        values.update({
            "memory_reserved_bytes": 0.01 * total, "temperature_celsius": 40 + 40 * util,
            "power_watts": power if power is not None else 80 + 300 * util,
            "power_limit_watts": power_limit or 400.0, "sm_clock_hertz": 1.41e9,
            "sm_clock_max_hertz": 1.41e9,
            "clocks_event_reasons_bitmask": float(CLOCK_EVENTS.get(slowdown or "", 0)),
            "pcie_rx_bytes_per_second": 2e9 * util, "pcie_tx_bytes_per_second": 1e9 * util,
            "sm_occupancy_ratio": (sm or util) * 0.5, "tensor_active_ratio": (sm or util) * 0.4,
            "utilization_samples": 6.0, "process_memory_used_bytes": mem * total * 0.98,
        })
    labels = {"gpu": str(index), "uuid": f"GPU-{index:08d}-0000-0000-0000-000000000000",
              "name": name, "pci_bus_id": f"00000000:{index + 1:02x}:00.0"}
    return Sample(t, "gpu", labels, values)


def gpu_process_sample(t: float, index: int, pid: int, mem_bytes: float) -> Sample:
    return Sample(t, "gpu", {"gpu": str(index), "uuid": f"GPU-{index:08d}-0000-0000-0000-"
                                                         "000000000000",
                             "pid": str(pid), "process_name": "python3"},
                  {"process_memory_used_bytes": mem_bytes})


def gpu_failure(t: float, index: int | None, error: str) -> Sample:
    labels = ({} if index is None else
              {"gpu": str(index), "uuid": f"GPU-{index:08d}-0000-0000-0000-000000000000"})
    return Sample(t, "gpu", labels, error=error)


def host_sample(t: float, *, cpu: float, busiest: float | None = None,
                psi: float | None = None, io: float | None = None, cpus: int = 16,
                full: bool = False) -> Sample:
    values = {"cpu_utilization_ratio": cpu, "cpu_count": float(cpus),
              "cpu_busiest_core_ratio": busiest if busiest is not None else min(1.0, cpu * 1.2)}
    if psi is not None:
        values["cpu_pressure_some_ratio"] = psi
    if io is not None:
        values["io_pressure_some_ratio"] = io
    if full:
        values.update({"memory_used_ratio": 0.4, "load1_per_cpu": cpu,
                       "cpu_pressure_some_ratio": psi if psi is not None else cpu * 0.1,
                       "cpu_pressure_full_ratio": 0.0,
                       "io_pressure_some_ratio": io if io is not None else 0.01,
                       "io_pressure_full_ratio": 0.0, "memory_pressure_some_ratio": 0.0,
                       "memory_pressure_full_ratio": 0.0})
    return Sample(t, "host", {}, values)


def nic_sample(t: float, name: str = "eth0", *, rx: float = 0.0, tx: float = 0.0,
               link: float | None = 1e9, full: bool = False) -> Sample:
    values = {"rx_bits_per_second": rx, "tx_bits_per_second": tx}
    if link is not None:
        values.update({"link_speed_bits_per_second": link, "rx_utilization_ratio": rx / link,
                       "tx_utilization_ratio": tx / link})
    if full:
        values.update({"rx_drops_per_second": 0.0, "tx_drops_per_second": 0.0,
                       "rx_errors_per_second": 0.0, "tx_errors_per_second": 0.0})
    return Sample(t, "nic", {"nic": name}, values)


def tcp_sample(t: float, *, retransmit_ratio: float, segments: float = 1000.0) -> Sample:
    return Sample(t, "nic", {"scope": "host"}, {
        "tcp_retransmit_ratio": retransmit_ratio, "tcp_out_segments_per_second": segments,
        "tcp_retransmits_per_second": retransmit_ratio * segments})


def http_sample(t: float, target: str = "http://inference.test/v1/run", *, total: float,
                upload: float | None = None, server: float | None = None,
                download: float | None = None, request_bytes: float | None = None,
                response_bytes: float | None = None, concurrency: float | None = None,
                status: float = 200.0, connect: float | None = None) -> Sample:
    values = {"total_seconds": total, "status": status}
    for name, v in (("upload_seconds", upload), ("server_seconds", server),
                    ("download_seconds", download), ("request_bytes", request_bytes),
                    ("response_bytes", response_bytes), ("concurrency", concurrency),
                    ("connect_seconds", connect)):
        if v is not None:
            values[name] = v
    return Sample(t, "http", {"target": target}, values)


def http_failure(t: float, target: str = "http://inference.test/v1/run", *,
                 error: str = "connection refused", status: float | None = None) -> Sample:
    return Sample(t, "http", {"target": target},
                  {"status": status} if status is not None else {}, error=error)


def oom_sample(t: float, *, events: float = 0.0, load_failures: float = 0.0,
               source: str = "kernel") -> Sample:
    return Sample(t, "oom", {"source": source}, {"oom_events": events,
                                                 "load_failure_events": load_failures})


def throughput_sample(t: float, probe: str, target: str, bps: float) -> Sample:
    label = "url" if probe == "download" else "target"
    return Sample(t, probe, {label: target}, {"bits_per_second": bps, "bytes": bps / 8 * 5,
                                              "seconds": 5.0})


def skipped_sample(t: float, probe: str, reason: str = "budget") -> Sample:
    return Sample(t, probe, {"skip_reason": reason}, {"skipped": 1.0})


# -- parts: one source's steady reading, called once per second ----------------------

def gpu(index: int = 0, **kw: object) -> Part:
    return lambda t: gpu_sample(t, index, **kw)  # type: ignore[arg-type]


def host(**kw: object) -> Part:
    return lambda t: host_sample(t, **kw)  # type: ignore[arg-type]


def nic(name: str = "eth0", **kw: object) -> Part:
    return lambda t: nic_sample(t, name, **kw)  # type: ignore[arg-type]


def tcp(retransmit_ratio: float) -> Part:
    return lambda t: tcp_sample(t, retransmit_ratio=retransmit_ratio)


def http(target: str = "http://inference.test/v1/run", **kw: object) -> Part:
    return lambda t: http_sample(t, target, **kw)  # type: ignore[arg-type]


def http_down(target: str = "http://inference.test/v1/run", **kw: object) -> Part:
    return lambda t: http_failure(t, target, **kw)  # type: ignore[arg-type]


def oom(**kw: float) -> Part:
    return lambda t: oom_sample(t, **kw)


def scene(*parts: Part, seconds: int = 10, start: float = T0) -> list[Sample]:
    out: list[Sample] = []
    for i in range(seconds):
        t = start + i
        for part in parts:
            got = part(t)
            if got is None:
                continue
            if isinstance(got, Sample):
                out.append(got)
            else:
                out.extend(got)
    return out


def window_of(*parts: Part, seconds: int = 10, start: float = T0,
              unavailable: Mapping[str, str] | None = None,
              expected: Iterable[str] = (), extra: Iterable[Sample] = ()) -> Window:
    samples = scene(*parts, seconds=seconds, start=start) + list(extra)
    return Window.from_samples(samples, start, start + seconds, unavailable=unavailable,
                               expected=tuple(expected))


# -- a whole day for the replay benchmark --------------------------------------------

#: (name, per-GPU util, GPM SM, CPU, eth0 tx bits/s, p95-ish request seconds, upload s)
DAY_PHASES = (
    ("idle", 0.01, 0.01, 0.03, 2e5, 0.15, 0.01),
    ("serving", 0.55, 0.45, 0.35, 3e8, 0.6, 0.05),
    ("gpu_bound", 0.99, 0.92, 0.40, 4e8, 3.5, 0.05),
    ("network_bound", 0.08, 0.05, 0.10, 9.6e8, 6.0, 5.5),
    ("cpu_bound", 0.12, 0.08, 0.97, 1e8, 2.5, 0.05),
)


def day_samples(hours: float = 24.0, *, gpus: int = 4, processes: bool = True,
                start: float = T0, seed: int = 7) -> Iterable[Sample]:
    """A day at 1 Hz: every GPU (full vocabulary), its process, the host, two NICs
    and host TCP, and one timed HTTP call each second; the load changes every
    20 minutes through DAY_PHASES, with noise."""
    rng = random.Random(seed)
    target = "http://inference.test/v1/run"
    for second in range(int(hours * 3600)):
        t = start + second + rng.uniform(0.0, 0.05)
        _phase, util, sm, cpu, tx, total, upload = DAY_PHASES[(second // 1200) % len(DAY_PHASES)]
        jitter = rng.uniform(0.9, 1.1)
        for i in range(gpus):
            u = min(1.0, util * jitter)
            yield gpu_sample(t, i, util=u, sm=min(1.0, sm * jitter), mem=0.9, name=H100,
                             full=True)
            if processes:
                yield gpu_process_sample(t, i, 4000 + i, 0.88 * 80e9)
        yield host_sample(t, cpu=min(1.0, cpu * jitter), full=True)
        yield nic_sample(t, "eth0", rx=tx * 0.2, tx=min(1e9, tx * jitter), link=1e9, full=True)
        yield nic_sample(t, "lo", rx=1e5, tx=1e5, link=None, full=True)
        yield tcp_sample(t, retransmit_ratio=0.001)
        server = max(0.01, total * jitter - upload - 0.02)
        yield http_sample(t, target, total=total * jitter, upload=upload, server=server,
                          download=0.01, connect=0.005, request_bytes=5e6,
                          response_bytes=2e3, concurrency=1.0)


def write_day(path: str | Path, hours: float = 24.0, **kw: object) -> int:
    """Write ``day_samples`` as a recording; return the number of samples."""
    with RecordWriter(path, make_header(window_seconds=10.0, probes=["gpu", "host", "nic",
                                                                       "http"])) as w:
        for s in day_samples(hours, **kw):  # type: ignore[arg-type]
            w.write(s)
        return w.count


def window_result(c: Classification, start: float = T0, end: float = T0 + 10) -> WindowResult:
    """A classified window as the pipeline hands it on (no hysteresis), for report tests."""
    return WindowResult(start=start, end=end, label=c.label.value, confidence=c.confidence,
                        raw_label=c.label.value, raw_confidence=c.confidence,
                        evidence=c.evidence, advice=c.advice, warnings=c.warnings,
                        summary=c.summary, probes=c.probes, samples=0, readings=c.readings)
