"""Exporter web config: parsing, one-line errors, and real TLS / basic auth on the endpoint."""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from ai_bottleneck.endpoint import MetricsServer
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.state import AgentState
from ai_bottleneck.webconfig import WebConfigError, load_web_config
from ai_bottleneck.webguard import BasicAuth, TokenBucket
from tests.tlsfiles import Pki, make_pki

PASSWORD = "correct horse battery staple"


def hashed(password: str) -> str:
    # Cost 4 keeps tests fast; "$2y$" is what `htpasswd -nBC 10` writes.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write(tmp_path: Path, text: str, name: str = "web-config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    return text


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


# -- parsing -------------------------------------------------------------------------------


def test_no_file_and_empty_file_mean_plain_http_without_auth(tmp_path: Path) -> None:
    for config in (load_web_config(None), load_web_config(write(tmp_path, ""))):
        assert not config.tls and not config.users and not config.headers


def test_full_file_with_relative_paths(tmp_path: Path, pki: Pki) -> None:
    path = write(tmp_path, f"""
tls_server_config:
  cert_file: pki/server.crt
  key_file: pki/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: pki/ca.crt
  client_allowed_sans: [prometheus.test]
  min_version: TLS13
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: {hashed(PASSWORD)}
rate_limit:
  interval: 100ms
  burst: 20
""")
    config = load_web_config(path)
    assert config.ssl_context is not None
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert config.allowed_sans == {"prometheus.test"}
    assert set(config.users) == {"prometheus"}
    assert config.headers["X-Frame-Options"] == "deny"
    assert config.rate_limit is not None and config.rate_limit.interval == 0.1
    assert pki.server_cert in config.files and path in config.files


