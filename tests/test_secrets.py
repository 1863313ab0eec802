"""Secrets never leave: URL credentials and secret query parameters are redacted
where they enter (labels, errors, logs, recordings), and recordings are created,
never written over.

The agent and `diagnose` run as the installed command against real HTTP servers
on loopback; what a secret could reach (/metrics, the log at -vv, the recording,
the report) is read back and searched for it.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_bottleneck.probes.download import create as create_download
from ai_bottleneck.probes.http import create as create_http
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.redact import redact_url, scrub
from tests import clitool
from tests.servers import HttpServer, ServerConfig
from tests.test_daemon import (
    FAST,
    QUIET,
    Daemon,
    entry_point,
    env_for,
    nvml_state,  # noqa: F401 (a fixture)
    scrape,
    scrape_until,
)

SECRETS = ("s3cr3tpass", "K3YVALUE", "SIGVALUE", "T0KEN")


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:s3cr3tpass@h:8080/p?api_key=K3YVALUE&x=1",
     "http://REDACTED@h:8080/p?api_key=REDACTED&x=1"),
    ("https://b.s3.amazonaws.com/o?X-Amz-Credential=AK&X-Amz-Signature=SIGVALUE&v=2",
     "https://b.s3.amazonaws.com/o?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&v=2"),
    ("http://T0KEN@git.test/r", "http://REDACTED@git.test/r"),
    ("http://h/cb#access_token=T0KEN&state=1", "http://h/cb#access_token=REDACTED&state=1"),
    ("http://h/?Token=T0KEN&SIG=SIGVALUE&page=3", "http://h/?Token=REDACTED&SIG=REDACTED&page=3"),
    ("http://h/plain?page=3", "http://h/plain?page=3"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(url, ["*"]).count("REDACTED") >= shown.count("REDACTED")


def test_scrub_finds_urls_inside_library_messages() -> None:
    url = "http://u:s3cr3tpass@h/?key=K3YVALUE"
    text = scrub(f"Invalid port in '{url}' and http://a:T0KEN@c/d?token=T0KEN", url)
    assert not any(s in text for s in SECRETS)
    assert "'http://REDACTED@h/?key=REDACTED'" in text


def test_a_bad_url_is_refused_without_echoing_its_secret() -> None:
    with pytest.raises(OptionError) as info:
        create_http({"targets": [{"url": "ftp://u:s3cr3tpass@h/?key=K3YVALUE"}]})
    assert not any(s in str(info.value) for s in SECRETS)
    with pytest.raises(OptionError) as info:
        create_download({"url": "http://u:s3cr3tpass@h:port/?key=K3YVALUE"})
    assert not any(s in str(info.value) for s in SECRETS), str(info.value)


def test_probe_labels_and_errors_are_redacted_and_name_wins() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: every call fails
    url = f"http://u:s3cr3tpass@127.0.0.1:{port}/v1?api_key=K3YVALUE"
    http = create_http({"targets": [{"url": url, "timeout_seconds": 2}]})
    download = create_download({"url": url, "max_seconds": 2})
    named = create_download({"url": url, "name": "weights", "max_seconds": 2})
    try:
        samples = [*http.sample(), *download.sample(), *named.sample()]
    finally:
        for probe in (http, download, named):
            probe.close()
    assert [s.ok for s in samples] == [False, False, False]
    text = json.dumps([s.to_json() for s in samples])
    assert not any(s in text for s in SECRETS), text
    assert samples[0].labels["target"] == (f"http://REDACTED@127.0.0.1:{port}/v1"
                                           f"?api_key=REDACTED")
    assert samples[2].labels == {"url": "weights"}
    assert "REDACTED" in download.check().reason


@pytest.fixture
def servers() -> Iterator[tuple[HttpServer, HttpServer]]:
    with HttpServer(ServerConfig("delay")) as ok, \
            HttpServer(ServerConfig("stream", body_bytes=200_000)) as files:
        yield ok, files


def _secret_urls(ok: HttpServer, files: HttpServer) -> tuple[str, str, str]:
    def with_credentials(url: str) -> str:
        return url.replace("http://", "http://user:s3cr3tpass@")
    good = with_credentials(ok.url("/v1/run?api_key=K3YVALUE&model=x"))
    failing = with_credentials(ok.url("/v1/run?status=503&token=T0KEN"))
    download = files.url("/w.bin?X-Amz-Signature=SIGVALUE&X-Amz-Expires=60")
    return good, failing, download


def test_the_agent_keeps_secrets_out_of_metrics_log_and_recording(
        nvml_state: Path, tmp_path: Path,  # noqa: F811
        servers: tuple[HttpServer, HttpServer]) -> None:
    good, failing, download = _secret_urls(*servers)
    record = tmp_path / "agent.jsonl"
    config = (FAST + f'record_file = "{record}"\n' + QUIET
              + f'[probes.http]\ninterval_seconds = 0.5\ntargets = [{{ url = "{good}" }}, '
                f'{{ url = "{failing}", expect_status = 200 }}]\n'
              + f'[probes.download]\nurl = "{download}"\ninterval_seconds = 1\n'
                f'max_bytes = "100kB"\nwarmup_seconds = 0\n'
              + '[budget]\nbusy_nic_ratio = 1.0\n')
    path = tmp_path / "agent.toml"
    path.write_text(config)
    daemon = _VerboseDaemon(["--config", str(path), "--listen", "127.0.0.1:0"],
                            env_for(nvml_state), tmp_path / "agent.log")
    try:
        _check_agent(daemon, record)
    finally:
        daemon.close()


class _VerboseDaemon(Daemon):
    """`ai-bottleneck -vv run ...`: the log at DEBUG, where the most would leak."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([entry_point(), "-vv", "run", *args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log)
        self._port = None


