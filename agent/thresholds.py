"""Every number the classifier decides by, in one place, each configurable.

docs/classifier.md lists each with its rule and source. Ratios are 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ai_bottleneck.probes.options import option_info


@dataclass(frozen=True)
class Thresholds:
    gpu_low_utilization_ratio: float = field(default=0.30, metadata=option_info(
        min=0, max=1, doc="GPU below this is under-used (article: < 30% while users wait)"))
    gpu_busy_utilization_ratio: float = field(default=0.80, metadata=option_info(
        min=0, max=1, doc="GPU at or above this is busy"))
    vram_high_ratio: float = field(default=0.95, metadata=option_info(
        min=0, max=1, doc="memory used / total at or above this is 'full'"))
    latency_objective_seconds: float = field(default=1.0, metadata=option_info(
        min=0.001, doc="a request slower than this (p95) misses the objective"))
    nic_saturation_ratio: float = field(default=0.90, metadata=option_info(
        min=0, max=1, doc="NIC throughput / link speed at or above this is saturated"))
    retransmit_high_ratio: float = field(default=0.02, metadata=option_info(
        min=0, max=1, doc="TCP retransmitted / sent segments above this is network trouble"))
    network_phase_dominant_ratio: float = field(default=0.5, metadata=option_info(
        min=0, max=1, doc="upload+download share of request time above this is network-dominated"))
    cpu_saturated_ratio: float = field(default=0.90, metadata=option_info(
        min=0, max=1, doc="busiest-core or overall CPU utilization at or above this is saturated"))
    cpu_pressure_high_ratio: float = field(default=0.40, metadata=option_info(
        min=0, max=1, doc="PSI cpu 'some' share at or above this is CPU pressure"))
    public_bandwidth_min_bits_per_second: float = field(default=50e6, metadata=option_info(
        min=0, doc="article: >= 50 Mbit/s public for a concurrent API service"))
    internal_bandwidth_min_bits_per_second: float = field(default=1e9, metadata=option_info(
        min=0, doc="article: >= 1 Gbit/s between front end and GPU workers"))
    hysteresis_windows: int = field(default=2, metadata=option_info(
        min=1, max=100, doc="windows a new label must hold before it replaces the current one"))
    hysteresis_settled_at_once: bool = field(default=True, metadata=option_info(
        doc="a new label takes over after one window when that window settles it: the "
            "current label is gone from both its halves and the new one holds in the second"))
    # Added with the classifier; see docs/classifier.md for the reasoning behind each.
    gpu_idle_ratio: float = field(default=0.05, metadata=option_info(
        min=0, max=1, doc="GPU activity below this on every GPU counts as no GPU load"))
    gpm_busy_ratio: float = field(default=0.80, metadata=option_info(
        min=0, max=1, doc="GPM SM (or DRAM) activity at or above this is busy "
                          "(NVIDIA DCGM: >= 0.8 needed for effective use)"))
    gpm_ineffective_ratio: float = field(default=0.50, metadata=option_info(
        min=0, max=1, doc="GPM SM activity below this while coarse utilization is busy means "
                          "small kernels, not a saturated GPU (NVIDIA DCGM: < 0.5 ineffective)"))
    vram_warning_ratio: float = field(default=0.90, metadata=option_info(
        min=0, max=1, doc="memory used / total at or above this is worth a warning (servers "
                          "that pre-reserve memory sit here; not a fault by itself)"))
    server_phase_dominant_ratio: float = field(default=0.5, metadata=option_info(
        min=0, max=1, doc="server share of request time at or above this is server-dominated"))
    http_failure_high_ratio: float = field(default=0.10, metadata=option_info(
        min=0, max=1, doc="failed calls / all calls at or above this misses the objective too"))
    cpu_idle_ratio: float = field(default=0.20, metadata=option_info(
        min=0, max=1, doc="CPU utilization below this counts as no CPU load"))
    nic_idle_bits_per_second: float = field(default=1e6, metadata=option_info(
        min=0, doc="NIC traffic (rx+tx) below this on every NIC counts as no network load"))
    bandwidth_shortfall_ratio: float = field(default=0.5, metadata=option_info(
        min=0, max=1, doc="measured throughput below this share of what the requests need is "
                          "network evidence"))
    active_measurement_max_age_seconds: float = field(default=900.0, metadata=option_info(
        min=0, doc="iperf3/download results older than this are no longer evidence"))
    plateau_flat_ratio: float = field(default=0.8, metadata=option_info(
        min=0, max=1, doc="a NIC direction whose every reading in the window is at least this "
                          "share of its peak has plateaued: a ceiling when congestion shows"))
    plateau_min_samples: int = field(default=5, metadata=option_info(
        min=2, max=10000, doc="readings a plateau needs in the window"))
    window_min_samples: int = field(default=3, metadata=option_info(
        min=1, max=10000, doc="a resource read fewer times than this in a window lowers the "
                              "confidence"))

    # The model server's own readings (probe engine); see agent/engine_rules.py.
    engine_kv_full_ratio: float = field(default=0.90, metadata=option_info(
        min=0, max=1, doc="KV cache use at or above this, with requests waiting or "
                          "preempted, is a full KV cache"))
    engine_waiting_min_requests: float = field(default=1.0, metadata=option_info(
        min=0, doc="requests waiting in the engine (window mean) at or above this are a "
                   "queue"))
    engine_quiet_running_requests: float = field(default=1.0, metadata=option_info(
        min=0, doc="an engine with nothing waiting and at most this many running (mean) "
                   "is quiet"))
    ttft_objective_seconds: float = field(default=2.0, metadata=option_info(
        min=0.001, doc="time to first token (p95) above this misses the objective, where "
                       "the engine reports it"))
    inter_token_objective_seconds: float = field(default=0.2, metadata=option_info(
        min=0.0001, doc="time between output tokens (p95) above this misses the objective, "
                        "where the engine reports it"))

    def __post_init__(self) -> None:
        # Cross-field order the rules rely on; parse_options turns this into one line.
        if not self.gpu_idle_ratio <= self.gpu_low_utilization_ratio:
            raise ValueError("gpu_idle_ratio must be <= gpu_low_utilization_ratio")
        if not self.gpu_low_utilization_ratio < self.gpu_busy_utilization_ratio:
            raise ValueError("gpu_low_utilization_ratio must be < gpu_busy_utilization_ratio")
        if not self.gpm_ineffective_ratio <= self.gpm_busy_ratio:
            raise ValueError("gpm_ineffective_ratio must be <= gpm_busy_ratio")
        if not self.vram_warning_ratio <= self.vram_high_ratio:
            raise ValueError("vram_warning_ratio must be <= vram_high_ratio")
        if not self.cpu_idle_ratio < self.cpu_saturated_ratio:
            raise ValueError("cpu_idle_ratio must be < cpu_saturated_ratio")
