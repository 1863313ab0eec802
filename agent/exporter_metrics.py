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

from ai_bottleneck.exporter_tables import ENGINE_COUNTERS as _ENGINE_COUNTERS
from ai_bottleneck.exporter_tables import ENGINE_GAUGES as _ENGINE_GAUGES
from ai_bottleneck.exporter_tables import GPU_HEALTH_VALUES as _GPU_HEALTH_VALUES
from ai_bottleneck.exporter_tables import GPU_MIG_VALUES as _GPU_MIG_VALUES
from ai_bottleneck.exporter_tables import GPU_VALUES as _GPU_VALUES
from ai_bottleneck.exporter_tables import HOST_COUNTERS as _HOST_COUNTERS
from ai_bottleneck.exporter_tables import HOST_TCP_COUNTERS as _HOST_TCP_COUNTERS
from ai_bottleneck.exporter_tables import HOST_TCP_VALUES as _HOST_TCP_VALUES
from ai_bottleneck.exporter_tables import HTTP_VALUES as _HTTP_VALUES
from ai_bottleneck.exporter_tables import NIC_COUNTERS as _NIC_COUNTERS
from ai_bottleneck.exporter_tables import NIC_VALUES as _NIC_VALUES
from ai_bottleneck.exporter_tables import OOM_VALUES as _OOM_VALUES
from ai_bottleneck.exporter_tables import SERVICE_VALUES as _SERVICE_VALUES
from ai_bottleneck.probes.gpu_health import FLAG_PREFIX, FLAG_SUFFIX, HEALTH_STATES

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

BUILD_INFO = gauge("build_info", ("version", "revision", "python_version"),
                   "Always 1; the labels say which agent build is running.")
START_TIME = gauge("start_time_seconds", (), "When the agent started, unix seconds.")
SAMPLING_INTERVAL = gauge("sampling_interval_seconds", (),
                          "Configured interval of the passive probes.")
WINDOW_LENGTH = gauge("window_length_seconds", (), "Configured length of one labelled window.")
WINDOW_LABEL = gauge("window_label", ("label",),
                     "1 for the label of the latest window, 0 for every other label; "
                     "all seven are always present, unknown at 1 before the first window.")
WINDOW_CONFIDENCE = gauge("window_confidence", (),
                          "Confidence of the latest window's label, 0 to 1.")
WINDOW_START = gauge("window_start_timestamp_seconds", (), "Start of the latest window.")
WINDOW_END = gauge("window_end_timestamp_seconds", (), "End of the latest window.")
WINDOW_EVIDENCE = gauge("window_evidence_items", (),
                        "Evidence lines behind the latest window's label.")
WINDOW_LABEL_SINCE = gauge("window_label_since_timestamp_seconds", (),
                           "Since when the latest window's label has held: the start of the "
                           "first window of its current run; the agent's start before the "
                           "first window.")
WINDOW_TOP_EVIDENCE = gauge("window_top_evidence_info", ("evidence",),
                            "Always 1; the label is the first evidence line of the latest "
                            "window (at most 160 characters); absent before the first.")
WINDOWS_TOTAL = counter("windows_total", ("label",), "Windows labelled, per label.")
LAST_WINDOW_AGE = gauge("last_window_age_seconds", (),
                        "Seconds since the end of the latest window; absent before the first.")
NIC_PATH_UTILIZATION = gauge(
    "nic_path_utilization_ratio", ("nic", "direction"),
    "Share of its path's capacity a NIC direction used over the latest window, the figure "
    "the evidence and the reports give: against a plateau or an iperf3/download result "
    "where the classifier found the path full, else the tightest known rate; capped at 1.")
NIC_PATH_CAPACITY = gauge(
    "nic_path_capacity_bytes_per_second", ("nic", "direction", "basis"),
    "The capacity nic_path_utilization_ratio is against; basis is link_speed, declared "
    "([links]), shaped (tc), plateau, iperf3 or download.")

GPU_PCI_DEVICES = gauge("gpu_pci_devices", (),
                        "NVIDIA GPUs on the PCI bus (sysfs), whether or not NVML can read "
                        "them; absent where the bus cannot be listed.")
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
                      "Runs of an active probe skipped; reason is budget, nic_busy "
                      "or other.")
