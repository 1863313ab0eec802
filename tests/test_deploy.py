"""deploy/: the systemd unit, Prometheus config and rules, the Grafana dashboard, Kubernetes.

What these tests prove, and what not:
- systemd: `systemd-analyze security --offline=yes` scores the unit file as
  written, and `systemd-analyze verify` finds it clean once ExecStart points
  at this checkout's real `ai-bottleneck` entry point (the unit's
  /usr/local/bin path exists only after the documented install). Neither
  starts the service: these machines run no systemd as PID 1.
- Prometheus: promtool checks the scrape config and rules and runs the rule
  unit tests (deploy/prometheus/tests.yml).
- Grafana: the dashboard is valid JSON and every query is valid PromQL over
  metrics the collector really emits. Grafana itself does not render it here.
- Kubernetes: core objects are checked against the Kubernetes JSON schemas
  when `kubernetes-validate` is installed; always, the fields that matter are
  checked by hand (GPU nodes, host network, read-only root, ports and
  selectors that must agree, a ConfigMap the agent accepts). No cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ai_bottleneck import exporter_metrics as em
from ai_bottleneck.config import DEFAULT_PATH, DEFAULT_PORT, parse_config
from tests.promtool import run_promtool

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "ai-bottleneck.service"
METRICS = set(em.metric_names())


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: CI must install the `systemd` package")
        pytest.skip("systemd-analyze not installed")
    return path


def unit_entries(text: str) -> dict[str, list[str]]:
    """KEY -> every value, in order (units repeat keys such as DeviceAllow=)."""
    entries: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def entry_point() -> Path:
    found = shutil.which("ai-bottleneck") or str(Path(sys.executable).parent / "ai-bottleneck")
    path = Path(found)
    assert path.is_file(), "the ai-bottleneck entry point is not installed (pip install -e .)"
    return path


# -- systemd ---------------------------------------------------------------------------------


def test_unit_exposure_is_at_most_2_5() -> None:
    result = subprocess.run([systemd_analyze(), "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for ai-bottleneck\.service: (\d+\.\d+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure} (limit 2.5; Debian's "
          "node_exporter unit: 9.2)")
    assert exposure <= 2.5
    # The figure the unit's comment and docs/deployment.md give is the measured one.
    assert f"rates\nits exposure **{exposure}" in (REPO / "docs" / "deployment.md").read_text()
    assert f"--offline=yes`: {exposure} (OK)" in UNIT.read_text()
    # The same limit through systemd-analyze's own switch (tenths).
    limited = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=25",
                              str(UNIT)], capture_output=True, text=True, timeout=60, check=False)
    assert limited.returncode == 0


def test_unit_verifies_clean_with_the_real_entry_point(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/ai-bottleneck " in text
    copy = tmp_path / "ai-bottleneck.service"
    copy.write_text(text.replace("/usr/local/bin/ai-bottleneck", str(entry_point())))
    result = subprocess.run([systemd_analyze(), "verify", str(copy)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "ai-bottleneck" not in result.stdout + result.stderr
    # The file as shipped: the only complaint allowed is the not yet installed binary.
    if not Path("/usr/local/bin/ai-bottleneck").exists():
        shipped = subprocess.run([systemd_analyze(), "verify", str(UNIT)], capture_output=True,
                                 text=True, timeout=60, check=False)
        complaints = [line for line in (shipped.stdout + shipped.stderr).splitlines() if line]
        assert complaints and all("is not executable" in line for line in complaints), complaints


def test_unit_runs_unprivileged_with_nvml_devices_only() -> None:
    entries = unit_entries(UNIT.read_text())
    assert entries["DynamicUser"] == ["yes"]
    assert entries["Restart"] == ["on-failure"]
    assert entries["CapabilityBoundingSet"] == [""]
    assert entries["DevicePolicy"] == ["closed"]
    allowed = {value.split()[0] for value in entries["DeviceAllow"]}
    assert allowed == {"/dev/nvidiactl", "/dev/nvidia-uvm", "char-nvidia-frontend",
                       "char-nvidia", "char-nvidia-uvm"}
    assert all(value.endswith(" rw") for value in entries["DeviceAllow"])  # never "m" (mknod)
    assert entries["SupplementaryGroups"] == ["systemd-journal ai-bottleneck-config"]
    # A static group named like the dynamic user makes systemd refuse to start it.
    assert "Group" not in entries and "User" not in entries
    assert "PrivateNetwork" not in entries  # the agent measures the host's network
    exec_start = entries["ExecStart"][0].split()
    assert exec_start[1:] == ["run", "--config", str(DEFAULT_PATH)]


def test_entry_point_starts(tmp_path: Path) -> None:
    result = subprocess.run([str(entry_point()), "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    if not re.search(r"^\s+run\s", result.stdout, re.MULTILINE):
        pytest.skip("this build has no `run` command yet (written in another branch)")
    result = subprocess.run([str(entry_point()), "run", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and "--config" in result.stdout


def test_deployment_doc_covers_every_agent_key_and_the_port() -> None:
    import dataclasses

    from ai_bottleneck.config import AgentOptions

    text = (REPO / "docs" / "deployment.md").read_text()
    for f in dataclasses.fields(AgentOptions):
        assert f"| `{f.name}` |" in text, f"docs/deployment.md lacks agent.{f.name}"
    assert f"**{DEFAULT_PORT}**" in text


# -- Prometheus ------------------------------------------------------------------------------


def test_promtool_checks_the_scrape_config_and_rules() -> None:
    prometheus = DEPLOY / "prometheus"
    result = run_promtool(["check", "config", "prometheus.yml"], cwd=prometheus)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_promtool(["check", "rules", "rules/ai-bottleneck.rules.yml"], cwd=prometheus)
    assert result.returncode == 0, result.stdout + result.stderr


def test_guide_promtool_block_runs_as_written() -> None:
    from tests import guide

    run_promtool(["--version"])  # fails in CI, skips elsewhere, without promtool
    done, skipped = guide.run_block("prom-files", {}, timeout=120)
    assert done.returncode == 0 and not skipped, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = run_promtool(["test", "rules", "tests.yml"], cwd=DEPLOY / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_uses_the_agents_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ai-bottleneck")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(f":{DEFAULT_PORT}") for t in targets)


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bai_bottleneck_[a-z0-9_]+\b", expr))


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "ai-bottleneck.rules.yml")
                           .read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


#: Metrics a rule uses that another line of work adds to the agent (the recording's
#: health gauge, on the branch that makes recording failures visible); the entry can
#: go once that is merged and the metric is in the table.
PENDING_METRICS = {"ai_bottleneck_recording_up"}


def test_rules_use_only_metrics_the_agent_exports() -> None:
    recorded = set()
    for expr in rule_exprs():
        used = metric_names_in(expr)
        recorded |= used - METRICS
    unknown = recorded - PENDING_METRICS
    assert not unknown, f"rules refer to metrics the agent does not export: {unknown}"


def test_every_alert_has_a_unit_test_and_a_runbook_entry() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "ai-bottleneck.rules.yml")
                           .read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests.yml").read_text())
    # an alert test that expects it to fire, not only to stay quiet
    firing = {t["alertname"] for group in tests["tests"] for t in group.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    runbook = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#### (\w+)$", runbook, flags=re.M))
    for needed in ("AiBottleneckTargetDown", "AiBottleneckNvmlUnusable", "AiBottleneckAbsent",
                   "AiBottleneckAgentStuck", "AiBottleneckRecordingFailing",
                   "AiBottleneckGpuLost", "AiBottleneckGpuMissing"):
        assert needed in alerts
    assert alerts <= firing, f"alerts no unit test sees firing: {alerts - firing}"
    assert alerts <= headings, f"alerts without a runbook entry: {alerts - headings}"


def test_operator_rules_equal_the_plain_rules() -> None:
    plain = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "ai-bottleneck.rules.yml")
                           .read_text())
    operator = yaml.safe_load((DEPLOY / "kubernetes" / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"] == plain


# -- Grafana ---------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data = json.loads((DEPLOY / "grafana" / "ai-bottleneck.json").read_text())
    assert isinstance(data, dict)
    return data


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    assert exprs
    return exprs


def recording_rule_names() -> set[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "ai-bottleneck.rules.yml")
                           .read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def test_dashboard_queries_refer_only_to_exported_metrics() -> None:
    used: set[str] = set()
    recorded = recording_rule_names()
    for expr in dashboard_exprs():
        names = metric_names_in(expr)
        assert names, f"a query with no ai_bottleneck metric: {expr}"
        assert names <= METRICS, f"not exported: {names - METRICS} in {expr}"
        # Any selector's metric name is one of ours (no other exporter's metrics).
        for selector in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", expr):
            assert selector in METRICS | recorded, f"{selector} in {expr}"
        used |= names
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            assert metric_names_in(variable["definition"]) <= METRICS
    # What the dashboard must show (the list).
    for needed in ("ai_bottleneck_window_label", "ai_bottleneck_gpu_utilization_ratio",
                   "ai_bottleneck_gpu_memory_used_bytes",
                   "ai_bottleneck_http_request_duration_seconds",
                   "ai_bottleneck_nic_rx_bytes_per_second",
                   "ai_bottleneck_nic_rx_utilization_ratio",
                   "ai_bottleneck_throughput_bytes_per_second"):
        assert needed in used


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses every expression when it checks a rule file.
    variables = {"$__rate_interval": "1m", "$__range": "1h", "$host": ".*", "$node": ".*",
                 "$namespace": ".*"}
    rules = []
    for i, query in enumerate(dashboard_exprs()):
        expr = query
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(["check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_layout_and_timeline_mapping() -> None:
    data = dashboard()
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
    timeline = next(p for p in data["panels"] if p["type"] == "state-timeline"
                    and "ai_bottleneck_window_label" in p["targets"][0]["expr"])
    mapping = timeline["fieldConfig"]["defaults"]["mappings"][0]["options"]
    from ai_bottleneck.labels import LABEL_NAMES as LABELS

    assert [mapping[str(i + 1)]["text"] for i in range(len(LABELS))] == list(LABELS)
    for i, label in enumerate(LABELS):
        assert f'label="{label}"}} * {i + 1}' in timeline["targets"][0]["expr"]


# -- Kubernetes ------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def test_core_manifests_match_the_kubernetes_schemas() -> None:
    validate = pytest.importorskip("kubernetes_validate",
                                   reason="kubernetes-validate (schemas) not installed")
    version = validate.latest_version()
    checked = []
    for kind, doc in manifests().items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # operator CRDs: checked by hand below
        validate.validate(doc, version, strict=True)  # raises ValidationError
        checked.append(kind)
    assert sorted(checked) == ["ConfigMap", "DaemonSet", "Namespace", "Service"]


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed["resources"]) == files


def test_daemonset_runs_on_gpu_nodes_with_host_network_read_only() -> None:
    ds = manifests()["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    # One expression per term: terms are ORed, so any of these labels selects a node.
    assert all(len(t["matchExpressions"]) == 1 for t in terms["nodeSelectorTerms"])
    expressions = [e for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in expressions
    keys = {e["key"] for e in expressions}
    assert {"feature.node.kubernetes.io/pci-10de.present", "cloud.google.com/gke-accelerator",
            "k8s.amazonaws.com/accelerator", "kubernetes.azure.com/accelerator"} <= keys
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists"
               for t in pod["tolerations"])
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    # No CPU limit: it would throttle iperf3 and the link test would measure the limit.
    assert resources["limits"].keys() == {"memory"}
    assert {"cpu", "memory"} <= resources["requests"].keys()
    # Optional, not built in: some managed clusters refuse system-node-critical here.
    assert "priorityClassName" not in pod
    # hostPath volumes never create anything on the node (a created /var/log/journal
    # turns a volatile journal persistent).
    host_paths = [v["hostPath"] for v in pod["volumes"] if "hostPath" in v]
    assert host_paths and all(h["type"] in ("Directory", "File") for h in host_paths)
    assert all(m.get("readOnly") for m in container["volumeMounts"]
               if any(v["name"] == m["name"] and "hostPath" in v for v in pod["volumes"]))
    # Watching GPUs must not take one away from the workloads.
    assert not any("nvidia.com/gpu" in k for part in resources.values() for k in part)
    (port,) = container["ports"]
    assert port["containerPort"] == DEFAULT_PORT and port["name"] == "metrics"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # The config the agent is told to read is the ConfigMap's file.
    config_arg = container["args"][container["args"].index("--config") + 1]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(name for name, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == manifests()["ConfigMap"]["metadata"][
        "name"]
    assert Path(config_arg).parent == Path(mounts[config_volume]["mountPath"])
    assert Path(config_arg).name in manifests()["ConfigMap"]["data"]
    # Read-only root: every path the agent writes is a volume.
    assert {"/tmp", "/var/lib/ai-bottleneck"} <= {m["mountPath"] for m in mounts.values()
                                                  if not m.get("readOnly")}


def test_configmap_holds_a_config_the_agent_accepts() -> None:
    import tomllib

    from ai_bottleneck.discovery import available_names

    data = manifests()["ConfigMap"]["data"]
    (name,) = data
    config = parse_config(tomllib.loads(data[name]), source=f"configmap {name}",
                          known_probes=available_names())
    assert config.agent.listen_address[1] == DEFAULT_PORT


def test_service_and_service_monitor_select_the_agents() -> None:
    found = manifests()
    ds, service, monitor = found["DaemonSet"], found["Service"], found["ServiceMonitor"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    assert port["port"] == DEFAULT_PORT and port["targetPort"] == "metrics"
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    # The job label the alert rules expect (up{job="ai-bottleneck"}).
    job_label = monitor["spec"]["jobLabel"]
    assert service["metadata"]["labels"][job_label] == "ai-bottleneck"
    namespaces = {d["metadata"].get("namespace") for d in found.values()} - {None}
    assert namespaces == {found["Namespace"]["metadata"]["name"]}


# -- kustomize: the image in one place, the release label, the optional priority class ------

KUSTOMIZATION = DEPLOY / "kubernetes" / "kustomization.yaml"


def test_image_is_named_in_the_kustomization_only() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    (image,) = kustomization["images"]
    (container,) = manifests()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image["name"] == "ai-bottleneck"  # replaced by kustomize
    assert image["newName"].endswith("/ai-bottleneck") and image["newTag"] == "0.1.0"
    assert "registry.example.com" in image["newName"]  # the documented placeholder
    assert "registry.example.com" in (REPO / "docs" / "deployment.md").read_text()


def test_release_label_is_set_once_and_not_in_selectors() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    (labels,) = kustomization["labels"]
    assert "release" in labels["pairs"] and labels["includeSelectors"] is False


def test_namespace_allows_what_the_agent_needs_and_says_so() -> None:
    namespace = manifests()["Namespace"]
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"
    text = (DEPLOY / "kubernetes" / "namespace.yaml").read_text()
    assert "hostNetwork" in text and "hostPath" in text  # the reason, beside the label


#: prometheus-operator v1 fields these manifests may use. The CRD schemas below check
#: types and required fields but let unknown fields pass (the API server prunes them
#: silently), so unknown fields are caught here.
OPERATOR_FIELDS = {
    "ServiceMonitor": {"jobLabel", "namespaceSelector", "selector", "endpoints",
                       "targetLabels", "podTargetLabels", "sampleLimit"},
    "endpoint": {"port", "path", "interval", "scrapeTimeout", "relabelings", "scheme",
                 "metricRelabelings", "honorLabels", "tlsConfig", "basicAuth"},
    "relabeling": {"sourceLabels", "targetLabel", "action", "regex", "replacement",
                   "separator", "modulus"},
    "PrometheusRule": {"groups"},
    "group": {"name", "rules", "interval", "limit"},
    "rule": {"record", "alert", "expr", "for", "labels", "annotations", "keep_firing_for"},
}


def test_operator_objects_use_only_fields_of_the_operator_api() -> None:
    found = manifests()
    monitor, rule = found["ServiceMonitor"], found["PrometheusRule"]
    assert set(monitor["spec"]) <= OPERATOR_FIELDS["ServiceMonitor"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= OPERATOR_FIELDS["endpoint"]
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= OPERATOR_FIELDS["relabeling"]
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", relabel["targetLabel"])
    assert set(rule["spec"]) == OPERATOR_FIELDS["PrometheusRule"]
    for group in rule["spec"]["groups"]:
        assert set(group) <= OPERATOR_FIELDS["group"]
        for r in group["rules"]:
            assert set(r) <= OPERATOR_FIELDS["rule"] and ("record" in r) != ("alert" in r)
    for doc in (monitor, rule):
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"


OPERATOR_SCHEMAS = REPO / "tests" / "operator_schemas"


def operator_validate(docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Run the prometheus-operator CRD schemas (npm @kubernetes-models/prometheus-operator,
    installed by .ci/run into tests/operator_schemas) over ``docs``."""
    node = shutil.which("node")
    installed = (OPERATOR_SCHEMAS / "node_modules" / "@kubernetes-models"
                 / "prometheus-operator").is_dir()
    if node is None or not installed:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install node and tests/operator_schemas (.ci/run)")
        pytest.skip("operator schemas not installed: cd tests/operator_schemas && npm install")
    return subprocess.run([node, str(OPERATOR_SCHEMAS / "validate.mjs")], input=json.dumps(docs),
                          capture_output=True, text=True, timeout=60, check=False)


