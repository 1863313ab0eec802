"""Command-line habits: help, version, check-config, Go durations, --fail-on, the
report only on a pipe, colour, --since/--until, and the live progress line."""

from __future__ import annotations

import io
import json
import math
import re
import time
from pathlib import Path

import pytest

from ai_bottleneck.pipeline import Labeller, WindowResult
from ai_bottleneck.progress import ProgressLine, progress_text
from tests import clitool, synth

LAB = Path(__file__).parent / "data" / "lab"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(tmp_path / "none.toml")})


def test_bare_command_prints_help_and_exits_0(tmp_path: Path, env: dict[str, str]) -> None:
    proc = clitool.run([], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ai-bottleneck")
    commands = proc.stdout[proc.stdout.index("Commands:"):]
    for name in ("check-config", "diagnose", "probes", "replay", "run"):
        assert f"  {name}  " in commands
    assert "..." not in commands  # whole sentences, wrapped, not cut
    assert "_AI_BOTTLENECK_COMPLETE=bash_source" in proc.stdout


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(tmp_path: Path, env: dict[str, str], flag: str) -> None:
    proc = clitool.run([flag], env, tmp_path)
    assert proc.returncode == 0
    assert re.fullmatch(r"ai-bottleneck, version \d+\.\d+\.\d+\S*\n", proc.stdout)


def test_check_config_accepts_a_good_file(tmp_path: Path, env: dict[str, str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[agent]\nwindow_seconds = "1m30s"\n[probes.http]\n'
                    'targets = [{url = "http://127.0.0.1:9/"}]\n', encoding="utf-8")
    proc = clitool.run(["check-config", str(good)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{good}: ok\n"


def test_check_config_and_probes_give_one_line_per_problem(tmp_path: Path,
                                                          env: dict[str, str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[probes.http]\ntargets = [{url = "ftp://x"}]\n'
                   '[probes.download]\nurl = "nope"\n', encoding="utf-8")
    for args in (["check-config", str(bad)], ["probes", "--config", str(bad)]):
        proc = clitool.run(args, env, tmp_path)
        clitool.assert_no_traceback(proc)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 2, proc.stderr
        assert any("probes.http.targets[0]" in line and "ftp://x" in line for line in lines)
        assert any("probes.download" in line and "'nope'" in line for line in lines)
        assert all(line.startswith(f"ai-bottleneck: error: {bad}: ") for line in lines)


def test_check_config_names_a_file_that_does_not_parse(tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[agent\n", encoding="utf-8")
    clitool.assert_one_line_error(clitool.run(["check-config", str(bad)], env, tmp_path),
                                  str(bad), "TOML")


def test_go_durations_are_accepted_and_bad_ones_named(tmp_path: Path,
                                                      env: dict[str, str]) -> None:
    proc = clitool.run(["replay", str(LAB / "idle.jsonl.gz"), "--window", "1m30s", "--json"],
                       env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["end"] - first["start"] == 90
    clitool.assert_one_line_error(
        clitool.run(["replay", str(LAB / "idle.jsonl.gz"), "--window", "1m30"], env, tmp_path),
        "--window", "1m30s")


def test_replay_on_a_pipe_prints_the_report_only(tmp_path: Path, env: dict[str, str]) -> None:
    proc = clitool.run(["replay", str(LAB / "transitions.jsonl.gz")], env, tmp_path)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert "\x1b[" not in proc.stdout and "\r" not in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    wide = clitool.run(["replay", str(LAB / "transitions.jsonl.gz")],
                       {**env, "COLUMNS": "120"}, tmp_path)
    assert max(len(line) for line in wide.stdout.splitlines()) > 80


def test_colour_follows_the_flag_and_no_color(tmp_path: Path, env: dict[str, str]) -> None:
    path = str(LAB / "gpu_bound.jsonl.gz")
    always = clitool.run(["replay", path, "--color=always"], env, tmp_path).stdout
    assert "\x1b[1;31mgpu_bound\x1b[0m" in always
    plain = clitool.run(["replay", path], env, tmp_path).stdout
    assert ANSI.sub("", always) == plain
    # auto never colours a pipe; NO_COLOR is for auto, an explicit flag wins
    assert clitool.run(["replay", path, "--color=never"], env, tmp_path).stdout == plain
    assert "\x1b[" in clitool.run(["replay", path, "--color=always"],
                                  {**env, "NO_COLOR": "1"}, tmp_path).stdout


def test_since_and_until_select_a_span(tmp_path: Path, env: dict[str, str]) -> None:
    path = str(LAB / "transitions.jsonl.gz")
    every = [json.loads(line) for line in
             clitool.run(["replay", path, "--json"], env, tmp_path).stdout.splitlines()]
    since, until = every[6]["start"], every[11]["start"]
    proc = clitool.run(["replay", path, "--json", "--since", str(since), "--until", str(until)],
                       env, tmp_path)
    assert [json.loads(line) for line in proc.stdout.splitlines()] == every[6:11]
    text = clitool.run(["replay", path, "--since", str(since), "--until", str(until)],
                       {**env, "TZ": "UTC"}, tmp_path).stdout
    assert "5 windows between" in text.splitlines()[0]
    assert "VERDICT  network_bound" in text
    # the same span as clock times on the recording's day, and as ISO date-times
    utc = {**env, "TZ": "UTC"}
    for fmt in ("%H:%M:%S", "%Y-%m-%dT%H:%M:%S"):  # windows start 0.05 s past a second
        a = time.strftime(fmt, time.gmtime(math.ceil(since)))
        b = time.strftime(fmt, time.gmtime(math.floor(until)))
        proc = clitool.run(["replay", path, "--json", "--since", a, "--until", b], utc, tmp_path)
        assert [json.loads(line) for line in proc.stdout.splitlines()] == every[6:11], fmt
    clitool.assert_one_line_error(clitool.run(["replay", path, "--since", "teatime"], env,
                                              tmp_path), "--since", "teatime")


def test_windows_lists_every_window(tmp_path: Path, env: dict[str, str]) -> None:
    path = str(LAB / "transitions.jsonl.gz")
    text = clitool.run(["replay", path, "--windows"], env, tmp_path).stdout
    listed = text[text.index("\nWINDOWS\n"):].splitlines()[2:]
    assert len(listed) == 22


@pytest.mark.slow
def test_fail_on_exits_3_when_the_verdict_is_listed(tmp_path: Path,
                                                    env: dict[str, str]) -> None:
    config = tmp_path / "host-only.toml"
    config.write_text("[agent]\ninterval_seconds = 0.5\n" + "".join(
        f"[probes.{p}]\nenabled = false\n" for p in ("gpu", "nic", "http", "download",
                                                     "iperf3", "oom")), encoding="utf-8")
    env = {**env, "AI_BOTTLENECK_CONFIG": str(config)}
    every = ",".join(clitool.LABELS)
    proc = clitool.run(["diagnose", "--duration", "2s", "--window", "1s", "--json",
                        "--fail-on", every], env, tmp_path)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    verdict = json.loads(proc.stdout)["verdict"]["label"]
    assert verdict in clitool.LABELS
    clitool.assert_one_line_error(
        clitool.run(["diagnose", "--duration", "2s", "--fail-on", "slow"], env, tmp_path),
        "--fail-on", "slow")


# -- the live progress line ---------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _window() -> WindowResult:
    parts = (synth.gpu(util=0.42, sm=0.4), synth.host(cpu=0.63),
             synth.nic(rx=1e8, tx=9e8, link=1e9), synth.http(total=1.25))
    return next(iter(Labeller(10.0, origin=synth.T0).run(synth.scene(*parts))))


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_progress_fits_one_line_with_the_leading_numbers(width: int) -> None:
    text = progress_text(95.0, 300.0, _window(), width)
    assert len(text) < width and "\n" not in text
    assert text.startswith("sampling 1m35s/5m00s")
    if width >= 120:
        for part in ("now ", "GPU 40%", "CPU 63%", "link 90%", "p95 1.25 s"):
            assert part in text, text


def test_progress_redraws_in_place_and_only_on_a_terminal() -> None:
    term = _Terminal()
    line = ProgressLine(term)
    line(1.0, 10.0, None)
    line(5.0, 10.0, _window())
    line.done()
    out = term.getvalue()
    assert out.count("\r") == 3 and out.count("\x1b[K") == 3 and "\n" not in out
    assert "first window pending" in out
    pipe = io.StringIO()
    quiet = ProgressLine(pipe)
    quiet(1.0, 10.0, None)
    quiet.done()
    assert pipe.getvalue() == ""


def test_shell_completion_comes_from_click(tmp_path: Path, env: dict[str, str]) -> None:
    """docs/cli.md's line: the script installs, and it completes commands and values."""
    script = clitool.run([], {**env, "_AI_BOTTLENECK_COMPLETE": "bash_source"}, tmp_path)
    assert script.returncode == 0
    assert "complete -o nosort -F _ai_bottleneck_completion ai-bottleneck" in script.stdout

    def complete(words: str, cword: int) -> list[str]:
        proc = clitool.run([], {**env, "_AI_BOTTLENECK_COMPLETE": "bash_complete",
                                "COMP_WORDS": words, "COMP_CWORD": str(cword)}, tmp_path)
        return [line.split(",", 1)[1] for line in proc.stdout.splitlines()]

    assert complete("ai-bottleneck che", 1) == ["check-config"]
    assert complete("ai-bottleneck replay x --color ", 4) == ["auto", "always", "never"]


def test_an_html_path_that_cannot_be_written_is_refused_before_any_work(
        tmp_path: Path, env: dict[str, str]) -> None:
    path = str(LAB / "idle.jsonl.gz")
    missing = tmp_path / "no-such-folder" / "r.html"
    clitool.assert_one_line_error(clitool.run(["replay", path, "--html", str(missing)], env,
                                              tmp_path), "--html", "does not exist")
    clitool.assert_one_line_error(
        clitool.run(["diagnose", "--duration", "1s", "--html", str(missing)], env, tmp_path),
        "--html", "does not exist")


@pytest.mark.parametrize(("mode", "tty", "extra", "expected"), [
    ("auto", True, {}, True), ("auto", False, {}, False),
    ("auto", True, {"NO_COLOR": "1"}, False), ("auto", True, {"NO_COLOR": ""}, True),
    ("auto", True, {"TERM": "dumb"}, False), ("always", False, {"NO_COLOR": "1"}, True),
    ("never", True, {}, False),
])
def test_colour_decision(mode: str, tty: bool, extra: dict[str, str], expected: bool) -> None:
    from ai_bottleneck.termstyle import use_color

    stream = _Terminal() if tty else io.StringIO()
    assert use_color(mode, stream, {"TERM": "xterm", **extra}) is expected
