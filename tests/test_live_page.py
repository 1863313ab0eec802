"""The agent's live page: `GET /` on a real `ai-bottleneck run` shows the current
label, the last hour's timeline and the charts, behind the same basic auth as
/metrics, and refreshes in place in headless Chromium without console errors."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from ai_bottleneck.assembly import assemble_replay
from ai_bottleneck.html_report import render_html
from ai_bottleneck.live_page import PAGE_SUMMARY_KEYS, LivePage, compact
from ai_bottleneck.pipeline import Labeller
from ai_bottleneck.verdict import overall_verdict
from tests import chromium, synth
from tests.test_daemon import FAST, QUIET, WAIT, Daemon, env_for, nvml_state, start

__all__ = ["nvml_state", "start"]  # fixtures used below

USER, PASSWORD = "viewer", "correct horse battery staple"
LAB = Path(__file__).parent / "data" / "lab"


def _windows(n: int) -> list:  # type: ignore[type-arg]
    parts = (synth.gpu(util=0.95, sm=0.9), synth.host(cpu=0.2), synth.nic(rx=1e6, link=1e9))
    return list(Labeller(10.0, origin=synth.T0).run(synth.scene(*parts, seconds=10 * n)))


def test_the_page_keeps_one_hour_and_renders_whole_or_its_content() -> None:
    now = [synth.T0]
    page = LivePage(clock=lambda: now[0])
    results = _windows(400)  # 4000 s of windows
    for r in results:
        now[0] = r.end
        page.add(r)
    whole = page.render().decode()
    assert whole.startswith("<!DOCTYPE html>") and "setInterval" in whole
    assert "the last 360 windows" in whole  # an hour of 10 s windows
    assert 'id="now">now (window ' in whole and "gpu_bound" in whole
    part = page.render("part=main").decode()
    assert "<html" not in part and "<script" not in part and 'id="verdict"' in part
    now[0] += 7200  # nothing new for two hours: nothing left to show
    assert "the last 0 windows" in page.render().decode()


def _copies(results: list) -> list:  # type: ignore[type-arg]
    copies, previous = [], None
    for r in results:
        previous = compact(r, previous)
        copies.append(previous)
    return copies


@pytest.mark.parametrize("recording", sorted(p.name for p in LAB.glob("*.jsonl.gz")))
def test_the_page_renders_the_same_from_its_compact_copies(recording: str) -> None:
    results = list(assemble_replay(LAB / recording).results)
    copies = _copies(results)

    def page(windows: list) -> str:  # type: ignore[type-arg]
        return render_html(windows, overall_verdict(windows), title="t",
                           not_measured={"oom": "off"}, refresh_seconds=10, current=windows[-1])

    assert len(results) > 3
    assert page(copies) == page(results)
    assert all(set(c.summary) <= set(PAGE_SUMMARY_KEYS) for c in copies)


def test_a_window_equal_in_part_to_the_one_before_shares_that_part() -> None:
    results = _windows(6)  # the same scene throughout: GPU, host and NIC readings repeat
    assert results[1].readings is not None and results[1].readings.status
    copies = _copies(results)
    for before, after in itertools.pairwise(copies):
        assert after.readings is not None and before.readings is not None
        assert after.readings.status is before.readings.status
        assert after.probes is before.probes and after.warnings is before.warnings
        assert after.readings.gpus[0] is before.readings.gpus[0]
        assert after.start > before.start  # what differs stays the window's own
    # the originals are untouched: the daemon's other consumers see whole windows
    assert results[-1].readings is not None and results[-1].summary.get("gpu")
    assert results[-1].readings.status is not results[-2].readings.status


def _get(daemon: Daemon, path: str, auth: bool) -> tuple[int, str]:
    conn = daemon.connect()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    try:
        conn.request("GET", path, headers={"Authorization": f"Basic {token}"} if auth else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.mark.slow
def test_the_live_page_is_served_behind_auth_and_refreshes_in_place(
        start: Callable[..., Daemon], nvml_state: Path, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: {hashed}\n")
    daemon = start(FAST + QUIET, env_for(nvml_state), "--web.config.file", str(web))
    daemon.wait_log(r"window \S+: ", count=2)
    assert _get(daemon, "/", auth=False)[0] == 401
    assert _get(daemon, "/?part=main", auth=False)[0] == 401
    status, page = _get(daemon, "/", auth=True)
    assert status == 200
    assert 'id="verdict">' in page and 'id="now">now (window ' in page
    # eight GPUs: one line each in a busy chart and a memory chart
    assert "<svg" in page and "GPU busy, per GPU" in page and "GPU memory used, per GPU" in page
    assert ">GPU 7</text>" in page
    status, part = _get(daemon, "/?part=main", auth=True)
    assert status == 200 and "<html" not in part and 'id="verdict">' in part

    # Chromium opens the page with the credentials in the URL; the page then
    # fetches its content again (virtual time runs the 10 s timer at once).
    url = f"http://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{daemon.port}/"
    deadline = time.monotonic() + WAIT
    rendered = chromium.render(url, wait_ms=25_000)
    assert rendered.console == [], rendered.console
    assert 'data-refreshed="' in rendered.dom, rendered.dom[:2000]
    assert "data-stale" not in rendered.dom
    assert 'id="verdict">' in rendered.dom and "<svg" in rendered.dom
    assert time.monotonic() < deadline + 90
    chromium.screenshot(url, "live-page.png")
    assert daemon.stop() == 0