def _check_agent(daemon: Daemon, record: Path) -> None:
    conn = daemon.connect()
    try:
        families = scrape_until(
            conn, lambda f: len(f.get("ai_bottleneck_target_up", {})) >= 3,
            "both http targets and the download")
        body = scrape(conn)[1]
    finally:
        conn.close()
    assert daemon.stop() == 0
    labels = {dict(k).get("target") for k in families["ai_bottleneck_target_up"]}
    assert any("api_key=REDACTED" in str(x) for x in labels), labels
    assert any("X-Amz-Signature=REDACTED" in str(x) for x in labels), labels
    log = daemon.log()
    recorded = record.read_text()
    assert "status 503 from http://REDACTED@" in recorded
    for where, text in (("/metrics", body), ("log", log), ("recording", recorded)):
        assert not any(s in text for s in SECRETS), f"a secret in the {where}"
    assert "HTTP Request:" not in log  # httpx's own lines stay off, even at -vv
    assert "Traceback" not in log


def test_diagnose_keeps_secrets_out_of_report_and_recording(
        tmp_path: Path, servers: tuple[HttpServer, HttpServer]) -> None:
    good, failing, _download = _secret_urls(*servers)
    config = tmp_path / "config.toml"
    config.write_text("[agent]\ninterval_seconds = 0.25\n[probes.oom]\nenabled = false\n")
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(config)})
    record = tmp_path / "run.jsonl"
    record.write_text("an earlier run\n")
    proc = clitool.run(["-vv", "diagnose", "--duration", "2s", "--window", "1s", "--url", good,
                        "--url", failing, "--record", str(record)], env, tmp_path)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    # The earlier recording is kept; this one went beside it, mode 0640.
    assert record.read_text() == "an earlier run\n"
    written = [p for p in tmp_path.glob("run-*.jsonl")]
    # The report wraps to the terminal width, long words included: looked at with the
    # line breaks and spaces out, so no wrapped path or secret hides.
    report = "".join(proc.stdout.split())
    assert len(written) == 1 and f"rawsamplesrecordedto{written[0]}" in report
    assert stat.S_IMODE(written[0].stat().st_mode) == 0o640
    recorded = written[0].read_text()
    assert "api_key=REDACTED" in recorded
    for where, text in (("report", proc.stdout), ("report", report),
                        ("stderr", proc.stderr), ("recording", recorded)):
        assert not any(s in text for s in SECRETS), f"a secret in the {where}: {text}"
