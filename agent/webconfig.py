"""TLS and basic auth for the endpoint, from a Prometheus exporter web config file.

Prometheus users configure every exporter's TLS and basic auth with the same
YAML file (``--web.config.file``, the exporter toolkit's format), so the agent
reads that format rather than inventing one. Supported::

    tls_server_config:     cert_file/key_file (or inline cert/key), client_ca_file
                           (or inline client_ca), client_auth_type,
                           client_allowed_sans, min_version, max_version,
                           prefer_server_cipher_suites
    http_server_config:    headers (the five the format names), http2 (accepted;
                           the agent speaks HTTP/1.1 only)
    basic_auth_users:      user: bcrypt hash
    rate_limit:            interval, burst

Relative paths are relative to the web config file's folder, as in the
toolkit. Keys the format has but this agent cannot honour with Python's ssl
module (cipher_suites, curve_preferences, the two client_auth_type values
that take a client certificate without checking it, TLS 1.0/1.1) are refused
with a one-line error rather than ignored: a security setting that silently
does nothing is worse than none.

webguard.py applies the loaded file to each request (basic auth, rate limit)
and reloads it when it changes.

PyYAML is imported only when a file is read: an agent without a web config
does not carry it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ai_bottleneck.probes.options import OptionError, option_info, parse_options
from ai_bottleneck.probes.sample import one_line

if TYPE_CHECKING:  # ssl (and with it OpenSSL, 4 MB) is loaded only for TLS
    import ssl

log = logging.getLogger(__name__)

ClientAuth = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
# The versions served, oldest first, as ssl.TLSVersion's member names.
_TLS_VERSIONS = {"TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}
_TLS_ORDER = tuple(_TLS_VERSIONS)
_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
            "X-XSS-Protection", "Strict-Transport-Security")
_BCRYPT = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")


class WebConfigError(ValueError):
    """A bad web config. ``str()`` is one line: ``FILE: KEY: problem``."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, one_line(problem, limit=500)
        super().__init__(": ".join(p for p in (source, key, self.problem) if p))


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str = ""
    key_file: str = ""
    cert: str = ""
    key: str = ""
    client_ca_file: str = ""
    client_ca: str = ""
    client_auth_type: ClientAuth = "NoClientCert"
    client_allowed_sans: list[str] = field(default_factory=list)
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: list[str] = field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for inline, path in (("cert", "cert_file"), ("key", "key_file")):
            if getattr(self, inline) and getattr(self, path):
                raise ValueError(f"{path}: give {path} or {inline}, not both")
            if not getattr(self, inline) and not getattr(self, path):
                raise ValueError(f"{path}: required (or an inline {inline})")
        if self.client_ca and self.client_ca_file:
            raise ValueError("client_ca_file: give client_ca_file or client_ca, not both")
        if self.client_auth_type in ("RequestClientCert", "RequireAnyClientCert"):
            raise ValueError(f"client_auth_type: {self.client_auth_type} (a client certificate "
                             "taken without checking it) is not supported; use "
                             "RequireAndVerifyClientCert")
        verifies = self.client_auth_type in ("VerifyClientCertIfGiven",
                                             "RequireAndVerifyClientCert")
        if verifies and not (self.client_ca or self.client_ca_file):
            raise ValueError(f"client_ca_file: required with client_auth_type "
                             f"{self.client_auth_type}")
        if self.client_allowed_sans and self.client_auth_type != "RequireAndVerifyClientCert":
            raise ValueError("client_allowed_sans: needs client_auth_type "
                             "RequireAndVerifyClientCert")
        for name in ("min_version", "max_version"):
            if getattr(self, name) not in _TLS_VERSIONS:
                raise ValueError(f"{name}: {getattr(self, name)} is not supported (TLS 1.0 and "
                                 "1.1 are deprecated); use TLS12 or TLS13")
        if _TLS_ORDER.index(self.min_version) > _TLS_ORDER.index(self.max_version):
            raise ValueError("min_version: higher than max_version")
        if self.cipher_suites:
            raise ValueError("cipher_suites: not supported by this agent (it uses OpenSSL's "
                             "defaults); remove the key")
        if self.curve_preferences:
            raise ValueError("curve_preferences: not supported by this agent (it uses "
                             "OpenSSL's defaults); remove the key")


@dataclass(frozen=True)
class HTTPServerConfig:
    http2: bool = True
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.headers.items():
            if name not in _HEADERS:
                raise ValueError(f"headers.{name}: not one of the headers the format allows "
                                 f"({', '.join(_HEADERS)})")
            if name == "X-Frame-Options" and value.lower() not in ("deny", "sameorigin", ""):
                raise ValueError(f"headers.{name}: must be deny or sameorigin")
            if name == "X-Content-Type-Options" and value.lower() not in ("nosniff", ""):
                raise ValueError(f"headers.{name}: must be nosniff")


