"""The container image, as docs/deployment.md's Kubernetes steps 1-2 make and name it.

The guide's image block (tests/guide.py, "k8s-image") runs as written:
deploy/image/build.sh builds `ai-bottleneck:0.1.0` (mmdebstrap + buildah, from
Debian packages and the project's wheels) and `podman push` sends it to
`REGISTRY`, here a real registry (Debian's docker-registry) on a loopback port.
It speaks plain HTTP, so a registries.conf given through
CONTAINERS_REGISTRIES_CONF names it insecure, as an operator would for such a
registry. Then podman runs the agent in the image and the test scrapes /metrics
from outside, and the guide's settings block ("k8s-settings", on a copy of
deploy/) names the registry: the image reference the DaemonSet would pull is
pulled back from the registry and is the image built.

Slow (about two minutes: the rootfs is made from packages each time) and root
(mmdebstrap --mode=root, podman as root). CI installs mmdebstrap, buildah,
podman, runc and docker-registry (.ci/run). The machines this runs on are
themselves containers without CAP_SYS_RESOURCE: podman's default rlimits
(nofile 1048576) cannot be set there, so the test passes rlimits within the
current ones; crun refuses the hybrid cgroup layout, so runc runs the container.
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
from typing import Any

import httpx
import pytest
import yaml

from tests import guide

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("mmdebstrap", "buildah", "podman", "runc", "docker-registry", "kubectl")
#: The guide's image name; podman keeps an unqualified local name under localhost/.
LOCAL = "localhost/ai-bottleneck:0.1.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman(*args: str, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must install {', '.join(missing)} (.ci/run, the test extra)")
        pytest.skip(f"not installed: {', '.join(missing)}")
    folder = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    (folder / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
        "http": {"addr": address}}))
    with open(folder / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (folder / "registry.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://{address}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "docker-registry did not answer in 30 s"
            time.sleep(0.2)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def image(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if podman("image", "exists", LOCAL).returncode == 0:
        pytest.skip(f"{LOCAL} exists on this machine already: the test would replace it")
    conf = tmp_path_factory.mktemp("podman") / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}
    try:
        done, skipped = guide.run_block("k8s-image", {"REGISTRY": registry}, env=env,
                                        timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert not skipped
        yield {"tag": LOCAL, "registry": registry, "env": env}
    finally:
        podman("rmi", "-f", LOCAL, f"{registry}/ai-bottleneck:0.1.0")


def test_image_builds_runs_the_agent_and_serves_metrics(image: dict[str, Any]) -> None:
    port = free_port()
    name = f"ai-bottleneck-test-{uuid.uuid4().hex[:8]}"
    limits = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
    started = podman("run", "-d", "--name", name, "--network", "host", "--read-only",
                     "--tmpfs", "/tmp", *limits, image["tag"],
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


def test_guide_run_command_serves_metrics(image: dict[str, Any], tmp_path: Path) -> None:
    # podman's defaults as this machine needs them (see the module doc), in a
    # containers.conf: the guide's command itself stays as written.
    conf = tmp_path / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
                    '[engine]\nruntime = "runc"\n')
    port = free_port()
    text, skipped = guide.script("image-run", {"127.0.0.1:19466": f"127.0.0.1:{port}"})
    assert not skipped
    before = set(podman("ps", "-aq").stdout.split())
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", text], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "CONTAINERS_CONF": str(conf)})
    try:
        body = ""
        deadline = time.monotonic() + 60
        while "ai_bottleneck_window_label" not in body and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.5)
        assert "ai_bottleneck_window_label" in body, log.read_text()[-3000:]
    finally:
        proc.terminate()  # podman passes it on; --rm removes the container
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for left in set(podman("ps", "-aq").stdout.split()) - before:
            podman("rm", "-f", "-t", "0", left)


def test_pushed_image_is_the_one_the_manifests_pull(image: dict[str, Any],
                                                    tmp_path: Path) -> None:
    registry = image["registry"]
    tags = httpx.get(f"http://{registry}/v2/ai-bottleneck/tags/list", timeout=10).json()
    assert tags == {"name": "ai-bottleneck", "tags": ["0.1.0"]}
    # The guide's settings block on a copy of deploy/, with this registry.
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    done, _ = guide.run_block("k8s-settings", {"REGISTRY": registry}, cwd=tmp_path,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    key, reference = done.stdout.split()
    assert key == "image:" and reference == f"{registry}/ai-bottleneck:0.1.0"
    pulled = podman("pull", "--quiet", reference, env=image["env"], timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    built = podman("image", "inspect", "--format", "{{.Id}}", image["tag"]).stdout.strip()
    assert built and pulled.stdout.strip() == built
