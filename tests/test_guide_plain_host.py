"""docs/deployment.md, "Plain hosts and a Prometheus server", run as written.

Each step's command block comes from the guide (tests/guide.py) and runs with
bash as root inside a private copy of /etc, /opt, /usr/local and /var
(tests/host_sandbox.py): the venv in /opt, the symlink in /usr/local/bin, the
system group, the config and the unit in /etc are really made, and vanish
afterwards. Substituted: the checkout's path for `/path/to/ai-bottleneck`,
loopback ports for `gpu-host-1:19466`, `localhost:9090` and `localhost:9093`.

What the operator edits by hand, the test edits in code: the agent's config
(a loopback port, 500 ms samples, 2 s windows, an OOM log to follow) and
Debian's stock /etc/prometheus/prometheus.yml (the shipped scrape job, the
rule file, a loopback Alertmanager, 1 s intervals). Lines needing systemd as
PID 1 are not run (these machines have none): `systemctl enable` runs
offline without `--now`, and the test starts the unit's ExecStart= itself.
Then real programs: Debian's prometheus and prometheus-alertmanager, the
installed agent; an OOM line written into the followed log must make
AiBottleneckGpuOutOfMemory fire, be listed by the guide's checks and reach
Alertmanager. Everything stops and is removed afterwards, also on failure.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests import guide
from tests.host_sandbox import HostSandbox

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = guide.REPO
#: root's PATH on Debian: the guide's `python3` is the system's, not a test venv's.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("unshare", "nsenter", "systemd-analyze", "systemctl", "curl", "prometheus",
         "promtool", "prometheus-alertmanager", "amtool")
WAIT = 90.0  # seconds: the bound on each wait for the agent, rules and alerts
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T], seconds: float = WAIT) -> T:
    deadline = time.monotonic() + seconds
    last: T = check()
    while not last and time.monotonic() < deadline:
        time.sleep(0.5)
        last = check()
    assert last, f"{what}: not within {seconds:g} s (last: {last!r})"
    return last


@pytest.fixture
def box(tmp_path: Path) -> Iterator[HostSandbox]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must install what provides {', '.join(missing)} (.ci/run)")
        pytest.skip(f"not installed: {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("root only (a mount namespace with overlays)")
    with HostSandbox(tmp_path / "sandbox") as sandbox:
        yield sandbox


def run(box: HostSandbox, name: str, env: dict[str, str], timeout: float = 120,
        **substitutions: str) -> tuple[str, list[str]]:
    done, skipped = guide.run_block(name, substitutions, prefix=box.prefix, env=env,
                                    timeout=timeout)
    assert done.returncode == 0, (name, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout, skipped


def edit_agent_config(box: HostSandbox, port: int, oom_log: Path) -> None:
    path = "/etc/ai-bottleneck/config.toml"
    text = box.read(path)
    for old, new in (('# interval_seconds = "1s"', 'interval_seconds = "500ms"'),
                     ('# window_seconds = "10s"', 'window_seconds = "2s"'),
                     ('# listen = ":19466"', f'listen = "127.0.0.1:{port}"')):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text += (f'\n[probes.oom]\nfiles = ["{oom_log}"]\ninterval_seconds = 0.5\n'
             "[probes.iperf3]\nenabled = false\n")
    box.write(path, text)


def edited_prometheus_config(stock_text: str, agent_port: int, alertmanager_port: int) -> str:
    """Debian's stock prometheus.yml with what guide step 5 tells the operator to add:
    the shipped ai-bottleneck job (this agent as its target), its rule file, this
    Alertmanager; 1 s intervals to keep the tests short."""
    stock = yaml.safe_load(stock_text)
    shipped = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "ai-bottleneck"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{agent_port}"]}]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    stock["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    stock["rule_files"] = [*(stock.get("rule_files") or []), *shipped["rule_files"]]
    stock["scrape_configs"].append(job)
    stock["alerting"] = {"alertmanagers": [{"static_configs": [
        {"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]}
    return yaml.safe_dump(stock, sort_keys=False)


#: Alertmanager's config in the tests: one receiver, nothing sent anywhere.
ALERTMANAGER_CONFIG = ("route:\n  receiver: operator\n  group_wait: 0s\n"
                       "receivers:\n  - name: operator\n")
OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"


def check_prometheus_outputs(out: str, host: str) -> None:
    """What guide step 6's three commands must print with AiBottleneckGpuOutOfMemory
    firing for HOST, the only agent."""
    health_line, *rest = out.splitlines()
    planned = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules" /
                              "ai-bottleneck.rules.yml").read_text())
    names = {r.get("alert") or r["record"] for g in planned["groups"] for r in g["rules"]}
    health = ast.literal_eval(health_line)  # the command prints a dict
    assert set(health) == names and set(health.values()) == {"ok"}, health
    assert f"AiBottleneckGpuOutOfMemory {host} firing" in rest
    table = [line.split() for line in rest if line and not line.startswith("AiBottleneck")]
    assert table[0][0] == "HOST" and [row[0] for row in table[1:]] == [host], rest


def test_plain_host_walkthrough(box: HostSandbox, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = ROOT_PATH
    agent_port, prom_port, am_port = free_port(), free_port(), free_port()
    oom_log = tmp_path / "model-server.log"
    oom_log.write_text("model server starting\n")

    # 1. Install.
    _out, skipped = run(box, "host-install", env, timeout=600,
                        **{"/path/to/ai-bottleneck": str(REPO)})
    assert not skipped
    link = box.run("readlink /usr/local/bin/ai-bottleneck")
    assert link.stdout.strip() == "/opt/ai-bottleneck/bin/ai-bottleneck"
    mode = box.run("stat -c '%a %G' /etc/ai-bottleneck /etc/ai-bottleneck/config.toml")
    assert mode.stdout.split("\n")[:2] == ["750 ai-bottleneck-config",
                                            "640 ai-bottleneck-config"]
    assert not Path("/opt/ai-bottleneck").exists()  # made in the sandbox only
    edit_agent_config(box, agent_port, oom_log)

    # 2. Start: the systemd lines cannot run here; enable offline, start ExecStart=.
    _out, skipped = run(box, "host-start", env)
    assert skipped == ["systemctl daemon-reload", "systemctl enable --now ai-bottleneck",
                       "systemctl status ai-bottleneck", "journalctl -u ai-bottleneck -e"]
    enabled = box.run("systemctl enable ai-bottleneck && readlink "
                      "/etc/systemd/system/multi-user.target.wants/ai-bottleneck.service")
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.strip().endswith("/etc/systemd/system/ai-bottleneck.service")
    unit = box.read("/etc/systemd/system/ai-bottleneck.service")
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines()
                     if line.startswith("ExecStart=")]
    agent_log = tmp_path / "agent.log"
    agent = box.start(shlex.split(exec_start), agent_log, env=env)

    # 3. Check the agent from outside.
    def serving() -> bool:
        assert agent.poll() is None, agent_log.read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{agent_port}/metrics", timeout=2).is_success
        except httpx.HTTPError:
            return False

    wait_for("the agent serving /metrics", serving)
    out, _ = run(box, "host-check", env, **{"gpu-host-1:19466": f"127.0.0.1:{agent_port}"})
    lines = out.splitlines()
    assert lines[0].startswith('ai_bottleneck_window_label{label="unknown"} ')
    assert any(line.startswith('ai_bottleneck_probe_up{probe="host"} 1') for line in lines)

    # 4-5. Rules, scrape job, Alertmanager; Prometheus started with the edited file.
    _out, skipped = run(box, "prom-rules", env)
    assert not skipped
    box.write("/etc/prometheus/prometheus.yml", edited_prometheus_config(
        box.read("/etc/prometheus/prometheus.yml"), agent_port, am_port))
    _out, skipped = run(box, "prom-config", env)
    assert skipped == ["systemctl reload prometheus          # Debian's unit; or send SIGHUP "
                       "to prometheus"]
    (tmp_path / "alertmanager.yml").write_text(ALERTMANAGER_CONFIG)
    box.start(["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
               f"--storage.path={tmp_path / 'am-data'}", "--cluster.listen-address=",
               f"--web.listen-address=127.0.0.1:{am_port}"], tmp_path / "am.log", env=env)
    prometheus = box.start(["prometheus", "--config.file=/etc/prometheus/prometheus.yml",
                            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}"],
                           tmp_path / "prometheus.log", env=env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=5)
    try:  # closed also when a wait fails (an open socket left to the GC warns later)
        def query(expr: str) -> list[Any]:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:  # a Prometheus still starting answers 503 "Service Unavailable", not JSON
                body = client.get("/api/v1/query", params={"query": expr}).json()
            except (httpx.HTTPError, ValueError):
                return []
            return list(body["data"]["result"]) if body.get("status") == "success" else []

        # The OOM line comes once Prometheus holds the counter at 0, so increase() sees it.
        wait_for("the OOM counter at 0 in Prometheus",
                 lambda: query('ai_bottleneck_oom_events_total{host="127.0.0.1"} == 0'))
        with open(oom_log, "a", encoding="utf-8") as f:
            f.write(OOM_LINE)
        wait_for("AiBottleneckGpuOutOfMemory firing", lambda: query(
            'ALERTS{alertname="AiBottleneckGpuOutOfMemory",alertstate="firing"}'))

        def rules_evaluated() -> bool:
            try:
                groups = client.get("/api/v1/rules").json()["data"]["groups"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return all(not r.get("lastEvaluation", "0001").startswith("0001")
                       for g in groups for r in g["rules"])

        wait_for("every rule evaluated", rules_evaluated)
    finally:
        client.close()

    # 6. The guide's checks against this Prometheus.
    out, _ = run(box, "prom-check", env, **{"localhost:9090": f"127.0.0.1:{prom_port}"})
    check_prometheus_outputs(out, "127.0.0.1")

    # 7. Alertmanager got it.
    def in_alertmanager() -> str:
        done, _ = guide.run_block("alertmanager-check",
                                  {"localhost:9093": f"127.0.0.1:{am_port}"},
                                  prefix=box.prefix, env=env, timeout=60)
        return done.stdout if "AiBottleneckGpuOutOfMemory" in done.stdout else ""

    listed = wait_for("the alert in Alertmanager", in_alertmanager, 30)
    print("\n" + out + listed)

    def alert_names() -> set[str]:
        # Alertmanager's own API; an answer that is not a JSON list (a busy moment)
        # is asked again, as the guide's check is.
        answer = httpx.get(f"http://127.0.0.1:{am_port}/api/v2/alerts", timeout=10)
        try:
            alerts = json.loads(answer.text)
        except ValueError:
            return set()
        return {a["labels"]["alertname"] for a in alerts} if isinstance(alerts, list) else set()

    names = wait_for("the alert in Alertmanager's API", alert_names, 30)
    assert names >= {"AiBottleneckGpuOutOfMemory"}
