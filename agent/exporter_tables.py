"""Sample values and the metric each becomes, for the GPU, its health and MIG
instances, HTTP calls, OOM events, model servers, the service under diagnosis, the
NICs and host-wide TCP, and the raw kernel counters: data only, read by
agent/exporter_metrics.py (which declares the metrics) and by the tests."""

from __future__ import annotations

#: (value, metric name without the prefix, kind, help) of a GPU's health values.
GPU_HEALTH_VALUES = (
    ("xid_errors_total", "gpu_xid_errors_total", "counter",
     "XID error events since the agent started (absent where events cannot be watched)."),
    ("xid_reset_required_errors_total", "gpu_xid_reset_required_errors_total", "counter",
     "XID events whose catalogue action is a GPU reset or a reboot."),
    ("xid_last_code", "gpu_xid_last_code", "gauge", "The latest XID seen since the agent started."),
    ("row_remap_pending_flag", "gpu_row_remap_pending", "gauge",
     "1 when a row remapping waits for the next GPU reset."),
    ("row_remap_failure_flag", "gpu_row_remap_failure", "gauge",
     "1 when a row remapping has ever failed (NVIDIA's RMA criterion)."),
    ("retired_pages_pending_flag", "gpu_retired_pages_pending", "gauge",
     "1 when a page retirement waits for the next driver reload."),
)

#: Values of a MIG instance's samples (label ``mig``): their own families, labelled by
#: the GPU and the GPU instance id. (value, metric name, help)
GPU_MIG_VALUES = (
    ("memory_used_bytes", "gpu_mig_memory_used_bytes", "Memory in use in the MIG instance."),
    ("memory_total_bytes", "gpu_mig_memory_total_bytes", "Memory of the MIG instance."),
    ("sm_active_ratio", "gpu_mig_sm_active_ratio",
     "Share of time the instance's SMs were active (GPM)."),
    ("sm_occupancy_ratio", "gpu_mig_sm_occupancy_ratio",
     "Achieved SM occupancy in the instance (GPM)."),
    ("tensor_active_ratio", "gpu_mig_tensor_active_ratio",
     "Share of time the instance's tensor cores were active (GPM)."),
    ("dram_active_ratio", "gpu_mig_dram_active_ratio",
     "Share of time the instance's memory was busy (GPM)."),
    ("gpm_available", "gpu_mig_gpm_available",
     "1 when GPM metrics were read for the instance, 0 when not."),
)

#: The service probe's values. (value, metric name, help)
SERVICE_VALUES = (
    ("cpu_cores", "service_cpu_cores", "CPU time the service's cgroup used per second."),
    ("cpu_utilization_ratio", "service_cpu_utilization_ratio",
     "The service's CPU use over the host's CPUs."),
    ("cpu_pressure_some_ratio", "service_cpu_pressure_some_ratio",
     "PSI of the service's cgroup: share of time some of its tasks waited for CPU."),
    ("memory_pressure_some_ratio", "service_memory_pressure_some_ratio",
     "PSI of the service's cgroup: share of time some of its tasks waited for memory."),
    ("io_pressure_some_ratio", "service_io_pressure_some_ratio",
     "PSI of the service's cgroup: share of time some of its tasks waited for I/O."),
    ("memory_current_bytes", "service_memory_bytes", "Memory of the service's cgroup."),
    ("process_count", "service_processes", "Processes in the service's cgroup."),
    ("busiest_thread_core_ratio", "service_busiest_thread_core_ratio",
     "The largest share of one core a thread of the service used."),
)

