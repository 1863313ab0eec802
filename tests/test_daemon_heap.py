"""The daemon's heap after start: what start-up built is frozen out of the garbage
collector's full scans (they held every endpoint thread for 40-70 ms), and a
reload lets the run it replaces be collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_bottleneck.daemon import Agent
from tests.test_daemon import FAST, QUIET, env_for, nvml_state  # noqa: F401


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's own heap back as it was


def test_start_freezes_the_heap_and_reload_frees_the_old_run(
        tmp_path: Path, nvml_state: Path, unfrozen: None,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, val in env_for(nvml_state).items():
        monkeypatch.setenv(key, val)
    config = tmp_path / "config.toml"
    config.write_text(FAST + 'listen = "127.0.0.1:0"\n' + QUIET)
    gc.unfreeze()
    agent = Agent(config)
    agent.start()
    try:
        assert gc.get_freeze_count() > 0
        assert agent._run is not None
        old = weakref.ref(agent._run.live)
        assert agent.reload()
        gc.collect()
        assert old() is None, "the replaced run is still alive after a reload"
        assert gc.get_freeze_count() > 0
    finally:
        agent.stop()
