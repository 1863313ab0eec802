"""A probe's latest error text reaches /metrics (ai_bottleneck_probe_error_info, one
bounded series per probe) and the log (one WARNING per change of text), in the
exporter and from a real `ai-bottleneck run` whose HTTP target refuses calls."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ai_bottleneck.exporter import ERROR_LABEL_LIMIT, Exposition
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.state import AgentState
from tests.test_daemon import (  # noqa: F401 (nvml_state: a fixture)
    FAST,
    QUIET,
    Daemon,
    env_for,
    nvml_state,
    scrape_until,
    value,
)
from tests.test_exporter import Clock

METRIC = "ai_bottleneck_probe_error_info"


def error_series(state: AgentState) -> dict[tuple[str, str], float]:
    body, _type = Exposition(state, process_metrics=False).render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == METRIC:
                out[(s.labels["probe"], s.labels["error"])] = s.value
    return out


def test_latest_error_text_is_one_series_per_probe_replaced_on_change(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    state = AgentState(clock=clock, interval_seconds=1, window_seconds=10)
    state.register_probe("http")
    state.register_probe("host")
    labels = {"target": "api"}
    ok = Sample(clock(), "http", labels, {"total_seconds": 0.1})
    assert error_series(state) == {}  # no error yet: no series

    with caplog.at_level(logging.WARNING, logger="ai_bottleneck"):
        for _ in range(3):  # the same failure three rounds running: one log line
            state.record_samples("http", [Sample(clock(), "http", labels,
                                                 error="connection refused")])
    assert error_series(state) == {("http", "connection refused"): 1.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["probe http: connection refused"]

    state.record_samples("http", [ok])  # recovered: the text stays, at 0
    assert error_series(state) == {("http", "connection refused"): 0.0}

    caplog.clear()
    long = "timed out after 20 s reading " + "x" * 400
    with caplog.at_level(logging.WARNING, logger="ai_bottleneck"):
        state.record_samples("http", [Sample(clock(), "http", labels, error=long)])
    series = error_series(state)
    assert len(series) == 1  # replaced, not added
    ((probe, text), v), = series.items()
    assert probe == "http" and v == 1.0
    assert len(text) == ERROR_LABEL_LIMIT and text.startswith("timed out after 20 s")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_a_running_agent_exports_its_probes_error(tmp_path: Path,
                                                  nvml_state: Path) -> None:  # noqa: F811
    with socket.socket() as s:  # a port nothing listens on: every call is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(FAST + 'listen = "127.0.0.1:0"\n' + QUIET +
                      '[probes.http]\ninterval_seconds = "0.5s"\n'
                      f'targets = [{{ name = "api", url = "http://127.0.0.1:{port}/" }}]\n')
    daemon = Daemon(["--config", str(config)], env_for(nvml_state), tmp_path / "agent.log")
    try:
        conn = daemon.connect()
        families = scrape_until(conn, lambda f: bool(f.get(METRIC)), METRIC)
        ((labels, v),) = families[METRIC].items()
        error = dict(labels)["error"]
        assert dict(labels)["probe"] == "http" and v == 1.0
        assert "refused" in error.lower(), error
        assert value(families, "ai_bottleneck_probe_up", probe="http") == 0.0
        conn.close()
        lines = daemon.wait_log(r"WARNING.*probe http: ")
        assert daemon.stop() == 0
        # Failing every half second for the whole run: still the one line.
        assert len([ln for ln in daemon.log().splitlines() if "probe http: " in ln]) == 1, lines
    finally:
        daemon.close()
