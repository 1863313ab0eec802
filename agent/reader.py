"""Read one window into per-resource readings (readings.py), and the key numbers per
resource that reports and the exporter show (``summary``).

Pure functions of a Window. A value a source did not give stays None, never 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ai_bottleneck.capacity import Capacity, tightest_capacity
from ai_bottleneck.engine_signals import engine_readings
from ai_bottleneck.probes.vocabulary import (
    GPU_DRAM_ACTIVE,
    GPU_MEMORY_TOTAL,
    GPU_MEMORY_USED,
    GPU_POWER,
    GPU_POWER_LIMIT,
    GPU_SM_ACTIVE,
    GPU_TEMPERATURE,
    GPU_UTILIZATION,
    HOST_BUSIEST_CORE,
    HOST_CPU,
    HOST_CPU_COUNT,
    HOST_MEMORY_USED,
    HTTP_PHASES,
    IN_FLIGHT_CALLS,
    IN_FLIGHT_NETWORK_SECONDS,
    IN_FLIGHT_SECONDS,
    IN_FLIGHT_SERVER_SECONDS,
    LINK_SPEED,
    LOAD_FAILURE_EVENTS,
    LOAD_FAILURE_EVENTS_TOTAL,
    OOM_EVENTS,
    OOM_EVENTS_TOTAL,
    REQUEST_BYTES,
    RESPONSE_BYTES,
    SERVER_SECONDS,
    STATUS_VALUE,
    TCP_RETRANSMIT_RATIO,
    TCP_RETRANSMITS,
    THROUGHPUT_VALUE,
    TOTAL_SECONDS,
    is_host_total,
    is_in_flight,
    is_process_sample,
    mig_instance,
    nic_value,
    pressure_value,
)
from ai_bottleneck.readings import (
    GpuReading,
    HostReading,
    HttpReading,
    NicReading,
    Readings,
    TcpReading,
    ThroughputReading,
)
from ai_bottleneck.series import SeriesWindow
from ai_bottleneck.windows import Window

#: Clock-event reasons that are not a slowdown (idle clocks, user-set clocks).
BENIGN_CLOCK_EVENTS = frozenset({"gpu_idle", "applications_clocks_setting",
                                 "display_clock_setting", "sync_boost"})
#: The same reasons as NVML clock-event bits (nvmlClocksEventReason*: GpuIdle 0x1,
#: ApplicationsClocksSetting 0x2, SyncBoost 0x10, DisplayClockSetting 0x100).
BENIGN_CLOCK_BITS = 0x1 | 0x2 | 0x10 | 0x100
#: Every bitmask of benign reasons only, as the float a sample carries (the common case
#: of the check in _gpu_readings, without a loop).
_QUIET_BITMASKS = frozenset(float(m) for m in range(BENIGN_CLOCK_BITS + 1)
                            if not m & ~BENIGN_CLOCK_BITS)
#: Answers that mean "too busy, come back later": queueing made visible.
OVERLOAD_STATUSES = frozenset({429.0, 503.0, 504.0})


#: ``_mean(sw, name)``: the mean of value ``name`` (SeriesWindow.mean itself, not a
#: wrapper around it: the rules read a few dozen means per window).
_mean = SeriesWindow.mean


#: ``_max(sw, name)``: the largest value of ``name`` (SeriesWindow.peak).
_max = SeriesWindow.peak


def _slowdowns(sw: SeriesWindow) -> list[tuple[str, float]]:
    out = []
    for name in sw.ok_samples[-1].values:
        if name.startswith("clocks_event_") and name.endswith("_flag"):
            reason = name[len("clocks_event_"):-len("_flag")]
            if reason not in BENIGN_CLOCK_EVENTS and sw.any_nonzero(name):
                out.append((reason, _mean(sw, name) or 0.0))
    return out


def _gpu_readings(window: Window) -> tuple[list[GpuReading], list[str]]:
    devices: dict[str, list[SeriesWindow]] = {}
    errors: list[str] = []
    for sw in window.of("gpu"):
        if is_process_sample(sw.labels):
            continue  # a process on a GPU, not a GPU
        dev = sw.labels.get("uuid") or sw.labels.get("gpu")
        if dev is None:
            errors.extend(sw.errors(1))  # the whole probe failed (no device named)
            continue
        mig = mig_instance(sw.labels)
        if mig is not None:  # a MIG instance is a GPU of its own to the rules
            dev += "/mig" + mig
        devices.setdefault(dev, []).append(sw)
    out: list[GpuReading] = []
    for group in devices.values():
        for sw in group:
            for e in sw.errors(1):
                errors.append(f"GPU {sw.labels.get('gpu', '?')}: {e}")
        measured = [sw for sw in group if sw.count]
        if not measured:
            continue
        sw = max(measured, key=lambda s: s.count)
        bitmask = sw.values("clocks_event_reasons_bitmask")
        # Nothing but idle or user-set clocks in the bitmask: no need to read every flag.
        seen = set(bitmask)
        quiet = bool(seen) and (seen <= _QUIET_BITMASKS or not any(
            int(v) & ~BENIGN_CLOCK_BITS for v in seen))
        slowdowns = [] if quiet else _slowdowns(sw)
        oom = sum(v for v in (sw.increase(OOM_EVENTS_TOTAL),
                              sw.increase(LOAD_FAILURE_EVENTS_TOTAL)) if v)
        out.append(GpuReading(
            id=(sw.labels.get("gpu") or sw.labels.get("uuid", "?"))
            + (f" MIG instance {mig}" if (mig := mig_instance(sw.labels)) is not None else ""),
            name=sw.labels.get("name"),
            samples=sw.count,
            utilization=_mean(sw, GPU_UTILIZATION),
            sm_active=_mean(sw, GPU_SM_ACTIVE),
            dram_active=_mean(sw, GPU_DRAM_ACTIVE),
            memory_used_bytes=_max(sw, GPU_MEMORY_USED),
            memory_total_bytes=sw.last(GPU_MEMORY_TOTAL),
            power_watts=_mean(sw, GPU_POWER),
            power_limit_watts=sw.last(GPU_POWER_LIMIT),
            temperature_celsius=_max(sw, GPU_TEMPERATURE),
            oom_events=oom,
            slowdowns=tuple(sorted(slowdowns, key=lambda p: -p[1])),
        ))
    return out, errors


def _host_reading(window: Window) -> HostReading | None:
    measured = [sw for sw in window.of("host") if sw.count]
    if not measured:
        return None
    sw = max(measured, key=lambda s: s.count)
    return HostReading(
        samples=sw.count,
        cpu=_mean(sw, HOST_CPU),
        busiest_core=_mean(sw, HOST_BUSIEST_CORE),
        cpu_pressure=_mean(sw, pressure_value("cpu")),
        io_pressure=_mean(sw, pressure_value("io")),
        memory_pressure=_mean(sw, pressure_value("memory")),
        memory_used_ratio=_max(sw, HOST_MEMORY_USED),
        cpu_count=sw.last(HOST_CPU_COUNT),
    )


def _utilization(sw: SeriesWindow, direction: str, capacity: Capacity | None) -> float | None:
    """Mean throughput over the tightest known rate; the probe's own ratio where the
    rates are not in the samples (it was computed against the link speed then)."""
    bits = _mean(sw, _NIC_BITS[direction])
    if bits is not None and capacity is not None:
        return bits / capacity.bits_per_second
    return _mean(sw, _NIC_UTILIZATION[direction])


_NIC_BITS, _NIC_UTILIZATION, _NIC_DROPS = (
    {d: nic_value(d, what) for d in ("rx", "tx")}
    for what in ("bits_per_second", "utilization_ratio", "drops_per_second"))


def _nic_readings(window: Window) -> tuple[list[NicReading], TcpReading | None]:
    nics: list[NicReading] = []
    tcp: TcpReading | None = None
    for sw in window.of("nic"):
        if not sw.count:
            continue
        if is_host_total(sw.labels):
            tcp = TcpReading(retransmit_ratio=_mean(sw, TCP_RETRANSMIT_RATIO),
                             retransmits_per_second=_mean(sw, TCP_RETRANSMITS))
            continue
        name = sw.labels.get("nic")
        if name is None:
            continue
        link = sw.last(LINK_SPEED)
        drops = [v for v in (_mean(sw, _NIC_DROPS["rx"]), _mean(sw, _NIC_DROPS["tx"]))
                 if v is not None]
        rx_cap, tx_cap = tightest_capacity(sw, "rx"), tightest_capacity(sw, "tx")
        # The throughput statistics first: the means below then read them, not the samples.
        rx_stats, tx_stats = sw.stats("rx_bits_per_second"), sw.stats("tx_bits_per_second")
        nics.append(NicReading(
            name=name, samples=sw.count,
            rx_bits_per_second=_mean(sw, _NIC_BITS["rx"]),
            tx_bits_per_second=_mean(sw, _NIC_BITS["tx"]),
            link_bits_per_second=link,
            rx_utilization=_utilization(sw, "rx", rx_cap),
            tx_utilization=_utilization(sw, "tx", tx_cap),
            drops_per_second=sum(drops) if drops else None,
            rx_capacity=rx_cap, tx_capacity=tx_cap,
            rx_stats=rx_stats, tx_stats=tx_stats,
        ))
    return nics, tcp


def _in_flight(group: Sequence[SeriesWindow]) -> dict[str, Any]:
    """The running-call fields of an HttpReading from a target's in-flight series: the
    window's latest report (calls grow longer while they run)."""
    reports = [sw for sw in group if sw.count]
    if not reports:
        return {}
    sw = max(reports, key=lambda s: s.last_t)
    return {"in_flight_seconds": sw.last(IN_FLIGHT_SECONDS),
            "in_flight_network_seconds": sw.last(IN_FLIGHT_NETWORK_SECONDS),
            "in_flight_server_seconds": sw.last(IN_FLIGHT_SERVER_SECONDS),
            "in_flight_calls": int(sw.last(IN_FLIGHT_CALLS) or 1)}


