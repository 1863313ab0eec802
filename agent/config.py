"""The agent's config file: one TOML file, every value with a default.

Where it comes from, first match wins: the ``--config`` flag, the
``AI_BOTTLENECK_CONFIG`` environment variable, then
``/etc/ai-bottleneck/config.toml``. A file named by the flag or the variable
must exist; the default file may be absent (then every default applies), so
an agent with no config at all still runs.

Layout::

    [agent]        sampling interval, window length, listen address, files
    [thresholds]   classifier thresholds (ai_bottleneck.thresholds.Thresholds)
    [budget]       traffic budget of active probes (ai_bottleneck.budget.BudgetOptions)
    [endpoint]     limits of the HTTP endpoint (ai_bottleneck.endpoint_options)
    [links]        rates the NICs cannot tell: the public bandwidth bought, known
                   internal rates (ai_bottleneck.probes.capacity.Links; given to
                   the nic probe)
    [service]      the service under diagnosis (ai_bottleneck.service_config; folded
                   into [probes.service])
    [probes.NAME]  options of probe NAME, plus ``enabled = true/false``

Unknown keys are errors. Every error is a ``ConfigError`` whose text is one
line, ``FILE: KEY: problem``; the CLI prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_bottleneck.budget import BudgetOptions
from ai_bottleneck.endpoint_options import EndpointOptions
from ai_bottleneck.probes.capacity import Links
from ai_bottleneck.probes.options import OptionError, option_info, parse_options
from ai_bottleneck.probes.sample import one_line
from ai_bottleneck.service_config import fold_service
from ai_bottleneck.thresholds import Thresholds

DEFAULT_PATH = Path("/etc/ai-bottleneck/config.toml")
ENV_VAR = "AI_BOTTLENECK_CONFIG"
#: The agent's port. 9100-9999, the range Prometheus exporters traditionally
#: take their ports from, is fully allocated (node_exporter 9100, NVIDIA's DCGM
#: exporter 9400, nvidia_gpu_exporter 9835, ...). 10000-10999 holds the kubelet,
#: kube-proxy and other daemons a GPU node often runs; 30000 and up are
#: Kubernetes NodePorts and then the kernel's ephemeral range. 19466 is none
#: of these. docs/deployment.md says so too.
DEFAULT_PORT = 19466
DEFAULT_LISTEN = f":{DEFAULT_PORT}"


class ConfigError(ValueError):
    """A config value is wrong. ``str()`` is one line: ``FILE: KEY: problem``."""

    def __init__(self, source: str, key: str, problem: str):
        self.source = source
        self.key = key
        self.problem = one_line(problem, limit=500)
        parts = [p for p in (source, key, self.problem) if p]
        super().__init__(": ".join(parts))


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT' or ':PORT' (all interfaces) -> (host, port).

    The host is returned without brackets; '' means every interface.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not HOST:PORT (examples: :{DEFAULT_PORT}, "
                         f"127.0.0.1:{DEFAULT_PORT}, [::1]:{DEFAULT_PORT})")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{text!r}: an IPv6 address needs both brackets, as in [::1]:PORT")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


@dataclass(frozen=True)
class AgentOptions:
    """The ``[agent]`` table."""

    interval_seconds: float = field(default=1.0, metadata=option_info(
        min=0.1, max=3600, doc="how often the passive probes (gpu, host, nic, oom) sample"))
    window_seconds: float = field(default=10.0, metadata=option_info(
        min=1, max=86400, doc="length of one labelled window; at least one interval"))
    listen: str = field(default=DEFAULT_LISTEN, metadata=option_info(
        doc="HOST:PORT of the Prometheus endpoint; ':PORT' is every interface"))
    web_config_file: Path | None = field(default=None, metadata=option_info(
        doc="TLS and basic-auth settings in the Prometheus exporter web config format"))
    record_file: Path | None = field(default=None, metadata=option_info(
        doc="append every sample to this recording (record format v1); unset = no recording"))
    stale_after_intervals: int = field(default=3, metadata=option_info(
        min=1, max=1000, doc="a series leaves /metrics when its probe has not reported it "
                             "for this many of the probe's intervals"))

    def __post_init__(self) -> None:
        if self.window_seconds < self.interval_seconds:
            raise ValueError(f"window_seconds ({self.window_seconds:g}) is shorter than "
                             f"interval_seconds ({self.interval_seconds:g})")
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            raise ValueError(f"listen: {exc}") from None
        for name in ("web_config_file", "record_file"):
            if str(getattr(self, name)) == ".":
                raise ValueError(f"{name}: an empty path; leave the key out to turn it off")

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@dataclass(frozen=True)
class ProbeSettings:
    """One ``[probes.NAME]`` table: ``enabled`` and the probe's own options.

    ``enabled`` is None when the table does not say: the probe then runs if
    it is usable on this host. ``false`` turns it off; ``true`` asks for it,
    and the agent treats it being unusable as a start-up error.
    """

    enabled: bool | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


_SECTIONS = ("agent", "thresholds", "budget", "endpoint", "links", "service", "probes")


@dataclass(frozen=True)
class Config:
    """The whole config, checked. ``source`` names where it came from, for messages."""

    source: str = "(defaults)"
    agent: AgentOptions = field(default_factory=AgentOptions)
    thresholds: Thresholds = field(default_factory=Thresholds)
    budget: BudgetOptions = field(default_factory=BudgetOptions)
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)
    probes: Mapping[str, ProbeSettings] = field(default_factory=dict)
    known_probes: tuple[str, ...] = ()
    #: The [links] table as written (checked): the nic probe gets it as its ``links``.
    links: Mapping[str, Any] = field(default_factory=dict)

    def probe_options(self, name: str) -> dict[str, Any]:
        """The options table for probe ``name`` (without ``enabled``); {} when none."""
        settings = self.probes.get(name)
        return dict(settings.options) if settings else {}

    @property
    def probe_option_tables(self) -> dict[str, dict[str, Any]]:
        """Every probe's options table, for ai_bottleneck.discovery.discover(options=...)."""
        tables = {name: self.probe_options(name) for name in self.probes}
        if self.links:
            tables.setdefault("nic", {})["links"] = dict(self.links)
        return tables

    @property
    def enabled_probes(self) -> tuple[str, ...]:
        """Known probes not turned off with ``enabled = false``, in name order."""
        names = set(self.known_probes) | set(self.probes)
        return tuple(sorted(n for n in names if self.probes.get(n, ProbeSettings()).enabled
                            is not False))

    @property
    def required_probes(self) -> tuple[str, ...]:
        """Probes with ``enabled = true``: being unusable is an error, not a note."""
        return tuple(sorted(n for n, s in self.probes.items() if s.enabled is True))

    def error(self, exc: OptionError) -> ConfigError:
        """Turn an OptionError about this config (say, from a probe factory given
        ``probes.http.targets``) into the one-line ConfigError naming the file."""
        return ConfigError(self.source, exc.key, exc.problem)

    def with_agent(self, origin: str, **values: Any) -> Config:
        """This config with [agent] values replaced, as from command-line flags.

        ``origin`` names the flags in errors (for example ``--listen``). The
        values are checked like the file's.
        """
        current = {f.name: getattr(self.agent, f.name) for f in dataclasses.fields(AgentOptions)}
        current.update(values)
        try:
            agent = parse_options(AgentOptions, current, prefix="agent")
        except OptionError as exc:
            raise ConfigError(origin, exc.key, exc.problem) from None
        return dataclasses.replace(self, agent=agent)