def test_operator_objects_match_the_operator_crd_schemas() -> None:
    found = manifests()
    result = operator_validate([found["ServiceMonitor"], found["PrometheusRule"]])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["ok ServiceMonitor ai-bottleneck",
                                             "ok PrometheusRule ai-bottleneck"]
    # The schemas do catch mistakes: a ServiceMonitor without its selector, a number
    # where the operator wants a duration string.
    broken = json.loads(json.dumps(found["ServiceMonitor"]))
    del broken["spec"]["selector"]
    broken["spec"]["endpoints"][0]["interval"] = 15
    bad = operator_validate([broken])
    assert bad.returncode == 1
    assert "selector" in bad.stderr and "interval must be string" in bad.stderr


def kustomize_build(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) not installed")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_renders_the_image_release_label_and_optional_priority(
        tmp_path: Path) -> None:
    validate = pytest.importorskip("kubernetes_validate")
    base = kustomize_build(DEPLOY / "kubernetes")
    by_kind = {d["kind"]: d for d in base}
    pod = by_kind["DaemonSet"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example.com/ai-bottleneck:0.1.0"
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert by_kind[kind]["metadata"]["labels"]["release"]
    assert "release" not in pod["metadata"]["labels"]
    assert "release" not in by_kind["DaemonSet"]["spec"]["selector"]["matchLabels"]
    assert "priorityClassName" not in pod["spec"]
    # With the optional component: its own class, and the DaemonSet uses it.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(DEPLOY / "kubernetes")],
        "components": [str(DEPLOY / "kubernetes" / "components" / "priority-class")]}))
    # kustomize wants relative paths for local bases and components
    (overlay / "kustomization.yaml").write_text(
        (overlay / "kustomization.yaml").read_text().replace(
            str(DEPLOY / "kubernetes"), os.path.relpath(DEPLOY / "kubernetes", overlay)))
    with_priority = {d["kind"]: d for d in kustomize_build(overlay)}
    name = with_priority["PriorityClass"]["metadata"]["name"]
    assert with_priority["DaemonSet"]["spec"]["template"]["spec"]["priorityClassName"] == name
    version = validate.latest_version()
    for doc in with_priority.values():
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate.validate(doc, version, strict=True)


