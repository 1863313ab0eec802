"""A live fleet: a real Prometheus scraping three real agents, with the project's rules.

Debian's ``prometheus`` binary runs on a free loopback port with a temporary
storage folder, scraping every second and evaluating deploy/prometheus's rules
every second. Three `ai-bottleneck run` subprocesses:

- ``fleet-gpu``: 2 GPUs through the fake NVML backend (file mode), busy;
- ``fleet-target``: two HTTP targets, one live (a real HTTP server) and one
  dead (a port nobody listens on), a download from the live server, and a
  veth interface (10 Gbit/s link speed) among its NICs;
- ``fleet-oom``: follows a log file into which the test writes a CUDA
  out-of-memory line once Prometheus has seen the counter at 0.

Through Prometheus' HTTP API the test then asserts: every rule healthy, the
expected alerts pending or firing (AiBottleneckTargetDown for the dead target,
AiBottleneckGpuOutOfMemory for the OOM host), every Grafana dashboard query
returns data, and `ai-bottleneck fleet` lists the three hosts with the labels
Prometheus holds for them. Everything is stopped afterwards, also on failure.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import guide
from tests.clitool import clean_env, run
from tests.clitool import command as cli_command
from tests.fakes.fake_nvml import make_gpus, write_state
from tests.netns import netns_link
from tests.servers import HttpServer, ServerConfig
from tests.test_daemon import Daemon, env_for

# root: a veth pair (tests/netns.py) gives one agent a NIC with a link speed, so the
# utilization panels have data on machines whose own NIC reports none.
pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "rules" / "ai-bottleneck.rules.yml"
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
WAIT = 60.0  # seconds: the bound on waiting for rules, alerts and panels
#: What a dashboard's variables stand for here (Grafana fills them in).
VARIABLES = {"$__rate_interval": "15s", "$__range": "1m", "$__interval": "5s",
             "${__range}": "1m", "$instance": ".*", "$host": ".*", "$node": ".*",
             "$namespace": ".*", "$job": "ai-bottleneck"}

COMMON = """
[agent]
interval_seconds = 0.5
window_seconds = 2
listen = "127.0.0.1:0"
[probes.iperf3]
enabled = false
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is missing: CI must install the `prometheus` package")
        pytest.skip("prometheus not installed (Debian package `prometheus`)")
    return path


class Prometheus:
    def __init__(self, folder: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{
                "job_name": "ai-bottleneck",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"host": host}}
                                   for host, port in targets.items()]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.log_path = folder / "prometheus.log"
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)
        self.client = httpx.Client(timeout=5.0)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited ({self.proc.returncode}):\n"
                            f"{self.log_path.read_text()[-3000:]}")
            try:
                if self.client.get(f"{self.url}/-/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail("prometheus did not get ready in 30 s")

    def api(self, path: str, **params: str) -> Any:
        response = self.client.get(f"{self.url}/api/v1/{path}", params=params)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query with the variables filled in) of every dashboard."""
    out = []
    for path in DASHBOARDS:
        data = json.loads(path.read_text())
        for panel in data["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name in sorted(VARIABLES, key=len, reverse=True):
                    expr = expr.replace(name, VARIABLES[name])
                assert "$" not in expr, f"unknown variable in {path.name}: {expr}"
                out.append((f"{path.name}: {panel['title']}", expr))
    assert out
    return out


def has_data(prom: Prometheus, expr: str) -> bool:
    # Range queries are what time-series panels run; one step at "now" answers both kinds.
    return bool(prom.query(expr))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        live = stack.enter_context(HttpServer(ServerConfig("delay", body_bytes=200_000)))
        link = stack.enter_context(netns_link())
        dead = f"http://127.0.0.1:{free_port()}/health"  # nothing listens there
        nvml = tmp_path / "nvml.json"
        write_state(nvml, make_gpus(2, utilization_percent=95, memory_used_bytes=30 * 2**30))
        oom_log = tmp_path / "server.log"
        oom_log.write_text("model server starting\n")
        configs = {
            "fleet-gpu": COMMON + "[probes.http]\nenabled = false\n[probes.download]\n"
                                  "enabled = false\n[probes.oom]\nenabled = false\n",
            "fleet-target": COMMON + "[probes.gpu]\nenabled = false\n[probes.oom]\n"
                                     "enabled = false\n[probes.http]\ntargets = ["
                                     f'{{ url = "{live.url("/health")}" }}, '
                                     f'{{ url = "{dead}" }}]\ninterval_seconds = 1\n'
                                     f'[probes.download]\nurl = "{live.url("/blob")}"\n'
                                     "interval_seconds = 5\n"
                                     f'[probes.nic]\ninclude = ["{link.host_dev}"]\n',
            "fleet-oom": COMMON + "[probes.gpu]\nenabled = false\n[probes.http]\nenabled = "
                                  "false\n[probes.download]\nenabled = false\n[probes.oom]\n"
                                  f'files = ["{oom_log}"]\ninterval_seconds = 0.5\n',
        }
        agents: dict[str, Daemon] = {}
        for host, text in configs.items():
            config = tmp_path / f"{host}.toml"
            config.write_text(text)
            daemon = Daemon(["--config", str(config)], env_for(nvml), tmp_path / f"{host}.log")
            stack.callback(daemon.close)
            agents[host] = daemon
        ports = {host: d.port for host, d in agents.items()}
        prom = Prometheus(tmp_path, ports)
        stack.callback(prom.stop)
        prom.wait_ready()
        yield {"prom": prom, "agents": agents, "oom_log": oom_log, "dead": dead,
               "tmp": tmp_path}


def doc_check_commands() -> list[str]:
    """The check commands of docs/deployment.md's plain-host step 6 (tests/guide.py)."""
    lines = guide.block("prom-check").lines
    assert len(lines) == 3 and lines[2].startswith("ai-bottleneck fleet"), lines
    return lines