@dataclass(frozen=True)
class RateLimitConfig:
    interval: float = field(default=0.0, metadata=option_info(
        min=0, doc="time between two requests; 0 turns the limit off"))
    burst: int = field(default=0, metadata=option_info(min=0, doc="requests allowed at once"))


@dataclass(frozen=True)
class WebConfigFile:
    """The file as written (checked, paths not yet resolved)."""

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig | None = None
    basic_auth_users: dict[str, str] = field(default_factory=dict)
    rate_limit: RateLimitConfig | None = None

    def __post_init__(self) -> None:
        for user, hashed in self.basic_auth_users.items():
            if not _BCRYPT.match(hashed):
                raise ValueError(f"basic_auth_users.{user}: not a bcrypt hash (expected "
                                 "$2y$10$... as written by htpasswd -nBC 10)")
            if ":" in user:
                raise ValueError(f"basic_auth_users.{user}: a user name cannot hold ':'")


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config, ready to serve with. The empty one is plain HTTP, no auth."""

    source: str = ""
    ssl_context: ssl.SSLContext | None = None
    allowed_sans: frozenset[str] = frozenset()
    users: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    rate_limit: RateLimitConfig | None = None
    #: Files whose change means "load again": the config and the files it names.
    files: tuple[Path, ...] = ()

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None


def _resolve(base: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base / path


def _ssl_context(tls: TLSServerConfig, base: Path, source: str) -> ssl.SSLContext:
    import ssl
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion[_TLS_VERSIONS[tls.min_version]]
    ctx.maximum_version = ssl.TLSVersion[_TLS_VERSIONS[tls.max_version]]
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    key_name = "tls_server_config.cert_file" if tls.cert_file else "tls_server_config.cert"
    try:
        if tls.cert or tls.key:
            # ssl loads a certificate chain from files only: inline PEM goes through a
            # private temporary folder that is removed at once.
            with tempfile.TemporaryDirectory(prefix="ai-bottleneck-tls-") as tmp:
                cert = Path(tmp, "cert.pem") if tls.cert else _resolve(base, tls.cert_file)
                key = Path(tmp, "key.pem") if tls.key else _resolve(base, tls.key_file)
                if tls.cert:
                    cert.write_text(tls.cert)
                if tls.key:
                    key.touch(mode=0o600)
                    key.write_text(tls.key)
                ctx.load_cert_chain(cert, key)
        else:
            ctx.load_cert_chain(_resolve(base, tls.cert_file), _resolve(base, tls.key_file))
    except FileNotFoundError as exc:
        raise WebConfigError(source, key_name, f"no such file: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise WebConfigError(source, key_name,
                             f"cannot load the certificate and key: {exc}") from None
    if tls.client_auth_type != "NoClientCert":
        try:
            if tls.client_ca:
                ctx.load_verify_locations(cadata=tls.client_ca)
            else:
                ctx.load_verify_locations(cafile=_resolve(base, tls.client_ca_file))
        except FileNotFoundError as exc:
            raise WebConfigError(source, "tls_server_config.client_ca_file",
                                 f"no such file: {exc.filename}") from None
        except (ssl.SSLError, OSError) as exc:
            raise WebConfigError(source, "tls_server_config.client_ca_file",
                                 f"cannot load the CA certificates: {exc}") from None
        ctx.verify_mode = (ssl.CERT_REQUIRED if tls.client_auth_type ==
                           "RequireAndVerifyClientCert" else ssl.CERT_OPTIONAL)
    return ctx


def load_web_config(path: Path | str | None) -> WebConfig:
    """Read and check a web config file; None gives the empty config (plain HTTP).

    Raises WebConfigError (one line) for a missing or malformed file, an
    unknown key, a bad value, or a certificate that does not load.
    """
    if path is None or str(path) == "":
        return WebConfig()
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WebConfigError(source, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(source, "", f"cannot read: {exc}") from None
    import yaml  # type: ignore[import-untyped]  # the format is YAML; types-PyYAML not required

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(source, "", f"not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WebConfigError(source, "", "expected a mapping of keys at the top level")
    try:
        parsed = parse_options(WebConfigFile, raw)
    except OptionError as exc:
        raise WebConfigError(source, exc.key, exc.problem) from None
    base = path.parent
    tls = parsed.tls_server_config
    ctx = _ssl_context(tls, base, source) if tls is not None else None
    files = [path]
    if tls is not None:
        files += [_resolve(base, p) for p in (tls.cert_file, tls.key_file, tls.client_ca_file)
                  if p]
    http = parsed.http_server_config
    headers = {k: v for k, v in (http.headers if http else {}).items() if v}
    return WebConfig(source=source, ssl_context=ctx,
                     allowed_sans=frozenset(tls.client_allowed_sans if tls else ()),
                     users=dict(parsed.basic_auth_users), headers=headers,
                     rate_limit=parsed.rate_limit, files=tuple(files))
