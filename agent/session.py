"""Building the probes of a run from the config, shared by `diagnose` and `run`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config, ConfigError
from agent.discovery import discover
from agent.options import OptionError
from probes.base import Probe


@dataclass
class ProbeSet:
    """The probes that run, and for every other known probe why it does not."""

    probes: list[Probe] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.probes]

    def close(self) -> None:
        for p in self.probes:
            p.close()


def build_probes(config: Config,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> ProbeSet:
    """Discover, build and check the enabled probes with their options.

    ``overrides`` replaces option keys of a probe's table (command-line flags).
    Bad options and required probes that cannot run raise ConfigError (one line,
    naming the file and key); anything else unusable is reported, not fatal.
    """
    tables = config.probe_option_tables
    for name, extra in (overrides or {}).items():
        tables[name] = {**tables.get(name, {}), **extra}
    enabled = config.enabled_probes
    try:
        found = discover(tables, only=enabled, strict_options=True)
    except OptionError as exc:
        raise config.error(exc) from None
    result = ProbeSet()
    for name in sorted(set(config.known_probes) - set(enabled)):
        result.unavailable[name] = "turned off in the config (enabled = false)"
    required = set(config.required_probes)
    for d in found:
        if d.usable and d.probe is not None:
            result.probes.append(d.probe)
            continue
        if d.name in required:
            result.close()
            raise ConfigError(config.source, f"probes.{d.name}.enabled",
                              f"probe is required (enabled = true) but cannot run here: "
                              f"{d.availability.reason}")
        result.unavailable[d.name] = d.availability.reason
    return result
