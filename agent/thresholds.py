"""Every number the classifier decides by, in one place, each configurable.

docs/classifier.md lists each with its rule and source. Ratios are 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.options import bounds


@dataclass(frozen=True)
class Thresholds:
    gpu_low_utilization_ratio: float = field(default=0.30, metadata=bounds(
        min=0, max=1, doc="GPU below this is under-used (article: < 30% while users wait)"))
    gpu_busy_utilization_ratio: float = field(default=0.80, metadata=bounds(
        min=0, max=1, doc="GPU at or above this is busy"))
    vram_high_ratio: float = field(default=0.95, metadata=bounds(
        min=0, max=1, doc="memory used / total at or above this is 'full'"))
    latency_objective_seconds: float = field(default=1.0, metadata=bounds(
        min=0.001, doc="a request slower than this (p95) misses the objective"))
    nic_saturation_ratio: float = field(default=0.90, metadata=bounds(
        min=0, max=1, doc="NIC throughput / link speed at or above this is saturated"))
    retransmit_high_ratio: float = field(default=0.02, metadata=bounds(
        min=0, max=1, doc="TCP retransmitted / sent segments above this is network trouble"))
    network_phase_dominant_ratio: float = field(default=0.5, metadata=bounds(
        min=0, max=1, doc="upload+download share of request time above this is network-dominated"))
    cpu_saturated_ratio: float = field(default=0.90, metadata=bounds(
        min=0, max=1, doc="busiest-core or overall CPU utilization at or above this is saturated"))
    cpu_pressure_high_ratio: float = field(default=0.40, metadata=bounds(
        min=0, max=1, doc="PSI cpu 'some' share at or above this is CPU pressure"))
    public_bandwidth_min_bits_per_second: float = field(default=50e6, metadata=bounds(
        min=0, doc="article: >= 50 Mbit/s public for a concurrent API service"))
    internal_bandwidth_min_bits_per_second: float = field(default=1e9, metadata=bounds(
        min=0, doc="article: >= 1 Gbit/s between front end and GPU workers"))
    hysteresis_windows: int = field(default=2, metadata=bounds(
        min=1, max=100, doc="windows a new label must hold before it replaces the current one"))