PROBE_ERROR_INFO = gauge("probe_error_info", ("probe", "error"),
                         "The probe's latest error text (one line, at most 160 characters, "
                         "secrets redacted); 1 while its last round failed, 0 once it has "
                         "recovered; one series per probe, replaced when the text changes.")
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
#: Where a GPU process runs ("" where unknown or not in one): container, Kubernetes
#: pod, systemd service. Properties of the PID, so they add no series of their own.
GPU_PROCESS_PLACEMENT = ("container_id", "pod_uid", "namespace", "pod", "container",
                         "systemd_unit")
GPU_PROCESS_MEMORY = gauge("gpu_process_memory_used_bytes",
                           ("gpu", "uuid", "mig", "pid", "process_name", *GPU_PROCESS_PLACEMENT),
                           "GPU memory used by one process (pid \"other\": the processes "
                           "beyond the per-GPU series limit, together).",
                           "gpu: process_memory_used_bytes (per-process samples)")
GPU_PROCESSES_FOLDED = gauge("gpu_processes_folded", ("gpu", "uuid"),
                             "Processes beyond the per-GPU series limit (max_processes), "
                             "counted in the pid=\"other\" series.",
                             "gpu: process_count (the pid=other sample)")


_GPU_HEALTH = ("gpu", "uuid")  # also on a failed sample, so its state replaces the last good one
GPU_HEALTH = gauge("gpu_health", (*_GPU_HEALTH, "state"),
                   "1 for the GPU's health state, 0 for the others: ok, degraded (row remap or "
                   "page retirement pending, remap failure), reset_required (XID needing a "
                   "reset, uncorrectable ECC since the last reset), lost (fell off the bus).",
                   "gpu: health_<state>_flag")
GPU_ECC_ERRORS = counter("gpu_ecc_errors_total", (*_GPU, "error_type", "counter"),
                         "ECC errors; error_type corrected or uncorrected, counter volatile "
                         "(since the last driver load or reset) or aggregate (lifetime).",
                         "gpu: ecc_<error_type>_<counter>_errors_total")
GPU_REMAPPED_ROWS = gauge("gpu_remapped_rows", (*_GPU, "cause"),
                          "Memory rows remapped (as recorded in the InfoROM), by the cause: "
                          "correctable or uncorrectable errors.",
                          "gpu: remapped_rows_<cause>")
GPU_RETIRED_PAGES = gauge("gpu_retired_pages", (*_GPU, "cause"),
                          "Memory pages retired (GPUs before Ampere), by the cause: "
                          "single_bit (repeated) or double_bit ECC errors.",
                          "gpu: retired_pages_<cause>")
_GPU_MIG = ("gpu", "uuid", "mig", "mig_uuid", "name")  # a MIG instance's series

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
_WINDOW_MEAN_NOTE = " Mean over the latest window."


def _windowed(value: str, text: str) -> str:
    # The passive probes' rates and ratios are window means (ai_bottleneck.window_means).
    return text + _WINDOW_MEAN_NOTE if value.endswith(("_ratio", "_per_second")) else text


# -- HTTP, throughput, OOM ------------------------------------------------------------

HTTP_DURATION = gauge("http_request_duration_seconds", ("target", "phase"),
                      "Time of the last call to the target, per phase: total, dns, connect, "
                      "tls, upload, server, download.", "http: *_seconds")
TARGET_UP = gauge("target_up", ("probe", "target"),
                  "1 when the last call to the target (http, download, iperf3, engine) "
                  "succeeded.", "http, download, iperf3, engine")
THROUGHPUT = gauge("throughput_bytes_per_second", ("probe", "target", "direction"),
                   "Throughput measured by the last transfer (iperf3 test or download).",
                   "iperf3, download: bits_per_second")
TRANSFER_BYTES = gauge("transfer_bytes", ("probe", "target", "direction"),
                       "Bytes moved by the last transfer.", "iperf3, download: bytes")
TRANSFER_SECONDS = gauge("transfer_duration_seconds", ("probe", "target", "direction"),
                         "Duration of the last transfer.", "iperf3, download: seconds")

_HTTP_PHASES = ("total", "dns", "connect", "tls", "upload", "server", "download")
_IPERF3_VALUES = (
    ("retransmits", "iperf3_retransmits", "TCP retransmits during the last iperf3 test."),
    ("rtt_seconds", "iperf3_rtt_seconds", "Mean TCP round-trip time of the last iperf3 test."),
)
_ENGINE = ("engine", "target")  # model servers (probe engine): exporter_tables.ENGINE_*