def test_dashboard_has_the_fleet_view_variables_and_instant_single_values() -> None:
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    for name in ("host", "node", "namespace"):
        assert variables[name]["type"] == "query" and variables[name]["allValue"] == ".*"
        assert name in variables[name]["definition"]
    recorded = recording_rule_names()
    panels = [p for p in data["panels"] if p["type"] != "row"]
    overview = [p for p in panels if any(r in t["expr"] for t in p["targets"] for r in recorded)]
    assert len(overview) >= 3  # hosts per label now and over time, top hosts by bottleneck
    assert any("ai_bottleneck_target_up" in t["expr"] for p in panels for t in p["targets"])
    assert any("ai_bottleneck_probe_up" in t["expr"] for p in panels for t in p["targets"])
    for panel in panels:
        for t in panel["targets"]:
            # Every query filters on the three variables or is a fleet-wide recording rule.
            assert all(f"${v}" in t["expr"] for v in ("host", "node", "namespace")) or \
                t["expr"].strip() in recorded, t["expr"]
            if panel["type"] in ("bargauge", "table", "stat", "gauge"):
                assert t.get("instant") is True and t.get("range") is False, panel["title"]
        # No costly range query over the whole dashboard range.
        if any("$__range" in t["expr"] for t in panel["targets"]):
            assert all(t.get("instant") for t in panel["targets"]), panel["title"]
def test_daemonset_mounts_what_gpu_process_attribution_reads() -> None:
    pod = manifests()["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = tomllib.loads(manifests()["ConfigMap"]["data"]["config.toml"])
    proc_root = config["probes"]["gpu"]["proc_root"]
    for path, host_path in ((proc_root, "/proc"), ("/var/log/pods", "/var/log/pods"),
                            ("/var/log/containers", "/var/log/containers")):
        assert mounts[path].get("readOnly") is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == host_path
    assert pod["hostPID"] is False  # the /proc mount is enough
