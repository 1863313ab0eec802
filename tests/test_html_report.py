"""`replay --html` / `diagnose --html`: one self-contained file that headless
Chromium draws without console errors; a screenshot is kept as an artifact
(build/test-artifacts/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ai_bottleneck.assembly import assemble_replay
from ai_bottleneck.html_report import render_html
from ai_bottleneck.verdict import overall_verdict
from tests import chromium, clitool

LAB = Path(__file__).parent / "data" / "lab"
#: Anything that would load from elsewhere when the file is opened.
FETCHES = re.compile(r"""(?:\bsrc\s*=|\bhref\s*=|url\(|@import|fetch\(|XMLHttpRequest)""", re.I)


def _html(tmp_path: Path, scenario: str) -> Path:
    out = tmp_path / f"{scenario}.html"
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(tmp_path / "none.toml"),
                                       "TZ": "UTC", "COLUMNS": "1000"})
    proc = clitool.run(["replay", str(LAB / f"{scenario}.jsonl.gz"), "--html", str(out)],
                       env, tmp_path)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert f"HTML report written to {out}" in proc.stdout
    return out


def test_the_file_is_self_contained(tmp_path: Path) -> None:
    text = _html(tmp_path, "transitions").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not FETCHES.search(text), FETCHES.search(text)
    # the only URL is the SVG namespace, which is a name, never fetched
    assert set(re.findall(r"https?://[^\s\"'<]+", text)) == {"http://www.w3.org/2000/svg"}
    assert "<script" not in text  # a file needs no script at all


@pytest.mark.parametrize("scenario", ["transitions", "network_bound", "vram_bound"])
def test_chromium_draws_the_report_without_console_errors(tmp_path: Path,
                                                         scenario: str) -> None:
    path = _html(tmp_path, scenario)
    page = chromium.render(path.as_uri())
    assert page.console == [], page.console
    dom = page.dom
    run = assemble_replay(LAB / f"{scenario}.jsonl.gz")
    results = list(run.results)
    verdict = overall_verdict(results)
    assert f'id="verdict">{verdict.label}</div>' in dom
    # the timeline, one chart per GPU, the CPU chart, one per NIC, the request phases
    assert dom.count("<svg") >= 5
    assert "label timeline" in dom and "GPU 0: busy and memory used" in dom
    # the lab's links are 10 Gbit/s and carry little: the speed is named, not drawn; the
    # plateau the classifier judged a full path by is drawn, as its evidence states it
    assert "CPU and pressure" in dom and "(link 10 Gbit/s, peak 0." in dom
    plateau = "tx 5.01-5.03 Mbit/s path (plateau)</text>"
    assert (plateau in dom) is (scenario != "vram_bound"), dom
    assert "mean request time by phase" in dom
    assert dom.count("<polyline") >= 4
    for advice in verdict.advice:
        assert advice.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in dom
    shot = chromium.screenshot(path.as_uri(), f"html-report-{scenario}.png")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    empty = chromium.screenshot(blank.as_uri(), "blank.png")
    # a drawn page compresses far worse than an empty one of the same size
    assert shot.stat().st_size > 5 * empty.stat().st_size, (shot.stat().st_size,
                                                            empty.stat().st_size)


def test_the_console_check_can_fail(tmp_path: Path) -> None:
    """The check above would see a broken page: a script error reaches the list."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>throw new Error('drawn wrong')"
                   "</script></body></html>", encoding="utf-8")
    page = chromium.render(bad.as_uri())
    assert any("drawn wrong" in line for line in page.console), page.stderr[-2000:]


def test_an_empty_run_still_renders() -> None:
    text = render_html([], overall_verdict([]), title="nothing", not_measured={"gpu": "none"})
    assert 'id="verdict">unknown</div>' in text and "<svg" not in text
