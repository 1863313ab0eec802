"""What the agent of bench_agent carries (host, nic and GPU probes; the engine probe on
without targets; http and download off): the heavy libraries of the probes and endpoint
features it does not use stay unimported, and so do prometheus_client and OpenSSL
(``ssl``, ``hashlib``), which the endpoint serves without unless TLS or basic auth is
configured. The RSS figure itself is bench_agent's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SCRIPT = r"""
import json, sys
from ai_bottleneck.assembly import build_probes
from ai_bottleneck.config import load_config
import ai_bottleneck.daemon  # the endpoint, exporter and sampler of `run`
from ai_bottleneck.endpoint import MetricsServer
from ai_bottleneck.state import AgentState
import socket
probes = build_probes(load_config(sys.argv[1]))
for probe in probes.probes:
    probe.sample()
probes.close()
with MetricsServer(AgentState(), "127.0.0.1:0") as server:
    # A scrape in each format, with gzip: every path of a plain scrape (a raw socket:
    # a client library would import what is looked for).
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n"
                         "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n".encode())
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
            assert reply.startswith(b"HTTP/1.1 200 OK"), reply[:100]
print(json.dumps({name: name in sys.modules for name in sys.argv[2:]}))
"""

# msgspec is not among them: Sample is a msgspec Struct, so every agent imports it.
_HEAVY = ["httpx", "httpcore", "bcrypt", "yaml", "re2",
          "prometheus_client", "ssl", "_ssl", "hashlib", "_hashlib", "http.client",
          "http.server"]


def test_the_passive_agent_leaves_the_heavy_libraries_unimported(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("".join(f"[probes.{name}]\nenabled = false\n"
                              for name in ("iperf3", "oom", "http", "download")))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(config), *_HEAVY],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout.splitlines()[-1])
    assert not [name for name, present in imported.items() if present], imported


def test_the_cli_loads_a_command_module_only_when_that_command_runs() -> None:
    script = ("import sys; from ai_bottleneck.cli import main; "
              "print(sorted(m for m in sys.modules if m.split('.')[-1] in "
              "('plan_cli', 'fleet_cli', 'modelinfo', 'gguf_meta')))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    listed = subprocess.run([sys.executable, "-m", "ai_bottleneck.cli", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "plan " in listed.stdout and "fleet " in listed.stdout  # still listed
