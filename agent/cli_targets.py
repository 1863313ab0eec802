"""The probe options that diagnose's target flags (--url, --iperf3, --download,
--engine, --service) put in place of the config's, and which flag set each one,
for errors that name the flag."""

from __future__ import annotations

from typing import Any

from ai_bottleneck.probes.service import options_for

#: The probe option each target flag replaces, for errors that name the flag.
FLAG_OPTIONS = {("http", "targets"): "--url", ("iperf3", "targets"): "--iperf3",
                ("download", "url"): "--download", ("engine", "targets"): "--engine",
                ("service", "unit"): "--service", ("service", "cgroup"): "--service",
                ("service", "process"): "--service"}


def cli_overrides(urls: tuple[str, ...], iperf3: tuple[str, ...], download: str | None,
                  config: Any, service: str | None = None,
                  engines: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Command-line targets replace the config's targets for that probe."""
    out: dict[str, dict[str, Any]] = {}
    if service:
        out["service"] = options_for(service)
    if urls:
        out["http"] = {"targets": [{"url": u} for u in urls]}
    if iperf3:
        out["iperf3"] = {"targets": list(iperf3)}
    if download:
        out["download"] = {"url": download}
    if engines:
        out["engine"] = {"targets": list(engines)}
    # A short diagnosis needs denser HTTP calls (and engine scrapes) than the daemon's
    # default, unless the config chose an interval itself.
    for name in ("http", "engine") if engines else ("http",):
        if "interval_seconds" not in config.probe_options(name):
            out.setdefault(name, {})["interval_seconds"] = config.agent.interval_seconds
    return out
