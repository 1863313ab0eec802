"""Building the probes of a run from the config, shared by `diagnose` and `run`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.config import Config, ConfigError
from ai_bottleneck.discovery import discover
from ai_bottleneck.probes.base import Probe
from ai_bottleneck.probes.options import OptionError


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
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, *,
                 origins: Mapping[tuple[str, str], str] | None = None) -> ProbeSet:
    """Discover, build and check the enabled probes with their options.

    ``overrides`` replaces option keys of a probe's table (command-line flags);
    ``origins`` names where an overriding (probe, key) came from, e.g.
    ``{("http", "targets"): "--url"}``. Bad options and required probes that
    cannot run raise ConfigError (one line, naming the file and key, or the flag
    that gave the bad value); anything else unusable is reported, not fatal.
    """
    tables = config.probe_option_tables
    for name, extra in (overrides or {}).items():
        tables[name] = {**tables.get(name, {}), **extra}
    enabled = config.enabled_probes
    try:
        found = discover(tables, only=enabled, strict_options=True)
    except OptionError as exc:
        flag = _flag_behind(exc.key, overrides or {}, origins or {})
        if flag is not None:
            raise ConfigError(flag, "", exc.problem) from None
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


def _flag_behind(key: str, overrides: Mapping[str, Mapping[str, Any]],
                 origins: Mapping[tuple[str, str], str]) -> str | None:
    """The flag whose value the bad option ``key`` ("probes.http.targets[0]") holds.

    A bad value from a flag is not the config file's fault; naming the file (often
    the absent default) sends the user to the wrong place. A check of the probe's
    options as a whole ("probes.iperf3") is put down to the flag when one set them.
    """
    parts = key.split(".", 2)
    if len(parts) < 2 or parts[0] != "probes":
        return None
    probe = parts[1]
    option = parts[2].split("[", 1)[0].split(".", 1)[0] if len(parts) == 3 else ""
    flagged = [(p, k) for (p, k) in origins if p == probe and k in overrides.get(p, {})]
    for p, k in flagged:
        if option in ("", k):
            return origins[(p, k)]
    return None