def wait_for(what: str, check: Any, deadline: float) -> Any:
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {WAIT:g} s (last: {last!r})")


def test_live_fleet_rules_alerts_panels_and_fleet_command(fleet: dict[str, Any]) -> None:
    prom: Prometheus = fleet["prom"]
    deadline = time.monotonic() + WAIT
    # The OOM line comes once Prometheus holds the counter at 0, so increase() sees it.
    wait_for("the OOM counter at 0 in Prometheus", lambda: prom.query(
        'ai_bottleneck_oom_events_total{host="fleet-oom"} == 0'), deadline)
    with open(fleet["oom_log"], "a", encoding="utf-8") as f:
        f.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")

    def alerts() -> dict[tuple[str, str], str]:
        found = {}
        for a in prom.api("alerts")["alerts"]:
            found[(a["labels"]["alertname"], a["labels"].get("host", ""))] = a["state"]
        return found

    expected = {("AiBottleneckTargetDown", "fleet-target"),
                ("AiBottleneckGpuOutOfMemory", "fleet-oom")}
    got = wait_for("the expected alerts", lambda: (a := alerts()) and expected <= set(a) and a,
                   deadline)
    for key in expected:
        assert got[key] in ("pending", "firing"), (key, got)
    assert got[("AiBottleneckGpuOutOfMemory", "fleet-oom")] == "firing"  # no `for`
    down = [a for a in prom.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "AiBottleneckTargetDown"]
    assert [a["labels"]["target"] for a in down] == [fleet["dead"]]

    # Every rule evaluated and healthy.
    def rules() -> list[dict[str, Any]]:
        return [r for g in prom.api("rules")["groups"] for r in g["rules"]]

    def all_evaluated() -> list[dict[str, Any]]:
        rs = rules()
        return rs if all(r.get("lastEvaluation", "").startswith("2") and
                         not r["lastEvaluation"].startswith("0001") for r in rs) else []

    evaluated = wait_for("every rule evaluated", all_evaluated, deadline)
    sick = [(r["name"], r["health"], r.get("lastError")) for r in evaluated
            if r["health"] != "ok"]
    assert not sick, sick
    planned = yaml.safe_load(RULES.read_text())
    assert len(evaluated) == sum(len(g["rules"]) for g in planned["groups"])

    # Every dashboard query returns data.
    queries = dashboard_queries()
    missing = queries
    while missing and time.monotonic() < deadline:
        missing = [q for q in missing if not has_data(prom, q[1])]
        if missing:
            time.sleep(0.5)
    assert not missing, f"dashboard queries without data: {missing}"

    # The fleet command lists the three hosts, with the labels Prometheus holds.
    def labels_now() -> dict[str, str]:
        return {r["metric"]["host"]: r["metric"]["label"]
                for r in prom.query("ai_bottleneck_window_label == 1")}

    for _attempt in range(5):  # a window may close between the two reads: read again
        before = labels_now()
        proc = run(["fleet", "--prometheus", prom.url, "--json"], clean_env(fleet["tmp"]),
                   fleet["tmp"])
        after = labels_now()
        assert proc.returncode == 0, proc.stderr
        hosts = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
        if before == after:
            break
    assert set(hosts) == {"fleet-gpu", "fleet-target", "fleet-oom"}
    assert {name: h["label"] for name, h in hosts.items()} == after
    assert fleet["dead"] in " ".join(hosts["fleet-target"]["probes_down"])
    table = run(["fleet", "--prometheus", prom.url], clean_env(fleet["tmp"]), fleet["tmp"])
    assert table.returncode == 0, table.stderr
    assert {line.split()[0] for line in table.stdout.splitlines()[1:]} == set(hosts)
    # The check commands of docs/deployment.md ("From nothing to a dashboard and
    # alerts", plain hosts, step 6), as written there, against this Prometheus.
    for line in doc_check_commands():
        command = line.replace("http://localhost:9090", prom.url)
        if command.startswith("ai-bottleneck "):
            command = command.replace("ai-bottleneck ", shlex.join(cli_command()) + " ", 1)
        done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (command, done.stderr)
        if "api/v1/rules" in command:
            assert "'ok'" in done.stdout and "'err'" not in done.stdout, done.stdout
            assert "'AiBottleneckTargetDown': 'ok'" in done.stdout
        elif "api/v1/alerts" in command:
            listed = done.stdout.splitlines()
            assert "AiBottleneckGpuOutOfMemory fleet-oom firing" in listed, listed
            assert any(line.startswith("AiBottleneckTargetDown fleet-target ")
                       for line in listed), listed
        else:
            assert {"fleet-gpu", "fleet-target", "fleet-oom"} <= set(done.stdout.split())
    print("\nrules:", ", ".join(f"{r['name']}={r['health']}" for r in evaluated))
    print("alerts:", ", ".join(f"{n}[{h}]={s}" for (n, h), s in sorted(alerts().items())))
    print("panels with data:", len(queries), "queries")
    print(table.stdout)
