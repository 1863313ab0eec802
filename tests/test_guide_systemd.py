"""docs/deployment.md, plain-host steps 1-7, under a real systemd as PID 1.

The test machines run no systemd, so the test boots one: podman runs
/lib/systemd/systemd on an overlay of this machine's own root filesystem
(`--rootfs /:O`: what the steps install is thrown away with the container),
to basic.target only, so none of the host's enabled services start. The
guide's blocks run inside as written, every line of them: the install (the
checkout, bind-mounted at its own path, for `/path/to/ai-bottleneck`), then
`systemctl daemon-reload`, `systemctl enable --now ai-bottleneck`, `systemctl
status`, `journalctl -u`, and the check with curl. The unit starts with its
whole sandbox (DynamicUser=, ProtectSystem=strict, the device policy, the
system call filter); the test checks that its process runs as the dynamic
user, in the config's group, and serves /metrics. Then Debian's Prometheus
and Alertmanager run as their systemd services (loopback ports in
/etc/default), the rules and scrape job go in as the guide says, `systemctl
reload prometheus` must load them, an OOM line in a log the agent follows
must fire AiBottleneckGpuOutOfMemory, and the guide's checks (the rules and
alerts APIs, `ai-bottleneck fleet`, `amtool`) must show it.

The container shares the host's network (pip reaches the package index), so
the agent's config gets a free loopback port (and 500 ms samples, 2 s
windows, the log to follow). CAP_SYS_ADMIN lets systemd set up the unit's
mount namespace inside the container. Root and podman (with runc, as
tests/test_image.py) only; about 40 s.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import guide
from tests.test_guide_plain_host import (
    ALERTMANAGER_CONFIG,
    OOM_LINE,
    check_prometheus_outputs,
    edited_prometheus_config,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = guide.REPO
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OOM_LOG = "/var/log/model-server.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman(*args: str, timeout: float = 120,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def machine() -> Iterator[str]:
    """A container booted with systemd as PID 1 on an overlay of this host's root."""
    missing = [t for t in ("podman", "runc") if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must install {', '.join(missing)} (.ci/run)")
        pytest.skip(f"not installed: {', '.join(missing)}")
    if not os.path.exists("/lib/systemd/systemd"):
        pytest.fail("systemd is missing: CI must install the `systemd` package")
    name = f"ai-bottleneck-systemd-{uuid.uuid4().hex[:8]}"
    tmpfs = [arg for d in ("/tmp", "/run", "/var/log/journal")
             for arg in ("--tmpfs", f"{d}:rw,notmpcopyup")]
    started = podman("run", "-d", "--name", name, "--network", "host",
                     "--cap-add", "SYS_ADMIN", "--systemd", "always",
                     "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
                     *tmpfs, "--volume", f"{REPO}:{REPO}", "--rootfs", "/:O",
                     "/lib/systemd/systemd", "--unit=basic.target")
    try:
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 60
        while True:  # until systemd answers on its bus and has reached basic.target
            booted = podman("exec", name, "systemctl", "is-system-running", "--wait",
                            timeout=60)
            if booted.stdout.strip() in ("running", "degraded"):
                break
            assert time.monotonic() < deadline, booted.stdout + booted.stderr
            time.sleep(0.5)
        yield name
    finally:
        podman("kill", name)
        podman("rm", "-f", "-t", "0", name)


def inside(machine: str, name: str, timeout: float = 300,
           **substitutions: str) -> subprocess.CompletedProcess[str]:
    """Run the guide's block NAME in the container, from the checkout, as root."""
    text, skipped = guide.script(name, substitutions, systemd=True)
    assert not skipped  # every line runs
    return podman("exec", "-i", "--env", f"PATH={ROOT_PATH}", "--workdir", str(REPO),
                  machine, "bash", "-s", stdin=text, timeout=timeout)


def test_install_start_and_check_under_systemd(machine: str) -> None:
    done = inside(machine, "host-install", timeout=600,
                  **{"/path/to/ai-bottleneck": str(REPO)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    port = free_port()
    config = "/etc/ai-bottleneck/config.toml"
    edit = podman("exec", machine, "sed", "-i", "-e",
                  f's|^# listen = ":19466"$|listen = "127.0.0.1:{port}"|', "-e",
                  's|^# window_seconds = "10s"$|window_seconds = "2s"|', "-e",
                  's|^# interval_seconds = "1s"$|interval_seconds = "500ms"|', config)
    assert edit.returncode == 0, edit.stderr
    # A model server's log for the OOM watcher (steps 6-7 make it report an OOM).
    write(machine, OOM_LOG, "model server starting\n")
    write(machine, config, podman("exec", machine, "cat", config).stdout +
          f'\n[probes.oom]\nfiles = ["{OOM_LOG}"]\ninterval_seconds = 0.5\n')
    assert f'listen = "127.0.0.1:{port}"' in podman("exec", machine, "cat", config).stdout

    started = inside(machine, "host-start", timeout=120)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert "Active: active (running)" in started.stdout, started.stdout

    def serving() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).is_success
        except httpx.HTTPError:
            return False

    deadline = time.monotonic() + 60
    while not serving():
        assert time.monotonic() < deadline, podman(
            "exec", machine, "journalctl", "-u", "ai-bottleneck", "--no-pager").stdout[-3000:]
        time.sleep(0.5)
    journal = podman("exec", machine, "journalctl", "-u", "ai-bottleneck", "--no-pager")
    assert "ai-bottleneck agent started; config /etc/ai-bottleneck/config.toml" in \
        journal.stdout, journal.stdout[-3000:]

    checked = inside(machine, "host-check", timeout=60,
                     **{"gpu-host-1:19466": f"127.0.0.1:{port}"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'ai_bottleneck_probe_up{probe="host"} 1' in checked.stdout

    # The process systemd started: the dynamic user, the config's group, no root.
    pid = podman("exec", machine, "systemctl", "show", "-P", "MainPID",
                 "ai-bottleneck").stdout.strip()
    assert pid.isdigit() and pid != "0"
    ids = podman("exec", machine, "ps", "-o", "user:32=,group:32=,supgrp:200=", "-p",
                 pid).stdout
    user, group, supplementary = ids.split()
    assert user == group == "ai-bottleneck", ids
    assert set(supplementary.split(",")) >= {"systemd-journal", "ai-bottleneck-config"}, ids
    status = podman("exec", machine, "grep", "-E", "^(Uid|CapEff|NoNewPrivs|Seccomp):",
                    f"/proc/{pid}/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split()[0] != "0" and int(fields["CapEff"], 16) == 0, status
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2", status
    print("\n" + started.stdout[-2000:])
    prometheus_steps(machine, port)


def write(machine: str, path: str, text: str) -> None:
    done = podman("exec", "-i", machine, "tee", path, stdin=text)
    assert done.returncode == 0, done.stderr


def prometheus_steps(machine: str, agent_port: int) -> None:
    """Steps 4-7 with Debian's Prometheus and Alertmanager running as their services
    (the operator's, "already running": the test starts them on loopback ports)."""
    prom_port, am_port = free_port(), free_port()
    write(machine, "/etc/default/prometheus",
          f'ARGS="--web.listen-address=127.0.0.1:{prom_port}"\n')
    write(machine, "/etc/default/prometheus-alertmanager",
          f'ARGS="--web.listen-address=127.0.0.1:{am_port} --cluster.listen-address="\n')
    write(machine, "/etc/prometheus/alertmanager.yml", ALERTMANAGER_CONFIG)
    started = podman("exec", machine, "systemctl", "start", "prometheus",
                     "prometheus-alertmanager", timeout=60)
    assert started.returncode == 0, started.stderr
    client = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=5)

    def answer(path: str, **params: str) -> Any:
        try:
            body = client.get(path, params=params).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body["data"] if body.get("status") == "success" else None

    wait_for("Prometheus up as a service", lambda: answer("/api/v1/status/buildinfo"))
    assert inside(machine, "prom-rules").returncode == 0
    write(machine, "/etc/prometheus/prometheus.yml", edited_prometheus_config(
        podman("exec", machine, "cat", "/etc/prometheus/prometheus.yml").stdout,
        agent_port, am_port))
    reloaded = inside(machine, "prom-config", timeout=60)  # promtool, systemctl reload
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    # The reload took: the rules are loaded and the agent is scraped.
    wait_for("the rules after the reload", lambda: (answer("/api/v1/rules") or {}).get("groups"))
    wait_for("the OOM counter at 0", lambda: answer(
        "/api/v1/query", query='ai_bottleneck_oom_events_total{host="127.0.0.1"} == 0'
    )["result"])
    appended = podman("exec", "-i", machine, "tee", "-a", OOM_LOG, stdin=OOM_LINE)
    assert appended.returncode == 0, appended.stderr
    wait_for("AiBottleneckGpuOutOfMemory firing", lambda: answer(
        "/api/v1/query", query='ALERTS{alertname="AiBottleneckGpuOutOfMemory",'
                               'alertstate="firing"}')["result"])
    wait_for("every rule evaluated", lambda: all(
        not r.get("lastEvaluation", "0001").startswith("0001")
        for g in answer("/api/v1/rules")["groups"] for r in g["rules"]))
    client.close()
    checked = inside(machine, "prom-check", **{"localhost:9090": f"127.0.0.1:{prom_port}"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    check_prometheus_outputs(checked.stdout, "127.0.0.1")

    def in_alertmanager() -> str:
        done = inside(machine, "alertmanager-check",
                      **{"localhost:9093": f"127.0.0.1:{am_port}"})
        return done.stdout if "AiBottleneckGpuOutOfMemory" in done.stdout else ""

    print(checked.stdout + wait_for("the alert in Alertmanager", in_alertmanager, 30))
