"""Warnings that carry a declared kind, so a report can group or drop them without
matching their text.

A ``Remark`` is a ``str`` (the JSON forms, the exporter and every existing
reader keep seeing plain text) that also knows its ``kind`` and, where it is
about one probe, that probe's ``subject``. The terminal report, for instance,
drops ``PROBE_UNAVAILABLE`` remarks for probes its NOT MEASURED section already
lists, instead of looking for "probe X unavailable" at the start of the text.
"""

from __future__ import annotations

from enum import StrEnum


class WarningKind(StrEnum):
    MEMORY_RESERVED = "memory_reserved"        # high VRAM occupancy, no fault seen
    GPU_INEFFECTIVE = "gpu_ineffective"        # utilization high, SM activity low
    CLOCKS_HELD_BACK = "clocks_held_back"      # thermal/power/... clock events
    COARSE_GPU_ONLY = "coarse_gpu_only"        # no GPM metrics
    THIN_LINK = "thin_link"                    # a throughput test under the minimum
    PATH_FULL = "path_full"                    # a NIC direction full, the GPU working
    RETRANSMITS = "retransmits"
    TARGET_DOWN = "target_down"                # every call to one target failed
    PROBE_UNAVAILABLE = "probe_unavailable"    # cannot run on this host at all
    PROBE_FAILING = "probe_failing"            # ran, failed or partly failed
    GPU_READ_ERROR = "gpu_read_error"          # one GPU could not be read
    GPU_REMAP_FAILED = "gpu_remap_failed"      # a row remapping failed: replace the GPU
    GPU_REMAP_PENDING = "gpu_remap_pending"    # a row remapping waits for a GPU reset
    GPU_PAGE_RETIRE_PENDING = "gpu_page_retire_pending"  # waits for a driver reload
    GPU_XID = "gpu_xid"                        # XID error events in the window
    LATE_SAMPLES = "late_samples"
    OTHER = "other"


class Remark(str):
    """Text with a kind: ``Remark(WarningKind.RETRANSMITS, "TCP retransmits 2.1% ...")``."""

    kind: WarningKind
    subject: str | None

    def __new__(cls, kind: WarningKind, text: str, subject: str | None = None) -> Remark:
        self = super().__new__(cls, text)
        self.kind = kind
        self.subject = subject
        return self

    def __getnewargs__(self) -> tuple[WarningKind, str, str | None]:  # type: ignore[override]
        # copy, deepcopy and pickle rebuild a Remark through __new__ with these.
        return (self.kind, str(self), self.subject)


def kind_of(text: str) -> WarningKind:
    """The kind of a warning; plain text (from an older producer) is OTHER."""
    return text.kind if isinstance(text, Remark) else WarningKind.OTHER


def subject_of(text: str) -> str | None:
    return text.subject if isinstance(text, Remark) else None