def resolve_path(path: Path | str | None,
                 environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """Which file to read, and whether it was asked for (then it must exist)."""
    if path is not None and str(path) != "":
        return Path(path), True
    env = os.environ if environ is None else environ
    from_env = env.get(ENV_VAR, "")
    if from_env:
        return Path(from_env), True
    return DEFAULT_PATH, False


#: A config is a few kilobytes; anything past this is not one (/dev/zero, a log file).
MAX_CONFIG_BYTES = 1 << 20


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Opened non-blocking, so a FIFO cannot hang the caller, and checked with fstat
    on the descriptor read (no window between check and read). Raises OSError
    (FileNotFoundError, IsADirectoryError, ...) or ValueError with the reason.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a device, FIFO or socket)")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, larger than the {limit} a config may be")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew since fstat
        raise ValueError(f"larger than the {limit} bytes a config may be")
    return data


def _read(path: Path, explicit: bool) -> dict[str, Any] | None:
    source = str(path)
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        if not explicit:
            return None
        raise ConfigError(source, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a config file") from None
    except ValueError as exc:
        raise ConfigError(source, "", str(exc)) from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {one_line(exc)}") from None
    except RecursionError:  # tomllib recurses once per nesting level
        raise ConfigError(source, "", "not valid TOML: nested too deeply") from None


def parse_config(raw: Mapping[str, Any], source: str = "(defaults)",
                 known_probes: Iterable[str] | None = None) -> Config:
    """Check a decoded TOML document and build the Config."""
    if known_probes is None:
        from ai_bottleneck.discovery import available_names

        known_probes = available_names()
    known = tuple(sorted(known_probes))
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(source, unknown[0],
                          f"unknown key (known keys: {', '.join(_SECTIONS)})")
    for name in _SECTIONS:
        if name in raw and not isinstance(raw[name], Mapping):
            raise ConfigError(source, name, f"expected a table ([{name}]), got {raw[name]!r}")
    try:
        agent = parse_options(AgentOptions, raw.get("agent"), prefix="agent")
        thresholds = parse_options(Thresholds, raw.get("thresholds"), prefix="thresholds")
        budget = parse_options(BudgetOptions, raw.get("budget"), prefix="budget")
        endpoint = parse_options(EndpointOptions, raw.get("endpoint"), prefix="endpoint")
        links = dict(raw.get("links", {}))
        parse_options(Links, links, prefix="links")
    except OptionError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None
    probes = _parse_probes(raw.get("probes", {}), source, known)
    try:
        service = fold_service(raw.get("service"), probes.get("service", ProbeSettings()).options)
    except OptionError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None
    if service is not None and "service" not in known:
        raise ConfigError(source, "service", "the service probe is not installed")
    if service is not None:
        probes["service"] = ProbeSettings(probes.get("service", ProbeSettings()).enabled, service)
    if links and "links" in probes.get("nic", ProbeSettings()).options:
        raise ConfigError(source, "probes.nic.links", "declare link rates in [links] only")
    return Config(source=source, agent=agent, thresholds=thresholds, budget=budget,
                  endpoint=endpoint, probes=probes, known_probes=known, links=links)


def _parse_probes(table: Mapping[str, Any], source: str,
                  known: tuple[str, ...]) -> dict[str, ProbeSettings]:
    probes: dict[str, ProbeSettings] = {}
    for name, options in table.items():
        key = f"probes.{name}"
        if name not in known:
            raise ConfigError(source, key, f"unknown probe (known probes: "
                                           f"{', '.join(known) or 'none installed'})")
        if not isinstance(options, Mapping):
            raise ConfigError(source, key, f"expected a table ([{key}]), got {options!r}")
        own = dict(options)
        enabled = own.pop("enabled", None)
        if enabled is not None and not isinstance(enabled, bool):
            raise ConfigError(source, f"{key}.enabled", f"expected true or false, got {enabled!r}")
        probes[name] = ProbeSettings(enabled=enabled, options=own)
    return probes


def load_config(path: Path | str | None = None, *, environ: Mapping[str, str] | None = None,
                known_probes: Iterable[str] | None = None) -> Config:
    """Read and check the config; raise ConfigError (one line) for anything wrong.

    ``path`` is the ``--config`` flag (None when not given). ``known_probes``
    defaults to the probes installed (entry-point group ``ai_bottleneck.probes``).
    Probe options are checked by each probe's factory when the agent builds
    it; turn its OptionError into a ConfigError with ``Config.error``.
    """
    resolved, explicit = resolve_path(path, environ)
    raw = _read(resolved, explicit)
    if raw is None:
        return parse_config({}, source=f"{resolved} (absent: defaults)",
                            known_probes=known_probes)
    return parse_config(raw, source=str(resolved), known_probes=known_probes)