def test_inline_certificate_and_key(tmp_path: Path, pki: Pki) -> None:
    cert = pki.server_cert.read_text().replace("\n", "\n    ")
    key = pki.server_key.read_text().replace("\n", "\n    ")
    config = load_web_config(write(tmp_path, f"""
tls_server_config:
  cert: |
    {cert}
  key: |
    {key}
"""))
    assert config.tls


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("tls_config: {}\n", "tls_config", "unknown key"),
    ("tls_server_config:\n  certfile: x\n", "tls_server_config.certfile", "unknown key"),
    ("basic_auth_users:\n  alice: secret\n", "basic_auth_users.alice", "not a bcrypt hash"),
    ("basic_auth_users: [alice]\n", "basic_auth_users", "expected a table"),
    ("tls_server_config:\n  key_file: k\n", "tls_server_config", "cert_file: required"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Sometimes\n",
     "tls_server_config.client_auth_type", "must be one of"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequestClientCert\n",
     "tls_server_config", "not supported"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n"
     "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config", "client_ca_file: required"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS11\n",
     "tls_server_config", "TLS11 is not supported"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n"
     "  max_version: TLS12\n", "tls_server_config", "higher than max_version"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n"
     "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "tls_server_config", "cipher_suites"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "http_server_config",
     "not one of the headers"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "http_server_config",
     "deny or sameorigin"),
    ("rate_limit:\n  interval: soon\n", "rate_limit.interval", "not a duration"),
    ("rate_limit:\n  burst: -1\n", "rate_limit.burst", "must be >= 0"),
    ("- just\n- a list\n", "", "expected a mapping"),
])
def test_bad_files_give_one_line_naming_the_key(tmp_path: Path, text: str, key: str,
                                                problem: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: {key}: " if key else f"{path}: "), message
    assert problem in message


def test_bad_yaml_missing_file_and_missing_certificate(tmp_path: Path, pki: Pki) -> None:
    assert "not valid YAML" in error_of(write(tmp_path, "a: [unclosed\n"))
    assert error_of(tmp_path / "absent.yml").endswith(": no such file")
    message = error_of(write(tmp_path, "tls_server_config:\n  cert_file: nope.crt\n"
                                       "  key_file: nope.key\n"))
    assert "tls_server_config.cert_file: no such file" in message
    # A key that does not belong to the certificate.
    message = error_of(write(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                                       f"  key_file: {pki.client_key}\n"))
    assert "cannot load the certificate and key" in message


# -- basic auth and rate limit -------------------------------------------------------------


def test_basic_auth_checks_and_caches_successes_only() -> None:
    calls: list[bytes] = []

    def counting_checkpw(password: bytes, hashed_pw: bytes) -> bool:
        calls.append(password)
        return bcrypt.checkpw(password, hashed_pw)

    auth = BasicAuth({"prometheus": hashed(PASSWORD)}, checkpw=counting_checkpw)
    header = basic("prometheus", PASSWORD)["Authorization"]
    assert auth.check(header) == "prometheus"
    assert auth.check(header) == "prometheus"
    assert auth.check(header) == "prometheus"
    assert len(calls) == 1  # bcrypt once; the cache answers the rest
    assert auth.check(basic("prometheus", "wrong")["Authorization"]) is None
    assert auth.check(basic("prometheus", "wrong")["Authorization"]) is None
    assert len(calls) == 3  # failures are never cached
    assert auth.check(basic("mallory", PASSWORD)["Authorization"]) is None
    assert len(calls) == 4  # an unknown user costs a bcrypt too (no timing oracle)
    for bad in (None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon")
                .decode()):
        assert auth.check(bad) is None


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(interval=1.0, burst=2, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(3)] == [True, True, False]
    now[0] = 1.0
    assert [bucket.allow() for _ in range(2)] == [True, False]


# -- the real endpoint ---------------------------------------------------------------------


def populated_state() -> AgentState:
    state = AgentState()
    state.record_samples("host", [Sample(time.time(), "host", {}, {"cpu_utilization_ratio": 0.5})])
    state.record_window("cpu_bound", 0.9, time.time() - 10, time.time())
    return state


def client_context(pki: Pki, with_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    if with_client_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


def request(port: int, path: str = "/metrics", headers: dict[str, str] | None = None,
            ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("localhost", port, timeout=10, context=ctx)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[MetricsServer]:
    path = write(tmp_path, f"""
tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.server_key}
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
basic_auth_users:
  prometheus: {hashed(PASSWORD)}
""")
    with MetricsServer(populated_state(), "127.0.0.1:0", path,
                       web_config_check_seconds=0.0) as server:
        yield server


def test_tls_and_basic_auth_refuse_without_credentials_accept_with(
        tls_server: MetricsServer, pki: Pki) -> None:
    assert tls_server.url.startswith("https://")
    ctx = client_context(pki)
    status, headers, _ = request(tls_server.port, ctx=ctx)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    assert request(tls_server.port, headers=basic("prometheus", "wrong"), ctx=ctx)[0] == 401
    assert request(tls_server.port, headers=basic("mallory", PASSWORD), ctx=ctx)[0] == 401
    status, headers, body = request(tls_server.port, headers=basic("prometheus", PASSWORD),
                                    ctx=ctx)
    assert status == 200 and b"ai_bottleneck_window_label" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    # Liveness needs no credentials and tells nothing.
    assert request(tls_server.port, "/healthz", ctx=ctx)[0::2] == (200, b"ok\n")
    # The landing page is behind auth like the metrics.
    assert request(tls_server.port, "/", ctx=ctx)[0] == 401


def test_plain_http_to_the_tls_port_gets_nothing(tls_server: MetricsServer) -> None:
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        request(tls_server.port, headers=basic("prometheus", PASSWORD))


def test_client_certificates_required_and_checked(tmp_path: Path, pki: Pki) -> None:
    path = write(tmp_path, f"""
tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.server_key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {pki.ca_cert}
  client_allowed_sans: [{pki.client_san}]
""")
    with MetricsServer(populated_state(), "127.0.0.1:0", path) as server:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            request(server.port, ctx=client_context(pki))
        assert request(server.port, ctx=client_context(pki, with_client_cert=True))[0] == 200
    path.write_text(path.read_text().replace(pki.client_san, "someone-else.test"))
    with MetricsServer(populated_state(), "127.0.0.1:0", path) as server, \
            pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        request(server.port, ctx=client_context(pki, with_client_cert=True))


def test_changed_web_config_is_picked_up_and_a_broken_one_fails_closed(
        tmp_path: Path, tls_server: MetricsServer, pki: Pki) -> None:
    ctx = client_context(pki)
    path = tmp_path / "web-config.yml"
    text = path.read_text()
    path.write_text(text + f"  grafana: {hashed('other secret')}\n")
    _bump_mtime(path)
    assert request(tls_server.port, headers=basic("grafana", "other secret"), ctx=ctx)[0] == 200
    path.write_text(text + "  grafana: not-a-hash\n")
    _bump_mtime(path)
    status, _, body = request(tls_server.port, headers=basic("prometheus", PASSWORD), ctx=ctx)
    assert status == 500 and b"web config invalid" in body
    path.write_text(text)
    _bump_mtime(path)
    assert request(tls_server.port, headers=basic("prometheus", PASSWORD), ctx=ctx)[0] == 200


def _bump_mtime(path: Path) -> None:
    # Some filesystems keep coarse timestamps; make each version's mtime distinct.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_rate_limit_answers_429_and_never_limits_healthz(tmp_path: Path) -> None:
    path = write(tmp_path, "rate_limit:\n  interval: 1h\n  burst: 2\n")
    with MetricsServer(populated_state(), "127.0.0.1:0", path) as server:
        statuses = [request(server.port, "/metrics")[0] for _ in range(3)]
        health = [request(server.port, path)[0] for path in ("/healthz", "/-/healthy") * 3]
    assert statuses == [200, 200, 429]
    assert health == [200] * 6


def test_bad_web_config_fails_at_construction(tmp_path: Path) -> None:
    path = write(tmp_path, "basic_auth_users:\n  alice: plain\n")
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.alice: not a bcrypt hash"):
        MetricsServer(AgentState(), "127.0.0.1:0", path)
