"""HTTP/1.1 for the endpoint: request parsing and responses for GET and HEAD.

What the endpoint needs of ``http.server``, written against ``socketserver``
alone. ``http.server`` imports ``http.client``, which imports ``ssl`` and with it
OpenSSL: 4-5 MB of the agent's resident memory whether or not the endpoint serves
TLS (webconfig.py imports ``ssl`` only when a web config asks for it).

The limits are the standard library's: a request line or header line of at most
64 KiB, at most 100 header lines. Requests with a body are not served (no route
takes one): a Content-Length or Transfer-Encoding is answered 400 and the
connection closed, so a body can never be read as the next request.
"""

from __future__ import annotations

import logging
import socketserver
import time
from http import HTTPStatus

log = logging.getLogger("ai_bottleneck.exporter")

MAX_LINE = 65536
MAX_HEADERS = 100
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BadRequest(Exception):
    """A request that cannot be served: answered with ``status`` and closed."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status


def http_date(t: float) -> str:
    """RFC 9110's IMF-fixdate, independent of the locale."""
    g = time.gmtime(t)
    return (f"{_DAYS[g.tm_wday]}, {g.tm_mday:02d} {_MONTHS[g.tm_mon - 1]} {g.tm_year} "
            f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT")


class HTTPHandler(socketserver.StreamRequestHandler):
    """Reads and answers one request of a connection per ``handle_one_request``
    (``close_connection`` then says whether the connection stays open for another;
    the endpoint decides when to call it again). Subclasses implement ``do_GET``
    and ``do_HEAD`` and answer through ``send``. After parsing, ``command``,
    ``path`` (the request target as sent), ``request_version`` and ``headers``
    (lower-case names, the first of repeated ones) describe the request."""

    wbufsize = 0  # unbuffered: send() writes status line, headers and body at once
    server_version = "ai-bottleneck"

    def setup(self) -> None:
        super().setup()
        self.close_connection = True
        self.command = self.path = self.request_version = ""
        self.headers: dict[str, str] = {}

    def handle_one_request(self) -> None:
        self.close_connection = True
        try:
            line = self.rfile.readline(MAX_LINE + 1)
        except OSError:  # timed out or shut by the endpoint's watchdog
            return
        if not line:
            return
        try:
            self._parse(line)
        except BadRequest as exc:
            self.close_connection = True
            if self.answerable():
                self.send(exc.status, f"{exc.status.value} {exc.status.phrase}: {exc}\n"
                          .encode(), {"Connection": "close"})
            return
        except OSError:
            return
        if self.command == "GET":
            self.do_GET()
        elif self.command == "HEAD":
            self.do_HEAD()
        else:
            self.close_connection = True
            self.send(HTTPStatus.NOT_IMPLEMENTED, b"only GET and HEAD are served\n",
                      {"Connection": "close", "Allow": "GET, HEAD"})

    def _parse(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            raise BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
        words = line.decode("iso-8859-1").rstrip("\r\n").split()
        if len(words) != 3:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "not METHOD TARGET HTTP/x.y")
        self.command, self.path, self.request_version = words
        version = _version(self.request_version)
        if version >= (2, 0):
            raise BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.x only")
        self.headers = self._read_headers()
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if version >= (1, 1):
            self.close_connection = "close" in tokens
        else:
            self.close_connection = "keep-alive" not in tokens
        if "transfer-encoding" in self.headers or \
                self.headers.get("content-length", "0").strip() not in ("", "0"):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "a request body is not accepted")

    def _read_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header line too long")
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise OSError("connection closed inside the headers")
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not colon or not name or name != name.strip():
                raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
            headers.setdefault(name.lower(), value.strip())
        raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")

    def send(self, status: HTTPStatus | int, body: bytes, headers: dict[str, str], *,
             head: bool = False, content_type: str = "text/plain; charset=utf-8") -> None:
        """One write: status line, Server, Date, Content-Type, Content-Length, the
        given headers and (unless ``head``) the body."""
        status = HTTPStatus(status)
        lines = [f"HTTP/1.1 {status.value} {status.phrase}",
                 f"Server: {self.server_version}", f"Date: {http_date(time.time())}",
                 f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        self.wfile.write(data if head else data + body)
        if log.isEnabledFor(logging.DEBUG):  # every request: format only if kept
            log.debug("%s %r %d %d", self.client_address[0],
                      f"{self.command} {self.path} {self.request_version}", status.value, len(body))

    def answerable(self) -> bool:
        """Whether a bad request still gets its answer; False for a connection the
        server has cut off (its partial request is what the cut left)."""
        return True

    def do_GET(self) -> None:
        raise NotImplementedError

    def do_HEAD(self) -> None:
        raise NotImplementedError


def accepts_gzip(header: str) -> bool:
    """Whether Accept-Encoding takes gzip (or *) with a weight above zero."""
    for item in header.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _version(text: str) -> tuple[int, int]:
    name, _, number = text.partition("/")
    major, dot, minor = number.partition(".")
    if name != "HTTP" or not dot or not all(
            part.isascii() and part.isdigit() and len(part) <= 3 for part in (major, minor)):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad HTTP version {text[:20]!r}")
    version = int(major), int(minor)
    if version < (1, 0):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "HTTP/1.x only")
    return version
