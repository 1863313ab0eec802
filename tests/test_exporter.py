"""The collector over AgentState and the real HTTP endpoint serving it."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ai_bottleneck import exporter_metrics as em
from ai_bottleneck.endpoint import ListenError, MetricsServer
from ai_bottleneck.exporter import Collector, build_registry
from ai_bottleneck.labels import LABEL_NAMES as LABELS
from ai_bottleneck.probes.base import Skip, SkipKind, skipped_sample
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.state import TOP_EVIDENCE_CHARS, AgentState, build_revision
from tests.promtool import run_promtool

REPO = Path(__file__).resolve().parent.parent
GPU0 = {"gpu": "0", "uuid": "GPU-aaaa", "name": "NVIDIA H100", "pci_bus_id": "0000:17:00.0"}


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def registry_for(state: AgentState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(state))
    return registry


def value(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@dataclass
class RecordingStatus:
    """What the state reads of a recording (ai_bottleneck.record_writer.RecordWriter)."""

    up: bool = True
    errors_total: int = 0
    last_error: str | None = None


def full_state(clock: Clock, gpus: int = 2) -> AgentState:
    """A state with a sample for every route in the metric table."""
    state = AgentState(clock=clock, interval_seconds=1, window_seconds=10)
    t = clock()
    for name in ("gpu", "host", "nic", "http", "oom", "engine"):
        state.register_probe(name)
    for name in ("iperf3", "download"):
        state.register_probe(name, interval_seconds=600, active=True)
    state.register_probe("vendor", usable=False, reason="no such device")
    state.set_gpu_pci_devices(gpus)
    state.watch_recording(RecordingStatus())
    gpu_samples = []
    for i in range(gpus):
        labels = {"gpu": str(i), "uuid": f"GPU-{i:04d}", "name": "NVIDIA H100",
                  "pci_bus_id": f"0000:{i:02x}:00.0"}
        values = {v: 0.5 for v, _n, _h in em._GPU_VALUES}
        values |= {"clocks_event_sw_power_cap_flag": 1.0, "clocks_event_hw_slowdown_flag": 0.0,
                   "oom_events_total": 0.0}
        values |= {v: 0.0 for v in em.ROUTES["gpu"] if v not in values}  # health and others
        gpu_samples.append(Sample(t, "gpu", labels, values))
        gpu_samples.append(Sample(t, "gpu", {"gpu": str(i), "uuid": f"GPU-{i:04d}",
                                              "pid": str(100 + i), "process_name": "python3"},
                                  {"process_memory_used_bytes": 2e9}))
        gpu_samples.append(Sample(t, "gpu", {"gpu": str(i), "uuid": f"GPU-{i:04d}",
                                              "pid": "other", "process_name": "other"},
                                  {"process_memory_used_bytes": 1e9, "process_count": 3.0}))
        gpu_samples.append(Sample(t, "gpu", {"gpu": str(i), "uuid": f"GPU-{i:04d}", "mig": "1",
                                              "mig_uuid": f"MIG-{i:04d}", "name": "MIG 1g"},
                                  dict.fromkeys(em.GPU_MIG_ROUTES, 0.25)))
    state.record_samples("gpu", gpu_samples, duration_seconds=0.004)
    host_values = {v: 0.25 for v, _n, _h in em._HOST_VALUES}
    host_values |= {v: 1234.5 for v, _n, _h, _c in em._HOST_COUNTERS}
    state.record_samples("host", [Sample(t, "host", {}, host_values)])
    state.register_probe("service")
    state.record_samples("service", [Sample(t, "service", {"service": "api.service"},
                                            {v: 0.5 for v, _n, _h in em._SERVICE_VALUES})])
    nic_values = {v: 1e6 for v, _n, _h, _s in em._NIC_VALUES}
    nic_values |= {v: 5e9 for v, _n, _h in em._NIC_COUNTERS}
    tcp_values = {v: 0.01 for v, _n, _h in em._HOST_TCP_VALUES}
    tcp_values |= {v: 7e6 for v, _n, _h in em._HOST_TCP_COUNTERS}
    state.record_samples("nic", [Sample(t, "nic", {"nic": "eth0"}, nic_values),
                                 Sample(t, "nic", {"scope": "host"}, tcp_values)])
    http_values = {f"{p}_seconds": 0.01 for p in em._HTTP_PHASES}
    http_values |= {"status": 200.0, "request_bytes": 5e6, "response_bytes": 1e3,
                    "concurrency": 4.0}
    state.record_samples("http", [Sample(t, "http", {"target": "ocr"}, http_values)])
    state.record_samples("iperf3", [Sample(t, "iperf3", {"target": "10.0.0.2", "direction": d},
                                           {"bits_per_second": 9.4e8, "bytes": 1.2e9,
                                            "seconds": 10.0, "retransmits": 3.0,
                                            "rtt_seconds": 0.0004})
                                    for d in ("send", "receive")])
    state.record_samples("download", [Sample(t, "download", {"url": "https://example.test/f"},
                                             {"bits_per_second": 4e8, "bytes": 5e7,
                                              "seconds": 1.0})])
    state.record_samples("download", [Sample(t, "download", {"skip_reason": "NIC busy: 80%"},
                                             {"skipped": 1.0})])
    state.record_samples("oom", [Sample(t, "oom", {"source": "journal"},
                                        {"oom_events_total": 1.0, "oom_events": 0.0,
                                         "load_failure_events_total": 0.0})])
    engine_values = {v: 0.5 for v, _n, _h in (*em._ENGINE_GAUGES, *em._ENGINE_COUNTERS)}
    state.record_samples("engine", [Sample(t, "engine", {"engine": "vllm", "target": "chat"},
                                           engine_values)])
    state.record_failure("host", "timeout", "host probe took 5 s")
    state.record_window("gpu_bound", 0.9, t - 10, t, evidence_items=3,
                        top_evidence="GPU 0 busy 95% of the window",
                        path_uses=[("eth0", "rx", 0.98, 7.6e6, "plateau")])
    return state


# -- the window ----------------------------------------------------------------------------


def test_no_window_yet_says_unknown_and_all_counters_at_zero() -> None:
    registry = registry_for(AgentState(clock=Clock()))
    for label in LABELS:
        assert value(registry, "ai_bottleneck_window_label", label=label) == (
            1.0 if label == "unknown" else 0.0)
        assert value(registry, "ai_bottleneck_windows_total", label=label) == 0
    assert value(registry, "ai_bottleneck_last_window_age_seconds") is None
    assert value(registry, "ai_bottleneck_window_top_evidence_info", evidence="x") is None
    assert value(registry, "ai_bottleneck_build_info", version="0.1.0",
                 revision=build_revision(),
                 python_version=re.sub(r"\s.*", "", __import__("platform").python_version())) == 1


def test_build_revision_is_the_installed_builds_or_the_environments(
        monkeypatch: pytest.MonkeyPatch) -> None:
    installed = build_revision()
    # The wheel build writes the checkout's commit (hatch_build.py); "unknown" only
    # where it was built outside git.
    assert installed == "unknown" or re.fullmatch(r"[0-9a-f]{40}", installed), installed
    monkeypatch.setenv("AI_BOTTLENECK_REVISION", "abc123\nsecond line")
    assert build_revision() == "abc123 second line"
    registry = registry_for(AgentState(clock=Clock()))
    assert [s.labels["revision"] for s in registry.collect()
            if s.name == "ai_bottleneck_build_info" for s in s.samples] == ["abc123 second line"]


def test_top_evidence_is_an_info_series_with_a_bounded_label() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    registry = registry_for(state)
    state.record_window("network_bound", 0.8, clock() - 10, clock(),
                        top_evidence="NIC eth0 at 97% of its link\n" + "x" * 500)
    infos = [(s.labels["evidence"], s.value) for f in registry.collect()
             if f.name == "ai_bottleneck_window_top_evidence_info" for s in f.samples]
    assert len(infos) == 1 and infos[0][1] == 1.0
    text = infos[0][0]
    assert text.startswith("NIC eth0 at 97% of its link x") and "\n" not in text
    assert len(text) == TOP_EVIDENCE_CHARS


def test_every_skip_kind_of_an_active_probe_starts_at_zero() -> None:
    state = AgentState(clock=Clock())
    state.register_probe("iperf3", active=True)
    state.register_probe("host")
    registry = registry_for(state)
    kinds = [k.value for k in SkipKind]
    assert {"budget", "nic_busy", "other"} <= set(kinds)
    for kind in kinds:
        assert value(registry, "ai_bottleneck_probe_skips_total", probe="iperf3",
                     reason=kind) == 0
        assert value(registry, "ai_bottleneck_probe_skips_total", probe="host",
                     reason=kind) is None  # a passive probe is never skipped


def test_window_label_is_one_hot_over_all_seven_labels() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    registry = registry_for(state)
    for label in ("network_bound", "gpu_bound", "network_bound"):
        state.record_window(label, 0.75, clock() - 10, clock(), evidence_items=2)
        clock.t += 10
    values = {lab: value(registry, "ai_bottleneck_window_label", label=lab) for lab in LABELS}
    assert values == {lab: (1.0 if lab == "network_bound" else 0.0) for lab in LABELS}
    assert value(registry, "ai_bottleneck_windows_total", label="network_bound") == 2
    assert value(registry, "ai_bottleneck_windows_total", label="gpu_bound") == 1
    assert value(registry, "ai_bottleneck_windows_total", label="idle") == 0
    assert value(registry, "ai_bottleneck_window_confidence") == 0.75
    assert value(registry, "ai_bottleneck_window_evidence_items") == 2
    assert value(registry, "ai_bottleneck_last_window_age_seconds") == 10


def test_window_accepts_a_str_enum_and_rejects_unknown_labels() -> None:
    import enum

    class Label(enum.StrEnum):
        IDLE = "idle"

    state = AgentState(clock=Clock())
    state.record_window(Label.IDLE, 1.0, 0, 10)
    assert value(registry_for(state), "ai_bottleneck_window_label", label="idle") == 1
    with pytest.raises(ValueError, match="unknown window label"):
        state.record_window("slow", 0.5, 0, 10)
    with pytest.raises(ValueError, match="confidence"):
        state.record_window("idle", 1.5, 0, 10)
    with pytest.raises(ValueError, match="start"):
        state.record_window("idle", 0.5, 10, 0)


# -- series from samples -----------------------------------------------------------------


def test_values_map_to_metrics_with_units_and_labels() -> None:
    registry = registry_for(full_state(Clock()))
    gpu = {"gpu": "1", "uuid": "GPU-0001", "name": "NVIDIA H100"}
    assert value(registry, "ai_bottleneck_gpu_utilization_ratio", **gpu) == 0.5
    assert value(registry, "ai_bottleneck_gpu_up", gpu="1", uuid="GPU-0001") == 1
    assert value(registry, "ai_bottleneck_gpu_info", **gpu, pci_bus_id="0000:01:00.0") == 1
    assert value(registry, "ai_bottleneck_gpu_clocks_event_active", **gpu,
                 reason="sw_power_cap") == 1
    assert value(registry, "ai_bottleneck_gpu_clocks_event_active", **gpu,
                 reason="hw_slowdown") == 0
    assert value(registry, "ai_bottleneck_gpu_process_memory_used_bytes", gpu="1",
                 uuid="GPU-0001", pid="101", process_name="python3", mig="",
                 **dict.fromkeys(em.GPU_PROCESS_PLACEMENT, "")) == 2e9
    # Bits per second in samples, bytes per second (the base unit) in metrics.
    assert value(registry, "ai_bottleneck_nic_rx_bytes_per_second", nic="eth0") == 1e6 / 8
    assert value(registry, "ai_bottleneck_host_tcp_retransmit_ratio") == 0.01
    assert value(registry, "ai_bottleneck_http_request_duration_seconds", target="ocr",
                 phase="upload") == 0.01
    assert value(registry, "ai_bottleneck_http_status_code", target="ocr") == 200
    assert value(registry, "ai_bottleneck_throughput_bytes_per_second", probe="iperf3",
                 target="10.0.0.2", direction="receive") == 9.4e8 / 8
    assert value(registry, "ai_bottleneck_throughput_bytes_per_second", probe="download",
                 target="https://example.test/f", direction="receive") == 4e8 / 8
    assert value(registry, "ai_bottleneck_target_up", probe="download",
                 target="https://example.test/f") == 1
    assert value(registry, "ai_bottleneck_oom_events_total", source="journal") == 1
    assert value(registry, "ai_bottleneck_engine_requests_waiting", engine="vllm",
                 target="chat") == 0.5
    assert value(registry, "ai_bottleneck_engine_preemptions_total", engine="vllm",
                 target="chat") == 0.5
    assert value(registry, "ai_bottleneck_target_up", probe="engine", target="chat") == 1


def test_every_metric_in_the_table_is_emitted_and_nothing_else() -> None:
    registry = registry_for(full_state(Clock()))
    emitted = {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}
    assert emitted == set(em.metric_names())


def test_series_disappear_when_their_source_stops_reporting() -> None:
    clock = Clock()
    state = AgentState(clock=clock, interval_seconds=1, stale_after_intervals=3)
    registry = registry_for(state)
    labels = {"gpu": "0", "uuid": "GPU-aaaa", "name": "NVIDIA H100"}
    state.record_samples("gpu", [Sample(clock(), "gpu", dict(labels, gpu="0"),
                                        {"utilization_ratio": 0.9}),
                                 Sample(clock(), "gpu", {**labels, "gpu": "1", "uuid": "GPU-b"},
                                        {"utilization_ratio": 0.1})])
    clock.t += 2
    # GPU 1 vanished: only GPU 0 reports from now on.
    state.record_samples("gpu", [Sample(clock(), "gpu", labels, {"utilization_ratio": 0.8})])
    clock.t += 2  # GPU 1 last seen 4 s ago, more than 3 intervals of 1 s
    assert value(registry, "ai_bottleneck_gpu_utilization_ratio", **labels) == 0.8
    assert value(registry, "ai_bottleneck_gpu_utilization_ratio", gpu="1", uuid="GPU-b",
                 name="NVIDIA H100") is None
    assert value(registry, "ai_bottleneck_gpu_up", gpu="1", uuid="GPU-b") is None
    # Stale series also leave when the writer has stopped writing (read-side check).
    clock.t += 10
    assert value(registry, "ai_bottleneck_gpu_utilization_ratio", **labels) is None
    # ... and the writer drops them from the snapshot on its next write.
    state.record_samples("host", [Sample(clock(), "host", {}, {"cpu_utilization_ratio": 0.1})])
    assert [s.probe for s in state.snapshot().series.values()] == ["host"]


def test_slow_probes_keep_their_series_for_their_own_interval() -> None:
    clock = Clock()
    state = AgentState(clock=clock, interval_seconds=1, stale_after_intervals=3)
    state.register_probe("iperf3", interval_seconds=600, active=True)
    registry = registry_for(state)
    state.record_samples("iperf3", [Sample(clock(), "iperf3", {"target": "h", "direction": "send"},
                                           {"bits_per_second": 8e9})])
    clock.t += 1000  # fewer than 3 x 600 s
    assert value(registry, "ai_bottleneck_throughput_bytes_per_second", probe="iperf3",
                 target="h", direction="send") == 1e9
    clock.t += 1000
    assert value(registry, "ai_bottleneck_throughput_bytes_per_second", probe="iperf3",
                 target="h", direction="send") is None


def test_failed_probe_is_up_zero_with_errors_by_reason() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    state.register_probe("http")
    state.register_probe("host")
    registry = registry_for(state)
    assert value(registry, "ai_bottleneck_probe_up", probe="http") is None  # not run yet
    state.record_samples("http", [Sample(clock(), "http", {"target": "api"},
                                         {"total_seconds": 0.2, "status": 200})])
    assert value(registry, "ai_bottleneck_probe_up", probe="http") == 1
    assert value(registry, "ai_bottleneck_target_up", probe="http", target="api") == 1
    state.record_samples("http", [Sample(clock(), "http", {"target": "api"}, {"status": 503},
                                         error="HTTP 503 Service Unavailable")])
    assert value(registry, "ai_bottleneck_probe_up", probe="http") == 0
    assert value(registry, "ai_bottleneck_target_up", probe="http", target="api") == 0
    assert value(registry, "ai_bottleneck_http_status_code", target="api") == 503
    # The failed call's durations are not the old good call's: they are gone.
    assert value(registry, "ai_bottleneck_http_request_duration_seconds", target="api",
                 phase="total") is None
    assert value(registry, "ai_bottleneck_probe_errors_total", probe="http", reason="error") == 1
    state.record_failure("host", "timeout", "no answer in 5 s", duration_seconds=5.0)
    state.record_failure("host", "crash", "ZeroDivisionError")
    assert value(registry, "ai_bottleneck_probe_up", probe="host") == 0
    assert value(registry, "ai_bottleneck_probe_errors_total", probe="host", reason="timeout") == 1
    assert value(registry, "ai_bottleneck_probe_errors_total", probe="host", reason="crash") == 1
    assert value(registry, "ai_bottleneck_probe_errors_total", probe="host", reason="error") == 0
    assert value(registry, "ai_bottleneck_probe_duration_seconds", probe="host") == 5.0
    with pytest.raises(ValueError):
        state.record_failure("host", "bored")  # type: ignore[arg-type]


def test_a_lost_gpu_is_that_gpus_state() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    registry = registry_for(state)
    other = {**GPU0, "gpu": "1", "uuid": "GPU-bbbb"}
    state.record_samples("gpu", [Sample(clock(), "gpu", GPU0, {"memory_used_bytes": 1e9}),
                                 Sample(clock(), "gpu", other, {"memory_used_bytes": 2e9})])
    clock.t += 1
    state.record_samples("gpu", [
        Sample(clock(), "gpu", {"gpu": "0", "uuid": "GPU-aaaa"}, error="GPU is lost"),
        Sample(clock(), "gpu", other, {"memory_used_bytes": 3e9})])
    assert value(registry, "ai_bottleneck_gpu_up", gpu="0", uuid="GPU-aaaa") == 0
    assert value(registry, "ai_bottleneck_gpu_up", gpu="1", uuid="GPU-bbbb") == 1
    # GPU 0's last good reading no longer describes anything: it goes at once.
    assert value(registry, "ai_bottleneck_gpu_memory_used_bytes", gpu="0", uuid="GPU-aaaa",
                 name="NVIDIA H100") is None
    assert value(registry, "ai_bottleneck_gpu_info", **GPU0) is None
    assert value(registry, "ai_bottleneck_probe_up", probe="gpu") == 1  # the probe answered
    assert value(registry, "ai_bottleneck_probe_errors_total", probe="gpu", reason="error") == 1


def test_skips_are_counted_by_kind_and_leave_series_and_health_alone() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    state.register_probe("iperf3", interval_seconds=60, active=True)
    registry = registry_for(state)
    good = Sample(clock(), "iperf3", {"target": "h", "direction": "send"},
                  {"bits_per_second": 8e8})
    state.record_samples("iperf3", [good])
    # The kind comes from the skip's label, never from its text.
    for kind, reason in ((SkipKind.BUDGET, "traffic budget: 1.9 GB of 2.0 GB per hour used"),
                         (SkipKind.NIC_BUSY, "NIC busy: 85% of link speed in use"),
                         (SkipKind.NIC_BUSY, "NIC busy: 91% of link speed in use"),
                         (SkipKind.OTHER, "a plugin's own reason")):
        state.record_samples("iperf3", [skipped_sample("iperf3", Skip(kind, reason),
                                                       t=clock())])
    # A plugin's skip with a bare reason, even one worded like the budget's, is "other".
    state.record_samples("iperf3", [Sample(clock(), "iperf3",
                                           {"skip_reason": "traffic budget: spent"},
                                           {"skipped": 1})])
    skips = {r: value(registry, "ai_bottleneck_probe_skips_total", probe="iperf3", reason=r)
             for r in ("budget", "nic_busy", "other")}
    assert skips == {"budget": 1, "nic_busy": 2, "other": 2}
    assert value(registry, "ai_bottleneck_probe_up", probe="iperf3") == 1
    assert value(registry, "ai_bottleneck_probe_samples_total", probe="iperf3") == 1
    assert value(registry, "ai_bottleneck_throughput_bytes_per_second", probe="iperf3",
                 target="h", direction="send") == 1e8


def test_unusable_probe_shows_only_as_unusable() -> None:
    state = AgentState(clock=Clock())
    state.register_probe("gpu", usable=False, reason="NVML: driver not loaded")
    registry = registry_for(state)
    assert value(registry, "ai_bottleneck_probe_usable", probe="gpu") == 0
    assert value(registry, "ai_bottleneck_probe_up", probe="gpu") is None
    assert value(registry, "ai_bottleneck_probe_errors_total", probe="gpu", reason="error") is None


def test_unknown_probes_and_values_are_not_exported() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    state.record_samples("vendor", [Sample(clock(), "vendor", {"x": "1"}, {"widgets": 3.0})])
    state.record_samples("host", [Sample(clock(), "host", {}, {"future_value_ratio": 0.5,
                                                              "cpu_utilization_ratio": 0.5})])
    registry = registry_for(state)
    names = {s.name for f in registry.collect() for s in f.samples}
    assert "ai_bottleneck_host_cpu_utilization_ratio" in names
    assert not any("widgets" in n or "future_value" in n for n in names)
    assert value(registry, "ai_bottleneck_probe_up", probe="vendor") == 1


def test_snapshots_are_immutable_and_writes_never_change_an_old_one() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    before = state.snapshot()
    state.record_samples("host", [Sample(clock(), "host", {}, {"cpu_utilization_ratio": 0.5})])
    after = state.snapshot()
    assert before is not after and not before.series and len(after.series) == 1
    with pytest.raises(TypeError):
        after.series[("x", ())] = None  # type: ignore[index]


def test_scrapes_while_the_writer_writes() -> None:
    clock = Clock()
    state = full_state(clock, gpus=8)
    registry = registry_for(state)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(2000):
                if stop.is_set():
                    return
                state.record_samples("host", [Sample(clock(), "host", {},
                                                     {"cpu_utilization_ratio": i / 2000})])
                state.record_window(LABELS[i % len(LABELS)], 0.5, 0, 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 5
        for _ in range(200):
            if time.monotonic() > deadline:
                break
            families = {f.name: f for f in registry.collect()}
            hot = [s.value for s in families["ai_bottleneck_window_label"].samples]
            assert sorted(hot) == [0.0] * 6 + [1.0]
    finally:
        stop.set()
        writer.join(10)
    assert not errors


def _samples(families: object) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families for s in f.samples}  # type: ignore[attr-defined]


def test_direct_rendering_equals_prometheus_clients_encoders() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics import exposition as om_exposition
    from prometheus_client.openmetrics import parser as om_parser

    state = full_state(Clock(), gpus=3)
    state.record_samples("http", [Sample(Clock()(), "http", {"target": 'a "quoted"\\ \nname'},
                                         {"total_seconds": float("inf")})])
    collector = Collector(state)
    registry = registry_for(state)
    fast_text = collector.render()
    assert _samples(text_string_to_metric_families(fast_text)) == _samples(
        text_string_to_metric_families(generate_latest(registry).decode()))
    fast_om = collector.render(openmetrics=True) + "# EOF\n"
    reference_om = om_exposition.generate_latest(registry).decode()
    assert _samples(om_parser.text_string_to_metric_families(fast_om)) == _samples(
        om_parser.text_string_to_metric_families(reference_om))
    # Same families, same HELP and TYPE lines, same order.
    assert [line for line in fast_om.splitlines() if line.startswith("#")] == [
        line for line in reference_om.splitlines() if line.startswith("#")]


def test_prepared_blocks_render_what_a_cold_scrape_renders_and_never_go_stale() -> None:
    clock = Clock()
    state = full_state(clock, gpus=3)
    prepared, cold = Collector(state), Collector(state)
    prepared.prepare()
    for openmetrics in (False, True):
        assert prepared.render(openmetrics) == cold.render(openmetrics)
    # A sample recorded after prepare(): the scrape shows it, not the prepared value.
    state.record_samples("host", [Sample(clock(), "host", {}, {"cpu_utilization_ratio": 0.75})])
    assert "ai_bottleneck_host_cpu_utilization_ratio 0.75\n" in prepared.render()
    assert prepared.render() == cold.render()
    prepared.prepare()
    clock.t += 5  # every 1 s series is stale (3 intervals); the iperf3 one lives on
    after = prepared.render()
    assert after == cold.render()
    assert "ai_bottleneck_gpu_utilization_ratio" not in after
    assert "ai_bottleneck_throughput_bytes_per_second" in after
    # The agent's own figures change with time even when no series does.
    assert re.search(r"ai_bottleneck_last_window_age_seconds 5\.0\n", after)


def test_series_metrics_and_the_agents_own_metrics_never_share_a_family() -> None:
    # render() joins the series' blocks and the agent's own lines per family without
    # merging them, which holds because no metric is both.
    from ai_bottleneck.exporter import _agent_points, _probe_points

    state = full_state(Clock())
    snap = state.snapshot()
    points: dict[str, dict[tuple[str, ...], tuple[float, float]]] = {}
    _agent_points(points, snap, Clock()())
    _probe_points(points, snap)
    own = set(points)
    routed = {r.metric.name for table in em.ROUTES.values() for r in table.values()}
    routed |= {r.metric.name for r in em.GPU_PROCESS_ROUTES.values()}
    routed |= {r.metric.name for r in em.GPU_MIG_ROUTES.values()}
    routed |= {r.metric.name for r in em.UP_ROUTES.values()}
    routed |= {em.GPU_INFO.name, em.GPU_CLOCKS_EVENT.name}
    assert own and routed and not own & routed
    assert own | routed == set(em.metric_names())


def test_docs_list_every_metric() -> None:
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    begin, end = "<!-- BEGIN METRICS TABLE -->\n", "<!-- END METRICS TABLE -->"
    assert begin in text and end in text
    table = text.split(begin, 1)[1].split(end, 1)[0]
    assert table == em.markdown_table(), "regenerate: python -m ai_bottleneck.exporter_metrics"
    for name in em.metric_names():
        assert f"`{name}`" in table


def test_metric_table_follows_naming_rules() -> None:
    assert len(set(em.metric_names())) == len(em.METRICS)
    for metric in em.METRICS:
        assert re.fullmatch(r"ai_bottleneck_[a-z0-9_]+", metric.name)
        assert "bits" not in metric.name  # bytes are the base unit
    with pytest.raises(ValueError):
        em.Metric("ai_bottleneck_x", "counter", (), "h", "s")


# -- the HTTP endpoint ---------------------------------------------------------------------


@pytest.fixture
def server() -> object:
    state = full_state(Clock(time.time()), gpus=8)
    with MetricsServer(state, "127.0.0.1:0") as srv:
        yield srv


def get(conn: http.client.HTTPConnection, path: str,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_real_scrape_passes_promtool_check_metrics(server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        status, headers, body = get(conn, "/metrics")
    finally:
        conn.close()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    result = run_promtool(["check", "metrics"], stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "ai_bottleneck_gpu_utilization" in {n.removesuffix("_ratio") for n in families}
    assert "process_cpu_seconds" in families  # the agent's own process metrics


def test_keep_alive_serves_many_scrapes_on_one_connection(server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.connect()
        local = conn.sock.getsockname()
        for _ in range(20):
            status, _headers, body = get(conn, "/metrics")
            assert status == 200 and b"ai_bottleneck_window_label" in body
        assert conn.sock.getsockname() == local  # the same TCP connection throughout
    finally:
        conn.close()


def test_landing_page_health_head_and_unknown_paths(server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        status, headers, body = get(conn, "/")
        assert status == 200 and b'href="metrics"' in body
        assert headers["Content-Type"].startswith("text/html")
        assert get(conn, "/healthz")[0::2] == (200, b"ok\n")
        assert get(conn, "/nope")[0] == 404
        conn.request("HEAD", "/metrics")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
        assert int(response.getheader("Content-Length") or 0) > 1000
        status, headers, body = get(conn, "/metrics",
                                    {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
    finally:
        conn.close()


def test_stop_ends_idle_keep_alive_connections(server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        assert get(conn, "/healthz")[0] == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5  # well under the 120 s idle timeout
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            get(conn, "/healthz")
    finally:
        conn.close()


def test_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(AgentState(), f"127.0.0.1:{port}")
        with pytest.raises(ListenError, match=rf"cannot listen on 127.0.0.1:{port}: "):
            server.start()


def test_every_interface_listens_on_loopback_too() -> None:
    with MetricsServer(AgentState(), ":0") as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            assert get(conn, "/healthz")[0] == 200
        finally:
            conn.close()


def test_build_registry_is_not_the_global_one() -> None:
    from prometheus_client import REGISTRY

    state = AgentState()
    registry = build_registry(state)
    assert registry is not REGISTRY
    assert registry.get_sample_value("ai_bottleneck_sampling_interval_seconds") == 1.0
    assert REGISTRY.get_sample_value("ai_bottleneck_sampling_interval_seconds") is None


def test_label_since_is_the_start_of_the_labels_current_run() -> None:
    clock = Clock()
    state = AgentState(clock=clock)
    registry = registry_for(state)
    assert value(registry, "ai_bottleneck_window_label_since_timestamp_seconds") == clock()
    for i, label in enumerate(("idle", "network_bound", "network_bound", "network_bound")):
        state.record_window(label, 0.8, 100.0 + 10 * i, 110.0 + 10 * i)
    assert value(registry, "ai_bottleneck_window_label_since_timestamp_seconds") == 110.0
    state.record_window("gpu_bound", 0.8, 140.0, 150.0)
    assert value(registry, "ai_bottleneck_window_label_since_timestamp_seconds") == 140.0
