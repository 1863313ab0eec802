"""The process_* families the endpoint writes itself against prometheus_client's
ProcessCollector (the reference every exporter's dashboards are written for), and
the choice of format against prometheus_client's choose_encoder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from ai_bottleneck.process_metrics import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    ProcessMetrics,
    wants_openmetrics,
)


def _reference() -> tuple[str, dict[str, float]]:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    text = generate_latest(registry).decode()
    return text, {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_same_families_help_and_types_as_prometheus_clients_collector() -> None:
    reference_text, reference = _reference()
    ours_text = ProcessMetrics().render()
    ours = {s.name: s.value for f in text_string_to_metric_families(ours_text) for s in f.samples}
    assert set(ours) == set(reference) and len(ours) == 6
    headers = [line for line in ours_text.splitlines() if line.startswith("#")]
    assert headers == [line for line in reference_text.splitlines() if line.startswith("#")]
    assert ours["process_start_time_seconds"] == reference["process_start_time_seconds"]
    assert ours["process_max_fds"] == reference["process_max_fds"]
    # Read a moment apart: memory and descriptors may move a little, CPU only forward.
    assert abs(ours["process_resident_memory_bytes"] - reference["process_resident_memory_bytes"]) \
        < 8 * 2**20
    assert abs(ours["process_virtual_memory_bytes"] - reference["process_virtual_memory_bytes"]) \
        < 64 * 2**20
    assert abs(ours["process_open_fds"] - reference["process_open_fds"]) <= 2
    assert -1e-9 <= ours["process_cpu_seconds_total"] - reference["process_cpu_seconds_total"] < 1.0
    # The figures are this process's own.
    fds = len(os.listdir("/proc/self/fd"))
    assert abs(ours["process_open_fds"] - fds) <= 2


def test_openmetrics_names_the_counter_family_without_total() -> None:
    text = ProcessMetrics().render(openmetrics=True) + "# EOF\n"
    families = {f.name: f for f in om_parse(text)}
    assert families["process_cpu_seconds"].type == "counter"
    assert [s.name for s in families["process_cpu_seconds"].samples] == \
        ["process_cpu_seconds_total"]
    assert families["process_resident_memory_bytes"].type == "gauge"


def test_what_proc_cannot_give_is_left_out_not_written_as_zero(tmp_path: Path) -> None:
    assert ProcessMetrics(proc=tmp_path).render() == ""  # no /proc/stat: nothing
    (tmp_path / "stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    pid = tmp_path / "42"
    (pid / "fd").mkdir(parents=True)
    for n in range(3):
        (pid / "fd" / str(n)).touch()
    (pid / "limits").write_text("Limit Soft Hard Units\nMax open files unlimited unlimited files\n")
    values = ProcessMetrics(proc=tmp_path, pid=42).values()
    assert values == {"process_open_fds": 3.0}  # no stat file, no number of files allowed
    after_name = ["S"] + ["0"] * 49  # the fields after the command name, from the state
    after_name[11], after_name[12] = "150", "50"  # utime, stime (ticks)
    after_name[19], after_name[20], after_name[21] = "500", "4096", "10"  # start, vsize, rss
    (pid / "stat").write_text("42 (a (tricky) name) " + " ".join(after_name) + "\n")
    values = ProcessMetrics(proc=tmp_path, pid=42).values()
    ticks = os.sysconf("SC_CLK_TCK")
    assert values["process_start_time_seconds"] == pytest.approx(1700000000 + 500 / ticks)
    assert values["process_cpu_seconds_total"] == pytest.approx(200 / ticks)
    assert values["process_resident_memory_bytes"] == 10 * os.sysconf("SC_PAGESIZE")
    assert values["process_virtual_memory_bytes"] == 4096
    assert "process_max_fds" not in values


ACCEPTS = [
    "",
    "*/*",
    "text/plain",
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    # What Prometheus 2.x sends by default.
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5",
    "application/json",
]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_format_chosen_is_the_one_prometheus_client_chooses(accept: str) -> None:
    _encoder, reference = choose_encoder(accept)
    ours = OPENMETRICS_CONTENT_TYPE if wants_openmetrics(accept) else TEXT_CONTENT_TYPE
    assert ours.split(";")[0] == reference.split(";")[0]
    # The version is the one written (1.0.0 or 0.0.4), whatever was asked.
    assert re.search(r"version=(1\.0\.0|0\.0\.4)", ours)
