"""The endpoint's guard: basic auth and the rate limit of the web config file
(webconfig.py), applied to each request, and the file reloaded when it changes.

Passwords are checked with bcrypt, slow by design; a successful (user,
password) pair is remembered by its SHA-256 so a scrape every few seconds
does not pay for bcrypt each time (the toolkit caches the same way). bcrypt is
imported the first time a password is checked: an agent without basic auth
does not carry it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ai_bottleneck.endpoint_guard import ClientBuckets, TokenBucket
from ai_bottleneck.probes.base import Clock
from ai_bottleneck.webconfig import WebConfig, WebConfigError, load_web_config

__all__ = ["BasicAuth", "ClientBuckets", "TokenBucket", "WebGuard", "peer_sans"]

log = logging.getLogger("ai_bottleneck.webconfig")


def _bcrypt() -> ModuleType:
    import bcrypt

    return bcrypt


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
                 checkpw: Callable[[bytes, bytes], bool] | None = None):
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
        import hashlib  # here: OpenSSL's hashes (4 MB) only for an agent with users

        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(),
                                         hashed or b""))).digest()
        if hashed is not None:
            with self._lock:
                if key in self._ok:
                    return user
        # An unknown user costs one bcrypt too, so timing does not tell which users exist.
        checkpw = self._checkpw or _bcrypt().checkpw
        try:
            ok = checkpw(password.encode(), hashed or self._dummy())
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
                bcrypt = _bcrypt()
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
                 clock: Clock = time.monotonic):
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
