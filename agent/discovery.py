"""Find probes through the ``ai_bottleneck.probes`` entry-point group.

One discovery path for built-in and third-party probes. Each load and each
construction is guarded: a probe that fails to import, to build or to check
is reported with its reason and left out; the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ai_bottleneck.probes.base import Availability, Probe
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.sample import one_line

GROUP = "ai_bottleneck.probes"
log = logging.getLogger(__name__)


@dataclass
class Discovered:
    """A probe as found on this host: built and usable, or why not."""

    name: str
    probe: Probe | None
    availability: Availability
    source: str  # "module:attr" of the entry point

    @property
    def usable(self) -> bool:
        return self.probe is not None and self.availability.usable


def _entry_points() -> list[EntryPoint]:
    eps = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    seen: set[str] = set()
    unique = []
    for ep in eps:  # the same distribution installed twice lists its entry points twice
        if ep.name not in seen:
            seen.add(ep.name)
            unique.append(ep)
    return unique


def available_names() -> list[str]:
    return [ep.name for ep in _entry_points()]


def discover(
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    only: Iterable[str] | None = None,
    strict_options: bool = True,
) -> list[Discovered]:
    """Load, build and check every probe (or those in ``only``).

    ``options`` maps probe name to its options table. With ``strict_options``
    an OptionError propagates (the config is wrong: the caller exits 2);
    otherwise the probe is reported unusable with the message.
    """
    options = options or {}
    wanted = set(only) if only is not None else None
    found: list[Discovered] = []
    for ep in _entry_points():
        if wanted is not None and ep.name not in wanted:
            continue
        source = ep.value
        try:
            factory = ep.load()
        except Exception as exc:  # a broken plugin never stops start-up
            log.warning("probe %s: failed to load %s: %s", ep.name, source, exc)
            found.append(Discovered(ep.name, None, Availability.no(
                f"failed to load {source}: {one_line(exc)}"), source))
            continue
        try:
            probe = factory(options.get(ep.name, {}))
        except OptionError as exc:
            if strict_options:
                raise OptionError(f"probes.{ep.name}.{exc.key}".rstrip("."), exc.problem) from None
            found.append(Discovered(ep.name, None, Availability.no(f"bad options: {exc}"), source))
            continue
        except Exception as exc:
            log.warning("probe %s: failed to start: %s", ep.name, exc)
            found.append(Discovered(ep.name, None, Availability.no(
                f"failed to start: {one_line(exc)}"), source))
            continue
        try:
            availability = probe.check()
        except Exception as exc:
            availability = Availability.no(f"check failed: {one_line(exc)}")
        if not availability.usable:
            try:
                probe.close()
            except Exception:
                log.debug("probe %s: close after failed check raised", ep.name, exc_info=True)
        found.append(Discovered(ep.name, probe if availability.usable else None,
                                availability, source))
    return found
