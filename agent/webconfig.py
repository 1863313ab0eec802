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

Passwords are checked with bcrypt, slow by design; a successful (user,
password) pair is remembered by its SHA-256 so a scrape every few seconds
does not pay for bcrypt each time (the toolkit caches the same way).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml  # type: ignore[import-untyped]  # the format is YAML; types-PyYAML not required

from ai_bottleneck.endpoint_guard import ClientBuckets, TokenBucket
from ai_bottleneck.options import OptionError, bounds, parse_options
from ai_bottleneck.samples import one_line

log = logging.getLogger(__name__)

__all__ = ["BasicAuth", "TokenBucket", "WebConfig", "WebConfigError", "WebGuard",
           "load_web_config", "peer_sans"]

ClientAuth = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
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
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
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
    interval: float = field(default=0.0, metadata=bounds(
        min=0, doc="time between two requests; 0 turns the limit off"))
    burst: int = field(default=0, metadata=bounds(min=0, doc="requests allowed at once"))


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
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
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


def peer_sans(cert: Mapping[str, Any] | None) -> set[str]:
    """The subjectAltName values of a verified peer certificate (DNS, IP, email, URI)."""
    if not cert:
        return set()
    return {str(value) for _kind, value in cert.get("subjectAltName", ())}


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, with a cache."""

    _CACHE_LIMIT = 1024
    _dummy_hash: bytes | None = None
    _dummy_lock = threading.Lock()

    def __init__(self, users: Mapping[str, str],
                 checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw):
        self._users = {u: h.encode() for u, h in users.items()}
        self._checkpw = checkpw
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> str | None:
        """The user name when the header holds good credentials, else None."""
        credentials = _decode_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        hashed = self._users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(),
                                         hashed or b""))).digest()
        if hashed is not None:
            with self._lock:
                if key in self._ok:
                    return user
        # An unknown user costs one bcrypt too, so timing does not tell which users exist.
        try:
            ok = self._checkpw(password.encode(), hashed or self._dummy())
        except ValueError as exc:  # bcrypt >= 4.1 refuses passwords over 72 bytes
            log.warning("basic auth for user %r refused: %s", user[:64], exc)
            return None
        if not ok or hashed is None:
            return None
        with self._lock:
            if len(self._ok) >= self._CACHE_LIMIT:
                self._ok.clear()
            self._ok.add(key)
        return user

    @classmethod
    def _dummy(cls) -> bytes:
        with cls._dummy_lock:
            if cls._dummy_hash is None:
                cls._dummy_hash = bcrypt.hashpw(b"unknown user", bcrypt.gensalt(10))
            return cls._dummy_hash


def _decode_basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


@dataclass
class _Loaded:
    config: WebConfig
    auth: BasicAuth
    limiter: ClientBuckets | None  # per client, applied after authentication
    stamp: tuple[tuple[int, int], ...]
    error: str | None = None


def _stamp(files: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


class WebGuard:
    """The web config in force, reloaded when the file or a file it names changes.

    Like the toolkit, a config that breaks after start fails closed: requests
    are answered 500 until it is fixed, and the error is logged. Files are
    looked at no more than once per ``check_every`` seconds.
    """

    def __init__(self, path: Path | str | None, *, check_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._path = Path(path) if path is not None and str(path) != "" else None
        self._check_every, self._clock = check_every, clock
        self._lock = threading.Lock()
        config = load_web_config(self._path)  # a bad file at start is the caller's error
        self._loaded = self._make(config)
        self._checked = clock()

    @staticmethod
    def _make(config: WebConfig, error: str | None = None) -> _Loaded:
        rl = config.rate_limit
        limiter = ClientBuckets(rl.interval, rl.burst) if rl and rl.interval > 0 else None
        return _Loaded(config, BasicAuth(config.users), limiter, _stamp(config.files), error)

    def current(self) -> _Loaded:
        """The config in force (reloading first if its files changed)."""
        if self._path is None:
            return self._loaded
        now = self._clock()
        if now - self._checked < self._check_every:
            return self._loaded
        with self._lock:
            if now - self._checked < self._check_every:
                return self._loaded
            self._checked = now
            loaded = self._loaded
            if _stamp(loaded.config.files) == loaded.stamp:
                return loaded
            try:
                self._loaded = self._make(load_web_config(self._path))
                log.info("web config %s reloaded", self._path)
            except WebConfigError as exc:
                log.error("web config no longer valid, refusing requests: %s", exc)
                broken = WebConfig(source=str(self._path), files=loaded.config.files,
                                   ssl_context=loaded.config.ssl_context)
                self._loaded = self._make(broken, error=str(exc))
            return self._loaded
