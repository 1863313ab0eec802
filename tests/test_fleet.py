"""`ai-bottleneck fleet`: joining Prometheus' answers per host, sorting by severity,
and the command's contract (table, --json, one-line errors and exit codes).

The end-to-end run against a real Prometheus scraping real agents is
tests/test_fleet_live.py; here the query answers are Prometheus' JSON as data,
and the error cases use real sockets and a real HTTP server that is not
Prometheus.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.fleet import QUERIES, Host, collect, render_table
from tests.clitool import assert_no_traceback, assert_one_line_error, clean_env, run


def vector(*items: tuple[dict[str, str], float]) -> list[dict[str, Any]]:
    return [{"metric": m, "value": [1700000000.0, str(v)]} for m, v in items]


def a(instance: str, **labels: str) -> dict[str, str]:
    return {"job": "ai-bottleneck", "instance": instance, **labels}


ANSWERS: dict[str, list[dict[str, Any]]] = {
    "label": vector((a("g1:19466", node="gpu-node-1", label="gpu_bound"), 1),
                    (a("g2:19466", host="gpu-node-2", label="network_bound"), 1),
                    (a("g3:19466", label="balanced"), 1),
                    (a("g4:19466", label="network_bound"), 1)),
    "confidence": vector((a("g1:19466"), 0.9), (a("g2:19466"), 0.6), (a("g3:19466"), 0.8),
                         (a("g4:19466"), 0.95)),
    "since": vector((a("g1:19466"), 1_699_999_400), (a("g2:19466"), 1_699_999_940)),
    "evidence": vector((a("g2:19466", evidence="eth0 at 97% of 10 Gbit/s"), 1)),
    "probes_down": vector((a("g3:19466", probe="gpu"), 0)),
    "targets_down": vector((a("g3:19466", probe="http", target="http://ocr:8000/"), 0),
                           (a("g2:19466", probe="iperf3", target="10.0.0.9"), 0)),
    "unreachable": vector(({"job": "ai-bottleneck", "instance": "g5:19466"}, 0)),
}


def answer(expr: str) -> list[dict[str, Any]]:
    name = next(n for n, e in QUERIES.items() if e == expr)
    return ANSWERS[name]


def test_hosts_are_joined_named_and_sorted_by_severity() -> None:
    hosts = collect(answer)
    assert [(h.host, h.label) for h in hosts] == [
        ("g5:19466", "unreachable"),
        ("gpu-node-2", "network_bound"),  # probes down first within a label
        ("g4:19466", "network_bound"),
        ("gpu-node-1", "gpu_bound"),
        ("g3:19466", "balanced")]
    by = {h.host: h for h in hosts}
    assert by["gpu-node-2"].evidence == "eth0 at 97% of 10 Gbit/s"
    assert by["gpu-node-2"].probes_down == ["iperf3:10.0.0.9"]
    assert by["g3:19466"].probes_down == ["gpu", "http:http://ocr:8000/"]
    assert by["gpu-node-1"].since == 1_699_999_400 and by["gpu-node-1"].confidence == 0.9
    assert by["g5:19466"].confidence is None


def test_table_has_one_line_per_host_and_a_header() -> None:
    text = render_table(collect(answer), now=1_700_000_000)
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "LABEL", "CONF", "SINCE", "PROBES", "DOWN", "EVIDENCE"]
    assert len(lines) == 6
    assert lines[2].split()[:5] == ["gpu-node-2", "network_bound", "0.60", "60s",
                                    "iperf3:10.0.0.9"]
    assert lines[4].split()[:4] == ["gpu-node-1", "gpu_bound", "0.90", "10m"]
    long = Host(host="h", instance="h", job="j", label="idle", evidence="x" * 500)
    assert len(render_table([long]).splitlines()[1]) < 200  # evidence cut to the terminal


# -- the command ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    mode = "prometheus"

    def do_GET(self) -> None:
        if self.mode == "html":
            body, status, kind = b"<html>not here</html>", 404, "text/html"
        else:
            from urllib.parse import parse_qs, urlsplit
            expr = parse_qs(urlsplit(self.path).query)["query"][0]
            data = {"status": "success", "data": {"resultType": "vector",
                                                  "result": answer(expr)}}
            body, status, kind = json.dumps(data).encode(), 200, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[ThreadingHTTPServer, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def base(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def test_json_lists_every_host_in_severity_order(
        server: tuple[ThreadingHTTPServer, type[_Handler]], tmp_path: Path) -> None:
    httpd, _ = server
    proc = run(["fleet", "--prometheus", base(httpd), "--json"], clean_env(tmp_path), tmp_path)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [h["host"] for h in data["hosts"]] == ["g5:19466", "gpu-node-2", "g4:19466",
                                                  "gpu-node-1", "g3:19466"]
    assert set(data["hosts"][1]) == {"host", "instance", "job", "label", "confidence", "since",
                                     "evidence", "probes_down"}


def test_table_from_the_command(server: tuple[ThreadingHTTPServer, type[_Handler]],
                                tmp_path: Path) -> None:
    httpd, _ = server
    proc = run(["fleet", "--prometheus", base(httpd) + "/"], clean_env(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith("g5:19466")
    assert "network_bound" in proc.stdout


def test_unreachable_prometheus_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run(["fleet", "--prometheus", f"http://user:secret@127.0.0.1:{port}"],
               clean_env(tmp_path), tmp_path)
    assert_no_traceback(proc)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert "cannot reach Prometheus at http://127.0.0.1:" in proc.stderr
    assert "secret" not in proc.stderr


def test_a_server_that_is_not_prometheus_is_one_line_and_exit_1(
        server: tuple[ThreadingHTTPServer, type[_Handler]], tmp_path: Path) -> None:
    httpd, handler = server
    handler.mode = "html"
    proc = run(["fleet", "--prometheus", base(httpd)], clean_env(tmp_path), tmp_path)
    assert_no_traceback(proc)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert "HTTP 404" in proc.stderr and "Prometheus" in proc.stderr


@pytest.mark.parametrize("args", [["--prometheus", "not a url"], ["--prometheus", "ftp://x/"],
                                  []])
def test_bad_usage_is_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    assert_one_line_error(run(["fleet", *args], clean_env(tmp_path), tmp_path))
