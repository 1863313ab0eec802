"""`ai-bottleneck check-config`: every problem of a config file, one line each.

The same checks `diagnose` and `run` make before they start (the file parses,
every section's and every probe's options fit), without starting a probe or
touching the network: a probe's options are checked by building it, never by
its check() or a sample.
"""

from __future__ import annotations

from pathlib import Path

from ai_bottleneck.config import Config, ConfigError, load_config
from ai_bottleneck.discovery import _entry_points
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.sample import one_line


def config_problems(path: Path | None) -> tuple[Config | None, list[str]]:
    """The config (None when it does not load) and one line per problem."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return None, [str(exc)]
    problems: list[str] = []
    tables = config.probe_option_tables
    enabled = set(config.enabled_probes)
    for ep in _entry_points():
        if ep.name not in enabled:
            continue
        try:
            factory = ep.load()
        except Exception as exc:  # a broken plugin is its own problem, not the file's
            problems.append(f"{config.source}: probes.{ep.name}: the probe plugin does not "
                            f"load ({one_line(exc)})")
            continue
        try:
            probe = factory(tables.get(ep.name, {}))
        except OptionError as exc:
            key = f"probes.{ep.name}.{exc.key}".rstrip(".")
            problems.append(str(ConfigError(config.source, key, exc.problem)))
            continue
        except Exception as exc:
            problems.append(f"{config.source}: probes.{ep.name}: {one_line(exc)}")
            continue
        probe.close()
    return config, problems
