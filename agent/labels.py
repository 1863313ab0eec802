"""The window labels: the product's one vocabulary for "what holds this service back".

Declared once; the classifier, hysteresis, the exporter's state, the overall
verdict and the lab's scorer all use it (DESIGN.md fixes the names).
"""

from __future__ import annotations

from enum import StrEnum


class Label(StrEnum):
    """A window's label, in the order tables and the exporter list them."""

    GPU_BOUND = "gpu_bound"
    VRAM_BOUND = "vram_bound"
    NETWORK_BOUND = "network_bound"
    CPU_BOUND = "cpu_bound"
    BALANCED = "balanced"
    IDLE = "idle"
    UNKNOWN = "unknown"


#: Every label's name, in order.
LABEL_NAMES: tuple[str, ...] = tuple(label.value for label in Label)
#: Labels that say "no bottleneck found"; an overall verdict prefers a bottleneck
#: seen in a good share of the windows over these.
QUIET_LABELS = frozenset({Label.IDLE.value, Label.UNKNOWN.value})
