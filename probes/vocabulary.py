"""Names the built-in probes write and the agent reads: one definition for both sides.

Value names carry their unit (``*_seconds``, ``*_bytes``, ``*_ratio``). A sample's
sub-kind is told by a declared label, never guessed: ``is_process_sample`` and
``is_host_total`` are the one place that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

#: Traffic a run of an active probe made (the traffic budget adds it up).
BYTES_VALUE = "bytes"
#: Throughput an active probe measured (iperf3, download).
THROUGHPUT_VALUE = "bits_per_second"

# -- gpu (written by probes/gpu.py, gpu_device.py and gpm.py) --------------------------

GPU_UTILIZATION = "utilization_ratio"
GPU_SM_ACTIVE = "sm_active_ratio"
GPU_DRAM_ACTIVE = "dram_active_ratio"
GPU_MEMORY_USED = "memory_used_bytes"
GPU_MEMORY_TOTAL = "memory_total_bytes"
GPU_POWER = "power_watts"
GPU_POWER_LIMIT = "power_limit_watts"
GPU_TEMPERATURE = "temperature_celsius"

# -- gpu health (written by probes/gpu_health.py, read by agent/gpu_faults.py) ---------

XID_ERRORS_TOTAL = "xid_errors_total"
XID_RESET_REQUIRED_TOTAL = "xid_reset_required_errors_total"
XID_LAST_CODE = "xid_last_code"
ECC_UNCORRECTED_VOLATILE_TOTAL = "ecc_uncorrected_volatile_errors_total"
ROW_REMAP_PENDING = "row_remap_pending_flag"
ROW_REMAP_FAILURE = "row_remap_failure_flag"
RETIRED_PAGES_PENDING = "retired_pages_pending_flag"

# -- processes (the gpu probe's GPU memory per process; the service probe's CPU) -------

PROCESS_MEMORY_USED = "process_memory_used_bytes"
PROCESS_COUNT = "process_count"
PROCESS_CPU_CORES = "process_cpu_cores"
#: The service probe's busiest thread of the service, in cores (0..1).
SERVICE_BUSIEST_THREAD = "busiest_thread_core_ratio"

# -- host ------------------------------------------------------------------------------

HOST_CPU = "cpu_utilization_ratio"
HOST_BUSIEST_CORE = "cpu_busiest_core_ratio"
HOST_CPU_COUNT = "cpu_count"
HOST_MEMORY_USED = "memory_used_ratio"


def pressure_value(resource: str, kind: str = "some") -> str:
    """The pressure-stall value of ``resource`` (cpu, io, memory): the share of time
    some task (``kind`` "some") or all of them ("full") waited for it."""
    return f"{resource}_pressure_{kind}_ratio"


#: The /proc/stat CPU columns, in order (proc(5)); the host probe reads the first eight.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_seconds_total(mode: str) -> str:
    """All CPUs' time in ``mode`` (one of CPU_MODES) since boot, as the kernel counts
    it: a counter, so Prometheus rebuilds exact utilization over any range."""
    return f"cpu_{mode}_seconds_total"


def pressure_seconds_total(resource: str, kind: str = "some") -> str:
    """The pressure-stall time of ``resource`` since boot (PSI's ``total``), a counter."""
    return f"{resource}_pressure_{kind}_seconds_total"


# -- http and download -----------------------------------------------------------------

STATUS_VALUE = "status"
REQUEST_BYTES = "request_bytes"
RESPONSE_BYTES = "response_bytes"

# -- oom -------------------------------------------------------------------------------

OOM_EVENTS = "oom_events"
LOAD_FAILURE_EVENTS = "load_failure_events"
#: The same since the probe started (counters: a reader takes their increase).
OOM_EVENTS_TOTAL = "oom_events_total"
LOAD_FAILURE_EVENTS_TOTAL = "load_failure_events_total"

# -- engine (written by probes/engine.py, read by agent/engine_signals.py) -------------

ENGINE_LABEL = "engine"
ENGINE_RUNNING = "requests_running"
ENGINE_WAITING = "requests_waiting"
ENGINE_KV_USAGE = "kv_cache_usage_ratio"
ENGINE_KV_CAPACITY = "kv_cache_capacity_tokens"
#: Counters since the engine started (a reader takes their increase).
ENGINE_PREEMPTIONS_TOTAL = "preemptions_total"
ENGINE_PROMPT_TOKENS_TOTAL = "prompt_tokens_total"
ENGINE_GENERATION_TOKENS_TOTAL = "generation_tokens_total"
ENGINE_COMPLETED_TOTAL = "requests_completed_total"


class EngineTiming(StrEnum):
    """The per-request times an engine reports, each recorded as the mean
    ``<timing>_seconds`` and (from histogram buckets) ``<timing>_p95_seconds`` of the
    requests finished since the scrape before."""

    QUEUE = "queue"
    TIME_TO_FIRST_TOKEN = "time_to_first_token"
    INTER_TOKEN = "inter_token"
    COMPUTE = "compute"

    @property
    def mean_name(self) -> str:
        return f"{self.value}_seconds"

    @property
    def p95_name(self) -> str:
        return f"{self.value}_p95_seconds"


# -- HTTP phases (the http and download probes) ---------------------------------------


class HttpPhase(StrEnum):
    """The phases of one HTTP call, in the order they happen. Each is recorded as the
    value ``<phase>_seconds``; failure messages name the phase a call failed in."""

    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    UPLOAD = "upload"
    SERVER = "server"
    DOWNLOAD = "download"

    @property
    def value_name(self) -> str:
        return f"{self.value}_seconds"


TOTAL_SECONDS = "total_seconds"
DNS_SECONDS = HttpPhase.DNS.value_name
CONNECT_SECONDS = HttpPhase.CONNECT.value_name
TLS_SECONDS = HttpPhase.TLS.value_name
UPLOAD_SECONDS = HttpPhase.UPLOAD.value_name
SERVER_SECONDS = HttpPhase.SERVER.value_name
DOWNLOAD_SECONDS = HttpPhase.DOWNLOAD.value_name
#: The phase values of one call in the order they happen; they add up to the total.
HTTP_PHASES = tuple(p.value_name for p in HttpPhase)
#: The phases that are the network's time, not the server's.
NETWORK_PHASES = tuple(p.value_name for p in HttpPhase if p is not HttpPhase.SERVER)

# -- nic -------------------------------------------------------------------------------

LINK_SPEED = "link_speed_bits_per_second"
TCP_RETRANSMIT_RATIO = "tcp_retransmit_ratio"
TCP_RETRANSMITS = "tcp_retransmits_per_second"


def nic_value(direction: str, what: str) -> str:
    """A per-direction NIC value: ``nic_value("rx", "bits_per_second")`` is
    ``rx_bits_per_second`` (also ``utilization_ratio``, ``drops_per_second``)."""
    return f"{direction}_{what}"


def nic_total(direction: str, what: str) -> str:
    """An interface's raw /proc/net/dev counter as read: ``nic_total("rx", "bytes")``
    is ``rx_bytes_total`` (also ``packets``, ``drops``, ``errors``)."""
    return f"{direction}_{what}_total"


#: The host's TCP counters as read (/proc/net/snmp), beside their per-second rates.
TCP_RETRANSMITS_TOTAL = "tcp_retransmits_total"
TCP_OUT_SEGMENTS_TOTAL = "tcp_out_segments_total"

RX_UTILIZATION = nic_value("rx", "utilization_ratio")
TX_UTILIZATION = nic_value("tx", "utilization_ratio")
LINK_UTILIZATION_VALUES = (RX_UTILIZATION, TX_UTILIZATION)

# -- sample sub-kinds ------------------------------------------------------------------

#: A gpu sample about one process on one device (its memory use) carries this label.
PROCESS_LABEL = "pid"
#: The pid of the one series that folds a GPU's processes beyond ``max_processes``.
OTHER_PROCESSES = "other"
#: A gpu sample about one MIG instance (or a process in one) carries its GPU instance id.
MIG_LABEL = "mig"
#: The service probe's top processes: "1" for the service's own, "0" for the host's others.
IN_SERVICE_LABEL = "in_service"
#: The nic probe's host-wide totals (all interfaces, TCP counters) carry this label.
SCOPE_LABEL = "scope"
HOST_SCOPE = "host"
HOST_TOTAL_LABELS: Mapping[str, str] = {SCOPE_LABEL: HOST_SCOPE}


#: Samples a probe gives about calls still running (``InFlight`` in probes.base): work
#: in progress, not a finished observation, so windows count them apart (a lower bound
#: on the call's time, not a call).
CALL_LABEL = "call"
IN_FLIGHT = "in_flight"
IN_FLIGHT_LABELS: Mapping[str, str] = {CALL_LABEL: IN_FLIGHT}
#: Their values: elapsed so far, and how much of it the network and the server took.
IN_FLIGHT_SECONDS = "in_flight_seconds"
IN_FLIGHT_NETWORK_SECONDS = "in_flight_network_seconds"
IN_FLIGHT_SERVER_SECONDS = "in_flight_server_seconds"
IN_FLIGHT_CALLS = "in_flight_calls"


def is_in_flight(labels: Mapping[str, str]) -> bool:
    """A report on a call still running (the http probe's), not a finished call."""
    return labels.get(CALL_LABEL) == IN_FLIGHT


def is_process_sample(labels: Mapping[str, str]) -> bool:
    """A per-process sample (a gpu probe's process memory, a service probe's top
    process), not a per-device or per-service one."""
    return PROCESS_LABEL in labels


def mig_instance(labels: Mapping[str, str]) -> str | None:
    """The MIG GPU instance a gpu sample is about, or None for a whole GPU."""
    return labels.get(MIG_LABEL)


def is_host_total(labels: Mapping[str, str]) -> bool:
    """A host-wide total (the nic probe's), not one interface's."""
    return labels.get(SCOPE_LABEL) == HOST_SCOPE
