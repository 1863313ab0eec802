"""What this host offers, for `ai-bottleneck plan`: GPU memory (through the project's
one NVML entry point), NIC link speeds (the nic probe's reading of /sys), and
throughput measured by the iperf3 and download probes, now (``--measure``) or in
a recording (``--from``)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_bottleneck.plan import Gpu, Link
from ai_bottleneck.probes.nvml import (
    FunctionMissing,
    NVMLError,
    NvmlSession,
    NvmlUnavailable,
    describe,
)
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import RecordReader


def host_gpus(backend: Any | None = None) -> tuple[list[Gpu], str | None]:
    """The GPUs NVML sees, or ([], why not). ``backend``: a pynvml-shaped object
    (tests pass the fake); None is the real library or the one the environment names."""
    session = NvmlSession(backend)
    try:
        session.start()
    except NvmlUnavailable as exc:
        return [], str(exc)
    gpus: list[Gpu] = []
    problems: list[str] = []
    try:
        count = int(session.call("nvmlDeviceGetCount"))
        for i in range(count):
            try:
                handle = session.call("nvmlDeviceGetHandleByIndex", i)
                name = session.call("nvmlDeviceGetName", handle)
                memory = session.call("nvmlDeviceGetMemoryInfo", handle)
            except (NVMLError, FunctionMissing) as exc:
                # A lost GPU is left out and named; the others still count.
                problems.append(f"GPU {i} left out: {describe(exc)}")
                continue
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(Gpu(name, int(memory.total), int(memory.used)))
    except (NVMLError, FunctionMissing) as exc:
        problems.append(describe(exc))
    finally:
        session.stop()
    if not gpus and not problems:
        problems.append("NVML sees no GPU")
    return gpus, "; ".join(problems) or None


def nic_link(proc_root: str | Path = "/proc", sys_root: str | Path = "/sys") -> Link:
    """The fastest link among the interfaces the nic probe would report."""
    from ai_bottleneck.probes.nic import NicProbe

    probe = NicProbe(proc_root=proc_root, sys_root=sys_root)
    try:
        speeds = link_speeds(probe.sample())
    finally:
        probe.close()
    return _link_from_speeds(speeds, "link speed in /sys/class/net")


def link_speeds(samples: Iterable[Sample]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        speed = s.values.get("link_speed_bits_per_second") if s.ok else None
        if s.probe == "nic" and speed and "nic" in s.labels:
            out[s.labels["nic"]] = max(speed, out.get(s.labels["nic"], 0.0))
    return out


def _link_from_speeds(speeds: dict[str, float], where: str) -> Link:
    if not speeds:
        return Link()
    name = max(speeds, key=lambda n: speeds[n])
    return Link(nic_bits_per_second=speeds[name], nic_source=f"{name}, {where}")


def throughputs(samples: Iterable[Sample]) -> dict[str, list[float]]:
    """bits_per_second of successful iperf3 and download samples, by probe and target."""
    out: dict[str, list[float]] = {}
    for s in samples:
        bps = s.values.get("bits_per_second") if s.ok else None
        if s.probe in ("iperf3", "download") and bps:
            target = s.labels.get("target") or s.labels.get("url") or "?"
            out.setdefault(f"{s.probe} to {target}", []).append(bps)
    return out


def with_measured(link: Link, measured: dict[str, list[float]], where: str) -> Link:
    """``link`` plus the lowest median throughput measured (the tightest path)."""
    if not measured:
        return link
    medians = {k: statistics.median(v) for k, v in measured.items()}
    key = min(medians, key=lambda k: medians[k])
    runs = len(measured[key])
    return Link(link.nic_bits_per_second, link.nic_source, medians[key],
                f"{key}, median of {runs} run{'s' if runs > 1 else ''} {where}")


def measure_now(iperf3_targets: Sequence[str], download_url: str | None,
                seconds: float = 3.0) -> tuple[dict[str, list[float]], list[str]]:
    """One short run of the iperf3 and download probes; (throughputs, errors)."""
    from ai_bottleneck.probes.download import create as create_download
    from ai_bottleneck.probes.iperf3 import create as create_iperf3

    probes: list[Any] = []
    if iperf3_targets:
        probes.append(create_iperf3({"targets": list(iperf3_targets),
                                     "duration_seconds": seconds, "busy_retries": 0}))
    if download_url:
        probes.append(create_download({"url": download_url, "max_seconds": seconds,
                                       "warmup_seconds": min(1.0, seconds / 3)}))
    samples: list[Sample] = []
    for probe in probes:
        try:
            samples.extend(probe.sample())
        finally:
            probe.close()
    errors = [f"{s.probe}: {s.error}" for s in samples if not s.ok]
    return throughputs(samples), errors


@dataclass
class RecordedLoad:
    """What a recording says about the service's requests and the host's links."""

    path: Path
    requests: int = 0
    request_bytes: float | None = None
    response_bytes: float | None = None
    server_seconds: float | None = None
    total_seconds: float | None = None
    concurrency: float | None = None
    gpus: list[Gpu] = field(default_factory=list)
    link: Link = field(default_factory=Link)
    malformed_lines: int = 0


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def read_recorded_load(path: str | os.PathLike[str]) -> RecordedLoad:
    """Request sizes, server times, concurrency, GPU memory and link rates from a
    recording; RecordError (one line) when the file is no recording."""
    reader = RecordReader(path)
    sizes_in: list[float] = []
    sizes_out: list[float] = []
    server: list[float] = []
    total: list[float] = []
    running: list[float] = []
    gpus: dict[str, Gpu] = {}
    nic: list[Sample] = []
    net: list[Sample] = []
    for s in reader:
        if not s.ok:
            continue
        v = s.values
        if s.probe == "http":
            if "total_seconds" in v:
                total.append(v["total_seconds"])
            if "server_seconds" in v:
                server.append(v["server_seconds"])
            if "request_bytes" in v:
                sizes_in.append(v["request_bytes"])
            if "response_bytes" in v:
                sizes_out.append(v["response_bytes"])
        elif s.probe == "engine" and "requests_running" in v:
            running.append(v["requests_running"])
        elif s.probe == "gpu" and "memory_total_bytes" in v:
            key = s.labels.get("uuid") or s.labels.get("gpu", "?")
            gpus[key] = Gpu(s.labels.get("name", f"GPU {s.labels.get('gpu', '?')}"),
                            int(v["memory_total_bytes"]),
                            int(v["memory_used_bytes"]) if "memory_used_bytes" in v else None)
        elif s.probe == "nic":
            nic.append(s)
        elif s.probe in ("iperf3", "download"):
            net.append(s)
    p = Path(path)
    link = _link_from_speeds(link_speeds(nic), f"recorded in {p.name}")
    link = with_measured(link, throughputs(net), f"in {p.name}")
    return RecordedLoad(
        path=p, requests=len(total), request_bytes=_mean(sizes_in),
        response_bytes=_mean(sizes_out), server_seconds=_mean(server),
        total_seconds=_mean(total), concurrency=max(running) if running else None,
        gpus=list(gpus.values()), link=link, malformed_lines=reader.stats.malformed)
