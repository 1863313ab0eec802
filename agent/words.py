"""Numbers in plain words for evidence and advice: 18%, 4.2 s, 94 Mbit/s, 80 GiB.

The formatting itself lives in ai_bottleneck.units, shared with the reports, so
the classifier's evidence and every report print one unit convention.
"""

from __future__ import annotations

from ai_bottleneck.units import bits, pct, secs, size

__all__ = ["bits", "pct", "secs", "size"]
