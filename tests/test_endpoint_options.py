"""The `[endpoint]` table: the endpoint's limits as config keys, checked at the edge,
with the defaults the endpoint always had, in force in a real `ai-bottleneck run`."""

from __future__ import annotations

import dataclasses
import inspect
import socket
import time
from pathlib import Path

import pytest

from ai_bottleneck.config import Config
from ai_bottleneck.daemon import Agent
from ai_bottleneck.endpoint import MetricsServer
from ai_bottleneck.endpoint_options import EndpointOptions, markdown_table
from tests.clitool import assert_one_line_error, clean_env, run
from tests.test_config import error_of, load, write
from tests.test_daemon import FAST, QUIET, Daemon, env_for, nvml_state  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_endpoints_own(tmp_path: Path) -> None:
    defaults = inspect.signature(MetricsServer).parameters
    for name, value in EndpointOptions().server_kwargs().items():
        assert defaults[name].default == value, name
    assert load(write(tmp_path, "")).endpoint == EndpointOptions()
    assert Config().endpoint == EndpointOptions()


def test_the_table_is_read(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[endpoint]\nmax_connections = 64\n"
                                  "max_connections_per_client = 8\n"
                                  "request_timeout_seconds = 2.5\n"
                                  "failed_login_wait_max_seconds = 30\n"))
    assert config.endpoint == EndpointOptions(max_connections=64, max_connections_per_client=8,
                                              request_timeout_seconds=2.5,
                                              failed_login_wait_max_seconds=30)


def test_the_live_page_keeps_the_configured_history(tmp_path: Path,
                                                    nvml_state: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key, val in env_for(nvml_state).items():
        monkeypatch.setenv(key, val)
    default = write(tmp_path, "", "default.toml")
    short = write(tmp_path, "[endpoint]\npage_history_seconds = 600\n", "short.toml")
    assert Agent(default).page.history_seconds == 3600
    assert Agent(short).page.history_seconds == 600


@pytest.mark.parametrize(("text", "key"), [
    ("request_timeout_seconds = nan", "endpoint.request_timeout_seconds"),
    ("idle_timeout_seconds = inf", "endpoint.idle_timeout_seconds"),
    ("max_connections = 0", "endpoint.max_connections"),
    ("max_connections = 1e9", "endpoint.max_connections"),
    ("max_connections = \"many\"", "endpoint.max_connections"),
    ("handshake_timeout_seconds = -1", "endpoint.handshake_timeout_seconds"),
    ("failed_logins_free = 2.5", "endpoint.failed_logins_free"),
    ("max_connections = 16\nmax_connections_per_client = 32", "max_connections_per_client"),
    ("failed_login_wait_seconds = 10\nfailed_login_wait_max_seconds = 5",
     "failed_login_wait_max_seconds"),
    ("max_conections = 16", "endpoint.max_conections"),
    ("page_history_seconds = 10", "endpoint.page_history_seconds"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    message = error_of(write(tmp_path, f"[endpoint]\n{text}\n"))
    assert key in message, message


def test_check_config_takes_the_table(tmp_path: Path) -> None:
    good = write(tmp_path, "[endpoint]\nmax_connections_per_client = 64\n", "good.toml")
    bad = write(tmp_path, "[endpoint]\nrequest_timeout_seconds = nan\n", "bad.toml")
    ok = run(["check-config", str(good)], clean_env(tmp_path), tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert_one_line_error(run(["check-config", str(bad)], clean_env(tmp_path),
                              tmp_path), "endpoint.request_timeout_seconds")


def test_docs_table_is_generated_from_the_options() -> None:
    text = (REPO / "docs" / "endpoint.md").read_text(encoding="utf-8")
    begin, end = "<!-- BEGIN ENDPOINT TABLE -->\n", "<!-- END ENDPOINT TABLE -->"
    assert text.split(begin, 1)[1].split(end, 1)[0] == markdown_table(), \
        "regenerate: python -m ai_bottleneck.endpoint_options"
    for f in dataclasses.fields(EndpointOptions):
        assert f"`{f.name}`" in text


def _connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind(("127.0.0.2", 0))
    sock.connect(("127.0.0.1", port))
    return sock


def test_the_running_agent_applies_the_limits(tmp_path: Path,
                                              nvml_state: Path) -> None:  # noqa: F811
    config = write(tmp_path, FAST + 'listen = "127.0.0.1:0"\n' + QUIET +
                   "[endpoint]\nmax_connections_per_client = 4\n"
                   "request_timeout_seconds = 1\n")
    daemon = Daemon(["--config", str(config)], env_for(nvml_state), tmp_path / "agent.log")
    socks: list[socket.socket] = []
    try:
        socks = [_connect(daemon.port) for _ in range(4)]
        time.sleep(0.5)  # all four admitted
        socks.append(_connect(daemon.port))  # the fifth from that address...
        assert socks[0].recv(1) == b""  # ...closes its oldest idle one
        # A request begun and never finished: closed after 1 s, not the default 10.
        slow = socks[1]
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert slow.recv(1) == b""
        assert time.monotonic() - started < 8
        assert daemon.stop() == 0
    finally:
        for s in socks:
            s.close()
        daemon.close()