def _build_routes() -> dict[str, dict[str, Route]]:
    routes: dict[str, dict[str, Route]] = {p: {} for p in
                                           ("gpu", "host", "nic", "http", "download", "iperf3",
                                            "oom", "engine", "service")}
    for value, name, text in _GPU_VALUES:
        routes["gpu"][value] = Route(gauge(name, _GPU, _windowed(value, text), f"gpu: {value}"))
    routes["gpu"]["oom_events_total"] = Route(counter(
        "gpu_oom_events_total", _GPU, "Out-of-memory events the GPU probe saw.",
        "gpu: oom_events_total"))
    for value, name, kind, text in _GPU_HEALTH_VALUES:
        make = counter if kind == "counter" else gauge
        routes["gpu"][value] = Route(make(name, _GPU, text, f"gpu: {value}"))
    for error_type in ("corrected", "uncorrected"):
        for kind in ("volatile", "aggregate"):
            routes["gpu"][f"ecc_{error_type}_{kind}_errors_total"] = Route(
                GPU_ECC_ERRORS, constants={"error_type": error_type, "counter": kind})
    for cause in ("correctable", "uncorrectable"):
        routes["gpu"][f"remapped_rows_{cause}"] = Route(GPU_REMAPPED_ROWS,
                                                        constants={"cause": cause})
    for cause in ("single_bit", "double_bit"):
        routes["gpu"][f"retired_pages_{cause}"] = Route(GPU_RETIRED_PAGES,
                                                        constants={"cause": cause})
    for state in HEALTH_STATES:
        routes["gpu"][f"{FLAG_PREFIX}{state}{FLAG_SUFFIX}"] = Route(GPU_HEALTH,
                                                                    constants={"state": state})
    for value, name, text in _HOST_VALUES:
        routes["host"][value] = Route(gauge(name, (), _windowed(value, text), f"host: {value}"))
    shared: dict[str, Metric] = {}
    for value, name, text, constants in _HOST_COUNTERS:
        if name not in shared:
            shared[name] = counter(name, tuple(constants), text,
                                   "host: " + ("cpu_<mode>_seconds_total" if "cpu_seconds" in name
                                               else "<resource>_pressure_<kind>_seconds_total"))
        routes["host"][value] = Route(shared[name], constants=constants)
    for value, name, text, scale in _NIC_VALUES:
        routes["nic"][value] = Route(gauge(name, ("nic",), _windowed(value, text),
                                           f"nic: {value}"), scale)
    for value, name, text in _NIC_COUNTERS:
        routes["nic"][value] = Route(counter(name, ("nic",), text, f"nic: {value}"))
    for value, name, text in _HOST_TCP_VALUES:
        routes["nic"][value] = Route(gauge(name, (), _windowed(value, text),
                                           f"nic (scope=host): {value}"))
    for value, name, text in _HOST_TCP_COUNTERS:
        routes["nic"][value] = Route(counter(name, (), text, f"nic (scope=host): {value}"))
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
    for value, name, text in _SERVICE_VALUES:
        routes["service"][value] = Route(gauge(name, ("service",), text, f"service: {value}"))
    for value, name, text in _OOM_VALUES:
        routes["oom"][value] = Route(counter(name, ("source",), text, f"oom: {value}"))
    for value, name, text in _ENGINE_GAUGES:
        routes["engine"][value] = Route(gauge(name, _ENGINE, text, f"engine: {value}"))
    for value, name, text in _ENGINE_COUNTERS:
        routes["engine"][value] = Route(counter(name, _ENGINE, text, f"engine: {value}"))
    return routes


#: (probe, value name) -> Route, for samples of the whole GPU, host, NIC, target.
ROUTES = _build_routes()
#: GPU samples that carry a ``pid`` label describe one process, not the GPU.
GPU_PROCESS_ROUTES = {"process_memory_used_bytes": Route(GPU_PROCESS_MEMORY),
                      "process_count": Route(GPU_PROCESSES_FOLDED)}
#: GPU samples that carry a ``mig`` label describe one MIG instance.
GPU_MIG_ROUTES = {value: Route(gauge(name, _GPU_MIG, text, f"gpu (MIG instance): {value}"))
                  for value, name, text in _GPU_MIG_VALUES}
#: Per probe: the "did this source answer" gauge each of its samples sets.
UP_ROUTES = {
    "gpu": Route(GPU_UP),
    "http": Route(TARGET_UP, constants={"probe": "http"}),
    "download": Route(TARGET_UP, rename={"target": "url"}, constants={"probe": "download"}),
    "iperf3": Route(TARGET_UP, constants={"probe": "iperf3"}),
    "engine": Route(TARGET_UP, constants={"probe": "engine"}),
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
