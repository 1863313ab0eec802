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

# -- NIC load (the nic probe) ----------------------------------------------------------

RX_UTILIZATION = "rx_utilization_ratio"
TX_UTILIZATION = "tx_utilization_ratio"
LINK_UTILIZATION_VALUES = (RX_UTILIZATION, TX_UTILIZATION)

# -- sample sub-kinds ------------------------------------------------------------------

#: A gpu sample about one process on one device (its memory use) carries this label.
PROCESS_LABEL = "pid"
#: The nic probe's host-wide totals (all interfaces, TCP counters) carry this label.
SCOPE_LABEL = "scope"
HOST_SCOPE = "host"
HOST_TOTAL_LABELS: Mapping[str, str] = {SCOPE_LABEL: HOST_SCOPE}


def is_process_sample(labels: Mapping[str, str]) -> bool:
    """A per-process sample (a gpu probe's process memory), not a per-device one."""
    return PROCESS_LABEL in labels


def is_host_total(labels: Mapping[str, str]) -> bool:
    """A host-wide total (the nic probe's), not one interface's."""
    return labels.get(SCOPE_LABEL) == HOST_SCOPE