def _http_readings(window: Window) -> list[HttpReading]:
    targets: dict[str, list[SeriesWindow]] = {}
    running: dict[str, list[SeriesWindow]] = {}
    for sw in window.of("http"):
        into = running if is_in_flight(sw.labels) else targets
        into.setdefault(sw.labels.get("target", "?"), []).append(sw)
    out = []
    for target in dict.fromkeys([*targets, *running]):
        group = targets.get(target, [])
        calls = sum(sw.count for sw in group)
        failures = sum(sw.failures for sw in group)
        flight = _in_flight(running.get(target, []))
        if calls == 0 and failures == 0:
            if flight.get("in_flight_seconds"):
                out.append(HttpReading(target=target, calls=0, failures=0, **flight))
            continue  # only skipped
        statuses = [v for sw in group for v in sw.failed_values(STATUS_VALUE)]
        errors = tuple(dict.fromkeys(e for sw in group for e in sw.errors()))[:3]
        overload = sum(1 for s in statuses if s in OVERLOAD_STATUSES)
        server_errors = sum(1 for s in statuses if 500 <= s < 600)
        measured = [sw for sw in group if sw.count]
        if not measured:
            reading = HttpReading(target=target, calls=calls, failures=failures, errors=errors,
                                  overload_answers=overload, server_errors=server_errors)
        else:
            sw = max(measured, key=lambda s: s.count)
            phases = {p: m for p in HTTP_PHASES
                      if (m := _mean(sw, p)) is not None}
            server = sw.stats(SERVER_SECONDS)
            moved = [total for name in (REQUEST_BYTES, RESPONSE_BYTES)
                     if (total := sw.total(name)) is not None]
            reading = HttpReading(
                target=target, calls=calls, failures=failures, errors=errors,
                total=sw.stats(TOTAL_SECONDS), phases=phases,
                request_bytes=_mean(sw, REQUEST_BYTES),
                response_bytes=_mean(sw, RESPONSE_BYTES),
                concurrency=_max(sw, "concurrency"),
                overload_answers=overload, server_errors=server_errors,
                server_min_seconds=server.min if server is not None else None,
                bytes_moved=sum(moved) if moved else None)
        if flight:
            reading = dataclasses.replace(reading, **flight)
        out.append(reading)
    return out


