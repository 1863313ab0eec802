"""Every metric the exporter can emit, declared once: name, type, labels, help, source.

The collector (ai_bottleneck.exporter) reads this table to turn samples into metric
families; docs/metrics.md is generated from it (``python -m
ai_bottleneck.exporter_metrics``), and the tests hold both to it.

Probe values are mapped by ``ROUTES``: (probe, value name) -> metric, how
its labels come from the sample's labels, and a unit scale. Sample values
carry bits per second (the record format's vocabulary); the metrics carry
bytes per second, Prometheus' base unit, so ``promtool check metrics`` stays
clean. Values no route names (third-party probes, newer probe versions) are
kept in recordings but not exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PREFIX = "ai_bottleneck_"
Kind = Literal["gauge", "counter"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family. Counter names end in ``_total``."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    source: str

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"{self.name}: metric names start with {PREFIX}")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")


@dataclass(frozen=True, slots=True)
class Route:
    """How one sample value becomes one point of ``metric``.

    Each metric label takes, in order of preference, a constant from
    ``constants``, the sample label named in ``rename``, or the sample label
    of the same name ("" when the sample lacks it).
    """

    metric: Metric
    scale: float = 1.0
    rename: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, str] = field(default_factory=dict)

    def label_plan(self) -> tuple[tuple[bool, str], ...]:
        """Per metric label: (is_constant, constant value or sample label name)."""
        plan = []
        for label in self.metric.labels:
            if label in self.constants:
                plan.append((True, self.constants[label]))
            else:
                plan.append((False, self.rename.get(label, label)))
        return tuple(plan)


METRICS: list[Metric] = []


def _metric(name: str, kind: Kind, labels: tuple[str, ...], help: str, source: str) -> Metric:
    metric = Metric(PREFIX + name, kind, labels, help, source)
    METRICS.append(metric)
    return metric


def gauge(name: str, labels: tuple[str, ...], help: str, source: str = "agent") -> Metric:
    return _metric(name, "gauge", labels, help, source)


def counter(name: str, labels: tuple[str, ...], help: str, source: str = "agent") -> Metric:
    return _metric(name, "counter", labels, help, source)


# -- the agent and its windows ------------------------------------------------------

BUILD_INFO = gauge("build_info", ("version", "python_version"),
                   "Always 1; the labels say which agent build is running.")
START_TIME = gauge("start_time_seconds", (), "When the agent started, unix seconds.")
SAMPLING_INTERVAL = gauge("sampling_interval_seconds", (),
                          "Configured interval of the passive probes.")
WINDOW_LENGTH = gauge("window_length_seconds", (), "Configured length of one labelled window.")
WINDOW_LABEL = gauge("window_label", ("label",),
                     "1 for the label of the latest window, 0 for every other label "
                     "(all seven are always present once a window exists).")
WINDOW_CONFIDENCE = gauge("window_confidence", (),
                          "Confidence of the latest window's label, 0 to 1.")
WINDOW_START = gauge("window_start_timestamp_seconds", (), "Start of the latest window.")
WINDOW_END = gauge("window_end_timestamp_seconds", (), "End of the latest window.")
WINDOW_EVIDENCE = gauge("window_evidence_items", (),
                        "Evidence lines behind the latest window's label.")
WINDOWS_TOTAL = counter("windows_total", ("label",), "Windows labelled, per label.")
LAST_WINDOW_AGE = gauge("last_window_age_seconds", (),
                        "Seconds since the end of the latest window; absent before the first.")

RECORDING_UP = gauge("recording_up", (),
                     "1 while the recording (agent.record_file) is written, 0 while it is "
                     "paused because writing fails (full disk); absent without a recording.")
RECORD_ERRORS = counter("record_errors_total", (),
                        "Sample batches that could not be written to the recording; their "
                        "samples are not in it.")

# -- probe health ---------------------------------------------------------------------

PROBE_USABLE = gauge("probe_usable", ("probe",),
                     "1 when the probe can run on this host, 0 when it cannot "
                     "(missing GPU, driver, program or targets).")
PROBE_UP = gauge("probe_up", ("probe",),
                 "1 when the probe's last round gave a good sample, 0 when it failed, "
                 "timed out or crashed; absent before its first round.")
PROBE_ERRORS = counter("probe_errors_total", ("probe", "reason"),
                       "Failed probe rounds and samples; reason is error (a failed sample), "
                       "timeout or crash (an exception out of the probe).")
PROBE_SAMPLES = counter("probe_samples_total", ("probe",),
                        "Samples the probe returned, good or failed (skips not included).")
PROBE_SKIPS = counter("probe_skips_total", ("probe", "reason"),
                      "Runs of an active probe skipped; reason is budget, nic_busy, overlap "
                      "or other.")
PROBE_LAST_SUCCESS = gauge("probe_last_success_timestamp_seconds", ("probe",),
                           "When the probe last gave a good sample, unix seconds.")
PROBE_DURATION = gauge("probe_duration_seconds", ("probe",),
                       "How long the probe's last round took.")

# -- GPU ------------------------------------------------------------------------------

_GPU = ("gpu", "uuid", "name")
GPU_UP = gauge("gpu_up", ("gpu", "uuid"),
               "1 when the GPU answered the last sample, 0 when reading it failed.", "gpu")
GPU_INFO = gauge("gpu_info", ("gpu", "uuid", "name", "pci_bus_id"),
                 "Always 1; the labels describe the GPU.", "gpu")
GPU_CLOCKS_EVENT = gauge("gpu_clocks_event_active", (*_GPU, "reason"),
                         "1 while the named clocks event (throttle reason) is active.",
                         "gpu: clocks_event_<reason>_flag")
GPU_PROCESS_MEMORY = gauge("gpu_process_memory_used_bytes",
                           ("gpu", "uuid", "pid", "process_name"),
                           "GPU memory used by one process.",
                           "gpu: process_memory_used_bytes (per-process samples)")

_GPU_VALUES = (
    ("utilization_ratio", "gpu_utilization_ratio",
     "Share of the sample period in which a kernel ran (NVML's coarse utilization)."),
    ("memory_used_bytes", "gpu_memory_used_bytes", "GPU memory in use."),
    ("memory_total_bytes", "gpu_memory_total_bytes", "GPU memory installed."),
    ("memory_reserved_bytes", "gpu_memory_reserved_bytes", "GPU memory reserved by the driver."),
    ("power_watts", "gpu_power_watts", "Power draw."),
    ("power_limit_watts", "gpu_power_limit_watts", "Enforced power limit."),
    ("temperature_celsius", "gpu_temperature_celsius", "GPU core temperature."),
    ("sm_clock_hertz", "gpu_sm_clock_hertz", "Current SM clock."),
    ("sm_clock_max_hertz", "gpu_sm_clock_max_hertz", "Maximum SM clock."),
    ("clocks_event_reasons_bitmask", "gpu_clocks_event_reasons_bitmask",
     "NVML clocks event reasons, as the driver's bitmask."),
    ("pcie_rx_bytes_per_second", "gpu_pcie_rx_bytes_per_second", "PCIe receive throughput."),
    ("pcie_tx_bytes_per_second", "gpu_pcie_tx_bytes_per_second", "PCIe transmit throughput."),
    ("sm_active_ratio", "gpu_sm_active_ratio", "Share of time SMs were active (GPM)."),
    ("sm_occupancy_ratio", "gpu_sm_occupancy_ratio", "Achieved SM occupancy (GPM)."),
    ("tensor_active_ratio", "gpu_tensor_active_ratio", "Share of time tensor cores were "
                                                       "active (GPM)."),
    ("dram_active_ratio", "gpu_dram_active_ratio", "Share of time device memory was busy (GPM)."),
    ("gpm_available", "gpu_gpm_available",
     "1 when fine-grained GPM metrics were read, 0 when only coarse utilization was."),
    ("utilization_samples", "gpu_utilization_driver_samples",
     "Driver samples the utilization figure was averaged from."),
    ("process_count", "gpu_processes", "Processes using the GPU."),
    ("process_memory_used_bytes", "gpu_processes_memory_used_bytes",
     "GPU memory used by all its processes together."),
)

# -- host and NICs ----------------------------------------------------------------------

_HOST_VALUES = (
    ("cpu_utilization_ratio", "host_cpu_utilization_ratio", "CPU busy share, all cores."),
    ("cpu_busiest_core_ratio", "host_cpu_busiest_core_ratio", "Busy share of the busiest core."),
    ("cpu_count", "host_cpus", "Logical CPUs."),
    ("memory_used_ratio", "host_memory_used_ratio", "Share of host memory in use."),
    ("load1_per_cpu", "host_load1_per_cpu", "1-minute load average divided by CPUs."),
    ("cpu_pressure_some_ratio", "host_cpu_pressure_some_ratio",
     "PSI: share of time some task waited for CPU."),
    ("cpu_pressure_full_ratio", "host_cpu_pressure_full_ratio",
     "PSI: share of time all non-idle tasks waited for CPU."),
    ("io_pressure_some_ratio", "host_io_pressure_some_ratio",
     "PSI: share of time some task waited for I/O."),
    ("io_pressure_full_ratio", "host_io_pressure_full_ratio",
     "PSI: share of time all non-idle tasks waited for I/O."),
    ("memory_pressure_some_ratio", "host_memory_pressure_some_ratio",
     "PSI: share of time some task waited for memory."),
    ("memory_pressure_full_ratio", "host_memory_pressure_full_ratio",
     "PSI: share of time all non-idle tasks waited for memory."),
)
_HOST_TCP_VALUES = (
    ("tcp_retransmit_ratio", "host_tcp_retransmit_ratio",
     "TCP segments retransmitted / segments sent, host-wide."),
    ("tcp_retransmits_per_second", "host_tcp_retransmits_per_second",
     "TCP segments retransmitted per second, host-wide."),
    ("tcp_out_segments_per_second", "host_tcp_out_segments_per_second",
     "TCP segments sent per second, host-wide."),
)
_NIC_VALUES = (
    ("rx_bits_per_second", "nic_rx_bytes_per_second", "Received throughput.", 1 / 8),
    ("tx_bits_per_second", "nic_tx_bytes_per_second", "Transmitted throughput.", 1 / 8),
    ("link_speed_bits_per_second", "nic_link_speed_bytes_per_second",
     "Link speed as the interface reports it.", 1 / 8),
    ("rx_utilization_ratio", "nic_rx_utilization_ratio",
     "Received throughput / link speed (only when the link speed is known).", 1.0),
    ("tx_utilization_ratio", "nic_tx_utilization_ratio",
     "Transmitted throughput / link speed (only when the link speed is known).", 1.0),
    ("rx_drops_per_second", "nic_rx_drops_per_second", "Received packets dropped.", 1.0),
    ("tx_drops_per_second", "nic_tx_drops_per_second", "Transmit packets dropped.", 1.0),
    ("rx_errors_per_second", "nic_rx_errors_per_second", "Receive errors.", 1.0),
    ("tx_errors_per_second", "nic_tx_errors_per_second", "Transmit errors.", 1.0),
)

# -- HTTP, throughput, OOM ------------------------------------------------------------

HTTP_DURATION = gauge("http_request_duration_seconds", ("target", "phase"),
                      "Time of the last call to the target, per phase: total, dns, connect, "
                      "tls, upload, server, download.", "http: *_seconds")
TARGET_UP = gauge("target_up", ("probe", "target"),
                  "1 when the last call to the target (http, download, iperf3) succeeded.",
                  "http, download, iperf3")
THROUGHPUT = gauge("throughput_bytes_per_second", ("probe", "target", "direction"),
                   "Throughput measured by the last transfer (iperf3 test or download).",
                   "iperf3, download: bits_per_second")
TRANSFER_BYTES = gauge("transfer_bytes", ("probe", "target", "direction"),
                       "Bytes moved by the last transfer.", "iperf3, download: bytes")
TRANSFER_SECONDS = gauge("transfer_duration_seconds", ("probe", "target", "direction"),
                         "Duration of the last transfer.", "iperf3, download: seconds")

_HTTP_PHASES = ("total", "dns", "connect", "tls", "upload", "server", "download")
_HTTP_VALUES = (
    ("status", "http_status_code", "HTTP status of the last call (absent when none came back)."),
    ("request_bytes", "http_request_size_bytes", "Request body size of the last call."),
    ("response_bytes", "http_response_size_bytes", "Response body size of the last call."),
    ("concurrency", "http_concurrent_requests", "Calls the probe made at once."),
)
_IPERF3_VALUES = (
    ("retransmits", "iperf3_retransmits", "TCP retransmits during the last iperf3 test."),
    ("rtt_seconds", "iperf3_rtt_seconds", "Mean TCP round-trip time of the last iperf3 test."),
)
_OOM_VALUES = (
    ("oom_events_total", "oom_events_total", "Out-of-memory events seen since the agent started."),
    ("load_failure_events_total", "load_failure_events_total",
     "Model load / allocation failures seen since the agent started."),
)


def _build_routes() -> dict[str, dict[str, Route]]:
    routes: dict[str, dict[str, Route]] = {p: {} for p in
                                           ("gpu", "host", "nic", "http", "download", "iperf3",
                                            "oom")}
    for value, name, text in _GPU_VALUES:
        routes["gpu"][value] = Route(gauge(name, _GPU, text, f"gpu: {value}"))
    routes["gpu"]["oom_events_total"] = Route(counter(
        "gpu_oom_events_total", _GPU, "Out-of-memory events the GPU probe saw.",
        "gpu: oom_events_total"))
    for value, name, text in _HOST_VALUES:
        routes["host"][value] = Route(gauge(name, (), text, f"host: {value}"))
    for value, name, text, scale in _NIC_VALUES:
        routes["nic"][value] = Route(gauge(name, ("nic",), text, f"nic: {value}"), scale)
    for value, name, text in _HOST_TCP_VALUES:
        routes["nic"][value] = Route(gauge(name, (), text, f"nic (scope=host): {value}"))
    for phase in _HTTP_PHASES:
        routes["http"][f"{phase}_seconds"] = Route(HTTP_DURATION, constants={"phase": phase})
    for value, name, text in _HTTP_VALUES:
        routes["http"][value] = Route(gauge(name, ("target",), text, f"http: {value}"))
    download = {"probe": "download", "direction": "receive"}
    routes["download"]["bits_per_second"] = Route(THROUGHPUT, 1 / 8, {"target": "url"}, download)
    routes["download"]["bytes"] = Route(TRANSFER_BYTES, 1.0, {"target": "url"}, download)
    routes["download"]["seconds"] = Route(TRANSFER_SECONDS, 1.0, {"target": "url"}, download)
    iperf3 = {"probe": "iperf3"}
    routes["iperf3"]["bits_per_second"] = Route(THROUGHPUT, 1 / 8, constants=iperf3)
    routes["iperf3"]["bytes"] = Route(TRANSFER_BYTES, constants=iperf3)
    routes["iperf3"]["seconds"] = Route(TRANSFER_SECONDS, constants=iperf3)
    for value, name, text in _IPERF3_VALUES:
        routes["iperf3"][value] = Route(gauge(name, ("target", "direction"), text,
                                              f"iperf3: {value}"))
    for value, name, text in _OOM_VALUES:
        routes["oom"][value] = Route(counter(name, ("source",), text, f"oom: {value}"))
    return routes


#: (probe, value name) -> Route, for samples of the whole GPU, host, NIC, target.
ROUTES = _build_routes()
#: GPU samples that carry a ``pid`` label describe one process, not the GPU.
GPU_PROCESS_ROUTES = {"process_memory_used_bytes": Route(GPU_PROCESS_MEMORY)}
#: Per probe: the "did this source answer" gauge each of its samples sets.
UP_ROUTES = {
    "gpu": Route(GPU_UP),
    "http": Route(TARGET_UP, constants={"probe": "http"}),
    "download": Route(TARGET_UP, rename={"target": "url"}, constants={"probe": "download"}),
    "iperf3": Route(TARGET_UP, constants={"probe": "iperf3"}),
}
CLOCKS_EVENT_PREFIX, CLOCKS_EVENT_SUFFIX = "clocks_event_", "_flag"


def metric_names() -> list[str]:
    """Every metric family name the collector can emit."""
    return [m.name for m in METRICS]


def markdown_table() -> str:
    """The metric list of docs/metrics.md."""
    lines = ["| Metric | Type | Labels | Source | Meaning |", "|---|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
        lines.append(f"| `{m.name}` | {m.kind} | {labels} | {m.source} | {m.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