#: The gpu probe's per-device values. (value, metric name, help)
GPU_VALUES = (
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

#: The http probe's values besides its phases. (value, metric name, help)
HTTP_VALUES = (
    ("status", "http_status_code", "HTTP status of the last call (absent when none came back)."),
    ("request_bytes", "http_request_size_bytes", "Request body size of the last call."),
    ("response_bytes", "http_response_size_bytes", "Response body size of the last call."),
    ("concurrency", "http_concurrent_requests", "Calls the probe made at once."),
)

#: The oom probe's counters. (value, metric name, help)
OOM_VALUES = (
    ("oom_events_total", "oom_events_total", "Out-of-memory events seen since the agent started."),
    ("load_failure_events_total", "load_failure_events_total",
     "Model load / allocation failures seen since the agent started."),
)

#: The engine probe's gauges and counters (labels engine, target). (value, metric name, help)
ENGINE_GAUGES = (
    ("requests_running", "engine_requests_running", "Requests in the engine's running batch."),
    ("requests_waiting", "engine_requests_waiting",
     "Requests queued in the engine, waiting for a slot or KV cache room."),
    ("kv_cache_usage_ratio", "engine_kv_cache_usage_ratio", "Share of the KV cache in use."),
    ("kv_cache_capacity_tokens", "engine_kv_cache_capacity_tokens", "KV cache size in tokens."),
    ("queue_seconds", "engine_queue_seconds",
     "Mean time in the engine's queue of the requests finished since the scrape before."),
    ("queue_p95_seconds", "engine_queue_p95_seconds", "p95 of the same, from histogram buckets."),
    ("time_to_first_token_seconds", "engine_time_to_first_token_seconds",
     "Mean time to first token of the requests finished since the scrape before."),
    ("time_to_first_token_p95_seconds", "engine_time_to_first_token_p95_seconds",
     "p95 of the same, from histogram buckets."),
    ("inter_token_seconds", "engine_inter_token_seconds",
     "Mean time between output tokens since the scrape before."),
    ("inter_token_p95_seconds", "engine_inter_token_p95_seconds",
     "p95 of the same, from histogram buckets."),
    ("compute_seconds", "engine_compute_seconds",
     "Mean time running in the engine of the requests finished since the scrape before."),
    ("compute_p95_seconds", "engine_compute_p95_seconds",
     "p95 of the same, from histogram buckets."),
)
ENGINE_COUNTERS = (
    ("preemptions_total", "engine_preemptions_total",
     "Requests the engine preempted since it started (KV cache full)."),
    ("prompt_tokens_total", "engine_prompt_tokens_total", "Prompt tokens processed."),
    ("generation_tokens_total", "engine_generation_tokens_total", "Tokens generated."),
    ("requests_completed_total", "engine_requests_completed_total", "Requests finished."),
)

#: Raw kernel counters, exported as read: (sample value, metric name, help, constant labels).
HOST_COUNTERS = (
    *((f"cpu_{mode}_seconds_total", "host_cpu_seconds_total",
       "CPU time of all CPUs per mode, from /proc/stat.", {"mode": mode})
      for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")),
    *((f"{resource}_pressure_{kind}_seconds_total", "host_pressure_stalled_seconds_total",
       "PSI: total time some (or all, kind=full) tasks stalled on the resource.",
       {"resource": resource, "kind": kind})
      for resource in ("cpu", "io", "memory") for kind in ("some", "full")),
)
NIC_COUNTERS = (
    ("rx_bytes_total", "nic_rx_bytes_total", "Bytes received, /proc/net/dev."),
    ("tx_bytes_total", "nic_tx_bytes_total", "Bytes transmitted, /proc/net/dev."),
    ("rx_packets_total", "nic_rx_packets_total", "Packets received, /proc/net/dev."),
    ("tx_packets_total", "nic_tx_packets_total", "Packets transmitted, /proc/net/dev."),
    ("rx_drops_total", "nic_rx_drops_total", "Received packets dropped, /proc/net/dev."),
    ("tx_drops_total", "nic_tx_drops_total", "Transmit packets dropped, /proc/net/dev."),
    ("rx_errors_total", "nic_rx_errors_total", "Receive errors, /proc/net/dev."),
    ("tx_errors_total", "nic_tx_errors_total", "Transmit errors, /proc/net/dev."),
)
HOST_TCP_COUNTERS = (
    ("tcp_out_segments_total", "host_tcp_out_segments_total",
     "TCP segments sent, host-wide (/proc/net/snmp OutSegs)."),
    ("tcp_retransmits_total", "host_tcp_retransmits_total",
     "TCP segments retransmitted, host-wide (/proc/net/snmp RetransSegs)."),
)

HOST_TCP_VALUES = (
    ("tcp_retransmit_ratio", "host_tcp_retransmit_ratio",
     "TCP segments retransmitted / segments sent, host-wide."),
    ("tcp_retransmits_per_second", "host_tcp_retransmits_per_second",
     "TCP segments retransmitted per second, host-wide."),
    ("tcp_out_segments_per_second", "host_tcp_out_segments_per_second",
     "TCP segments sent per second, host-wide."),
)
NIC_VALUES = (
    ("rx_bits_per_second", "nic_rx_bytes_per_second", "Received throughput.", 1 / 8),
    ("tx_bits_per_second", "nic_tx_bytes_per_second", "Transmitted throughput.", 1 / 8),
    ("link_speed_bits_per_second", "nic_link_speed_bytes_per_second",
     "Link speed as the interface reports it.", 1 / 8),
    ("rx_utilization_ratio", "nic_rx_utilization_ratio",
     "Received throughput / the tightest known rate (link speed, [links], shaper).", 1.0),
    ("tx_utilization_ratio", "nic_tx_utilization_ratio",
     "Transmitted throughput / the tightest known rate (link speed, [links], shaper).",
     1.0),
    ("rx_drops_per_second", "nic_rx_drops_per_second", "Received packets dropped.", 1.0),
    ("tx_drops_per_second", "nic_tx_drops_per_second", "Transmit packets dropped.", 1.0),
    ("rx_errors_per_second", "nic_rx_errors_per_second", "Receive errors.", 1.0),
    ("tx_errors_per_second", "nic_tx_errors_per_second", "Transmit errors.", 1.0),
)
