"""The config's top-level ``[service]`` table: the service under diagnosis.

It names the service (by systemd unit, cgroup path, container ID, or process name or
PID) or turns off the default (the processes holding GPU memory). The ``service``
probe reads it: the table is folded into ``[probes.service]``, which takes the same
keys beside the probe's other options. Naming the service in both tables, differently,
is an error, not a silent choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.probes.options import OptionError, option_info, parse_options
from ai_bottleneck.probes.service import NAMING_KEYS

SECTION = "service"


@dataclass(frozen=True)
class ServiceTable:
    """The ``[service]`` table; at most one key names the service."""

    unit: str = field(default="", metadata=option_info(
        doc="a systemd unit (vllm.service); its cgroup is found in the cgroup tree"))
    cgroup: str = field(default="", metadata=option_info(
        doc="the service's cgroup-v2 path (system.slice/vllm.service)"))
    container: str = field(default="", metadata=option_info(
        doc="a container ID, 12 to 64 hex digits; its cgroup is found in the cgroup tree"))
    process: str = field(default="", metadata=option_info(
        doc="a process name or PID; the service is that process's cgroup"))
    gpu_processes: bool = field(default=True, metadata=option_info(
        doc="with no service named, the service is the processes holding GPU memory; "
            "false: judged host-wide"))

    def __post_init__(self) -> None:
        named = [k for k in NAMING_KEYS if getattr(self, k)]
        if len(named) > 1:
            raise ValueError(f"name the service one way: {' and '.join(named)} are both set")


def fold_service(raw: Any, probe_options: Mapping[str, Any]) -> dict[str, Any] | None:
    """``[probes.service]``'s options with ``[service]``'s folded in; None when there is
    no ``[service]`` table. Raises OptionError (key under ``service``) for a bad table or
    one that names the service differently from ``[probes.service]``."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise OptionError(SECTION, f"expected a table ([{SECTION}]), got {raw!r}")
    table = parse_options(ServiceTable, raw, prefix=SECTION)
    given = {k: v for k, v in raw.items()}
    for key, value in given.items():
        theirs = probe_options.get(key)
        if key in probe_options and theirs != getattr(table, key):
            raise OptionError(f"{SECTION}.{key}", f"{value!r} conflicts with probes.service."
                              f"{key} = {theirs!r}: say it in one table")
    mine = [k for k in NAMING_KEYS if getattr(table, k)]
    theirs_named = [k for k in NAMING_KEYS if probe_options.get(k)]
    if mine and theirs_named and mine != theirs_named:
        raise OptionError(f"{SECTION}.{mine[0]}", f"conflicts with probes.service."
                          f"{theirs_named[0]}: name the service in one table")
    return {**probe_options, **given}