def _throughputs(window: Window) -> list[ThroughputReading]:
    out = []
    for sw in (*window.of("iperf3"), *window.of("download"), *window.carried):
        if sw.probe not in ("iperf3", "download") or not sw.count:
            continue
        bps = _mean(sw, THROUGHPUT_VALUE)
        if bps is None:
            continue
        target = sw.labels.get("target") or sw.labels.get("url") or "?"
        direction = sw.labels.get("direction")
        out.append(ThroughputReading(
            probe=sw.probe, target=f"{target} ({direction})" if direction else target,
            bits_per_second=bps, age_seconds=max(0.0, window.end - sw.last_t),
            retransmits=(st.sum if (st := sw.stats("retransmits")) else None),
            direction="tx" if sw.probe == "iperf3" and direction != "receive" else "rx"))
    return out


def _events(window: Window, gpus: Sequence[GpuReading]) -> tuple[float, float, list[str]]:
    oom = load = 0.0
    sources: list[str] = []
    for sw in window.of("oom"):
        if not sw.count:
            continue
        source = sw.labels.get("source", "oom")
        o = (st.sum if (st := sw.stats(OOM_EVENTS)) else sw.increase(OOM_EVENTS_TOTAL)) or 0
        f = ((st.sum if (st := sw.stats(LOAD_FAILURE_EVENTS)) else
              sw.increase(LOAD_FAILURE_EVENTS_TOTAL)) or 0)
        if o or f:
            sources.append(source)
        oom += o
        load += f
    for g in gpus:
        if g.oom_events:
            oom += g.oom_events
            sources.append(f"GPU {g.id}")
    return oom, load, sources


