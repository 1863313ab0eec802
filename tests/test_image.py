"""The container image: deploy/image/build.sh builds it here (mmdebstrap + buildah, from
Debian packages and the project's wheels), podman runs the agent in it, and the test
scrapes /metrics from outside the container.

Slow (about two minutes: the rootfs is made from packages each time) and root
(mmdebstrap --mode=root, podman as root). CI installs mmdebstrap, buildah, podman
and runc (.ci/run). The machines this runs on are themselves containers without
CAP_SYS_RESOURCE: podman's default rlimits (nofile 1048576) cannot be set there,
so the test passes rlimits within the current ones; crun refuses the hybrid
cgroup layout, so runc runs the container.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "deploy" / "image" / "build.sh"
TOOLS = ("mmdebstrap", "buildah", "podman", "runc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def image() -> Iterator[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must install {', '.join(missing)} (.ci/run)")
        pytest.skip(f"not installed: {', '.join(missing)}")
    tag = f"localhost/ai-bottleneck-test:{uuid.uuid4().hex[:8]}"
    try:
        build = subprocess.run([str(BUILD), tag], capture_output=True, text=True, timeout=900,
                               check=False, cwd=REPO)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        yield tag
    finally:
        podman("rmi", "-f", tag)


def test_image_builds_runs_the_agent_and_serves_metrics(image: str) -> None:
    port = free_port()
    name = f"ai-bottleneck-test-{uuid.uuid4().hex[:8]}"
    limits = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
    started = podman("run", "-d", "--name", name, "--network", "host", "--read-only",
                     "--tmpfs", "/tmp", *limits, image,
                     "run", "--listen", f"127.0.0.1:{port}",
                     "--config", "/etc/ai-bottleneck/config.toml")
    assert started.returncode == 0, started.stderr
    try:
        body = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                body = response.text
                if response.status_code == 200 and "ai_bottleneck_host_cpu_seconds_total" in body:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        logs = podman("logs", name).stderr
        assert "ai_bottleneck_host_cpu_seconds_total" in body, logs
        assert 'ai_bottleneck_window_label{label="unknown"}' in body
        # the wheel build wrote the checkout's commit into the package
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()
        if head:
            assert f'revision="{head}"' in body
        user = podman("exec", name, "id", "-u")
        assert user.stdout.strip() == "65534", user.stderr  # runs as nobody
        iperf3 = podman("exec", name, "iperf3", "--version")
        assert iperf3.returncode == 0 and "iperf 3" in iperf3.stdout
        journalctl = podman("exec", name, "journalctl", "--version")
        assert journalctl.returncode == 0, journalctl.stderr
    finally:
        podman("rm", "-f", name)
