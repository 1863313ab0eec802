"""Keep credentials in URLs out of labels, errors and logs.

A URL given to a probe may carry a password (``https://user:pass@host/``) or a
key in its query (``?api_key=...``, a presigned S3 URL's ``X-Amz-Signature``).
Labels are served on /metrics (unauthenticated by default) and error texts go
into recordings and the log, so the probes redact where a URL enters them:
the user information is replaced as a whole, and so is the value of every
query (or fragment) parameter whose name matches one of the secret patterns
(shell-style, case-insensitive). Redacting a harmless parameter costs a label
readers can still tell apart with ``name``; leaking a key costs much more, so
the defaults err wide.
"""

from __future__ import annotations

import fnmatch
import re
import urllib.parse
from collections.abc import Sequence

MASK = "REDACTED"

DEFAULT_SECRET_PARAMETERS: tuple[str, ...] = (
    "*key", "*key_id", "*token*", "*secret*", "*password*", "passwd", "pwd", "*signature*",
    "sig", "auth", "*credential*", "session*", "x-amz-*", "x-goog-*",
)

_USERINFO = re.compile(r"(//)[^/?#\s@'\"<>]*@")


def _secret(name: str, patterns: Sequence[str]) -> bool:
    key = urllib.parse.unquote_plus(name).casefold()
    return any(fnmatch.fnmatchcase(key, p.casefold()) for p in patterns)


def _redact_pairs(text: str, patterns: Sequence[str]) -> str:
    if "=" not in text:
        return text
    out = []
    for part in text.split("&"):
        name, eq, _value = part.partition("=")
        out.append(f"{name}={MASK}" if eq and _secret(name, patterns) else part)
    return "&".join(out)


def redact_url(url: str, patterns: Sequence[str] = DEFAULT_SECRET_PARAMETERS) -> str:
    """``url`` without its user information and secret parameter values."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not even parseable: the patterns alone
        return _redact_loose(url, patterns)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    _redact_pairs(parts.query, patterns),
                                    _redact_pairs(parts.fragment, patterns)))


def _redact_loose(text: str, patterns: Sequence[str]) -> str:
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    return re.sub(r"([?&#])([^=&#\s'\"<>]+)=([^&#\s'\"<>]*)",
                  lambda m: (f"{m[1]}{m[2]}={MASK}" if _secret(m[2], patterns) else m[0]), text)


def scrub(text: str, url: str, patterns: Sequence[str] = DEFAULT_SECRET_PARAMETERS) -> str:
    """An error text with every occurrence of ``url`` (and of anything URL-like with
    credentials) redacted: library messages sometimes quote the URL they were given."""
    if url and url in text:
        text = text.replace(url, redact_url(url, patterns))
    return _redact_loose(text, patterns)
