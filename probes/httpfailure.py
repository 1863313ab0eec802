"""One line saying why an HTTP call failed: what, in which phase, against which
host. Shared by the ``http`` and ``download`` probes.
"""

from __future__ import annotations

import ssl

import httpcore
import httpx

from ai_bottleneck.probes.calltimer import CallTimer
from ai_bottleneck.probes.vocabulary import HttpPhase


def _root_cause(exc: BaseException) -> BaseException:
    """The OS or TLS error under httpcore's wrappers (httpcore wraps the original as
    its first argument; the ``from`` link is not always kept)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if inner is None or id(inner) in seen:
            return exc
        exc = inner
        seen.add(id(exc))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_failure(exc: BaseException, timer: CallTimer, where: str,
                     timeout: float) -> str:
    """One line: what failed, in which phase, against ``where`` (host:port)."""
    if timer.failure is not None:
        return timer.failure
    cause = _root_cause(exc)
    timed_out = isinstance(exc, httpcore.TimeoutException | httpx.TimeoutException |
                           TimeoutError) or isinstance(cause, TimeoutError)
    phase = timer.phase
    if timed_out:
        doings: dict[HttpPhase | str, str] = {
            HttpPhase.CONNECT: f"connecting to {where}",
            HttpPhase.DNS: f"resolving {where}",
            HttpPhase.TLS: f"in the TLS handshake with {where}",
            HttpPhase.UPLOAD: "sending the request",
            HttpPhase.SERVER: "waiting for the response (no byte of it yet)",
            HttpPhase.DOWNLOAD: f"reading the response ({timer.response_bytes} bytes so far)",
        }
        return f"timed out after {timeout:g}s {doings.get(phase, f'calling {where}')}"
    reason = _reason(cause)
    if phase == HttpPhase.CONNECT:
        return f"cannot connect to {where}: {reason}"
    if phase == HttpPhase.TLS:
        return f"TLS handshake with {where} failed: {reason}"
    if phase in (HttpPhase.UPLOAD, HttpPhase.SERVER):
        return f"no response from {where}: {reason}"
    if phase == HttpPhase.DOWNLOAD:
        return f"response from {where} cut short: {reason}"
    return f"call to {where} failed: {reason}"