def read(window: Window) -> Readings:
    gpus, gpu_errors = _gpu_readings(window)
    nics, tcp = _nic_readings(window)
    oom, load, sources = _events(window, gpus)
    status = window.statuses()
    for name in ("gpu", "host", "nic", "http"):
        if name not in status:
            status[name] = window.status(name)
    return Readings(
        gpus=tuple(gpus), host=_host_reading(window), nics=tuple(nics), tcp=tcp,
        http=tuple(_http_readings(window)), throughputs=tuple(_throughputs(window)),
        oom_events=oom, load_failures=load, event_sources=tuple(sources), status=status,
        gpu_errors=tuple(gpu_errors), engines=tuple(engine_readings(window)),
        window_seconds=window.end - window.start if window.end > window.start else None)


def summary(r: Readings) -> dict[str, Any]:
    """Key numbers per resource for reports and the exporter (units in the names)."""
    out: dict[str, Any] = {}
    if r.gpus:
        out["gpu"] = {g.id: _drop_none({
            "name": g.name, "busy_ratio": g.busy, "busy_signal": "sm_active" if g.gpm
            else "utilization", "utilization_ratio": g.utilization,
            "sm_active_ratio": g.sm_active, "dram_active_ratio": g.dram_active,
            "memory_used_bytes": g.memory_used_bytes,
            "memory_total_bytes": g.memory_total_bytes,
            "memory_used_ratio": g.memory_used_ratio, "power_watts": g.power_watts})
            for g in r.gpus}
    if r.host is not None:
        h = r.host
        out["host"] = _drop_none({
            "cpu_utilization_ratio": h.cpu, "cpu_busiest_core_ratio": h.busiest_core,
            "cpu_pressure_some_ratio": h.cpu_pressure, "io_pressure_some_ratio": h.io_pressure,
            "memory_used_ratio": h.memory_used_ratio})
    if r.nics:
        out["nic"] = {n.name: _drop_none({
            "rx_bits_per_second": n.rx_bits_per_second,
            "tx_bits_per_second": n.tx_bits_per_second,
            "link_speed_bits_per_second": n.link_bits_per_second,
            "rx_utilization_ratio": n.rx_utilization,
            "tx_utilization_ratio": n.tx_utilization}) for n in r.nics}
    if r.tcp is not None and r.tcp.retransmit_ratio is not None:
        out["tcp"] = {"retransmit_ratio": r.tcp.retransmit_ratio}
    if r.http:
        out["http"] = {h.target: _drop_none({
            "calls": h.calls, "failures": h.failures,
            "p95_total_seconds": h.total.p95 if h.total else None,
            "mean_total_seconds": h.total.mean if h.total else None,
            **{f"mean_{k}": v for k, v in h.phases.items()},
            "network_share_ratio": h.network_share, "server_share_ratio": h.server_share,
            "request_bytes": h.request_bytes}) for h in r.http}
    if r.throughputs:
        out["throughput"] = {f"{t.probe} {t.target}": {
            "bits_per_second": t.bits_per_second, "age_seconds": t.age_seconds}
            for t in r.throughputs}
    if r.oom_events or r.load_failures:
        out["events"] = {"oom_events": r.oom_events, "load_failure_events": r.load_failures}
    return out


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
