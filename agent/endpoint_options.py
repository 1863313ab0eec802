"""The ``[endpoint]`` table: limits of the HTTP endpoint (ai_bottleneck.endpoint).

The defaults are what the endpoint has always used; they hold Prometheus' scrapes
answered with 200 idle and 64 slow clients connected (tests/bench/bench_soak.py).
The rate limit per client and TLS/basic auth stay in the exporter web config file
(``agent.web_config_file``), where the exporter toolkit keeps them. Like
``agent.listen``, these apply at start; a reload (SIGHUP) keeps the running ones.
docs/endpoint.md is generated from here (``python -m ai_bottleneck.endpoint_options``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.probes.options import option_info


@dataclass(frozen=True)
class EndpointOptions:
    """The ``[endpoint]`` table."""

    max_connections: int = field(default=512, metadata=option_info(
        min=8, max=65536, doc="connections open at once, all clients together; past it the "
                              "oldest idle connection of the client holding the most is "
                              "closed (one mid-request is never closed to make room)"))
    max_connections_per_client: int = field(default=256, metadata=option_info(
        min=1, max=65536, doc="connections open at once from one address; past it that "
                              "client's oldest idle connection is closed"))
    idle_timeout_seconds: float = field(default=120.0, metadata=option_info(
        min=1, max=86400, doc="a kept-alive connection with no request for this long is "
                              "closed (Prometheus scrapes at least every 2 minutes)"))
    request_timeout_seconds: float = field(default=10.0, metadata=option_info(
        min=0.5, max=3600, doc="the whole of a request, from its first byte to the last byte "
                               "of the answer, however slowly it comes (not per read)"))
    handshake_timeout_seconds: float = field(default=10.0, metadata=option_info(
        min=0.5, max=3600, doc="the TLS handshake of a new connection"))
    failed_logins_free: int = field(default=3, metadata=option_info(
        min=0, max=1000, doc="wrong basic-auth passwords from one address checked at once; "
                             "after them the client must wait before its next try"))
    failed_login_wait_seconds: float = field(default=1.0, metadata=option_info(
        min=0.01, max=3600, doc="the first wait after the free failures; it doubles with "
                                "each further failure (answered 429, no bcrypt check)"))
    failed_login_wait_max_seconds: float = field(default=60.0, metadata=option_info(
        min=0.01, max=86400, doc="the longest wait between a client's password checks"))

    page_history_seconds: float = field(default=3600.0, metadata=option_info(
        min=60, max=86400, doc="how far back the live page at / goes; the agent keeps a "
                               "compact copy of each window in memory (2-6 KB each with 8 "
                               "GPUs: an hour of 10 s windows is 0.6-2.1 MB; docs/report.md)"))

    def __post_init__(self) -> None:
        if self.max_connections_per_client > self.max_connections:
            raise ValueError(f"max_connections_per_client ({self.max_connections_per_client}) "
                             f"is more than max_connections ({self.max_connections})")
        if self.failed_login_wait_max_seconds < self.failed_login_wait_seconds:
            raise ValueError(f"failed_login_wait_max_seconds "
                             f"({self.failed_login_wait_max_seconds:g}) is shorter than "
                             f"failed_login_wait_seconds ({self.failed_login_wait_seconds:g})")

    def server_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ai_bottleneck.endpoint.MetricsServer."""
        return {"max_connections": self.max_connections,
                "max_connections_per_client": self.max_connections_per_client,
                "idle_timeout": self.idle_timeout_seconds,
                "request_timeout": self.request_timeout_seconds,
                "handshake_timeout": self.handshake_timeout_seconds,
                "failed_logins_free": self.failed_logins_free,
                "failed_login_wait": self.failed_login_wait_seconds,
                "failed_login_wait_max": self.failed_login_wait_max_seconds}


def markdown_table() -> str:
    """The table of docs/endpoint.md: key, default, range, meaning."""
    lines = ["| Key | Default | Range | Meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(EndpointOptions):
        info = f.metadata
        lines.append(f"| `{f.name}` | {f.default:g} | {info['min']:g} to {info['max']:g} | "
                     f"{info['doc']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
