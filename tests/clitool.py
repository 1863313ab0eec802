"""Running the installed `ai-bottleneck` command as a user would: a subprocess with
a clean environment, its output captured."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = ("gpu_bound", "vram_bound", "network_bound", "cpu_bound", "balanced", "idle", "unknown")


def command() -> list[str]:
    """The console script of this environment (the editable install puts it beside
    the interpreter); the module itself where no script was installed."""
    script = Path(sys.executable).with_name("ai-bottleneck")
    if script.exists():
        return [str(script)]
    found = shutil.which("ai-bottleneck")
    return [found] if found else [sys.executable, "-m", "ai_bottleneck.cli"]


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH and a HOME of the test's own, nothing else from the developer's shell (no
    AI_BOTTLENECK_* variables, no proxies), plus ``extra``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "LANG": "C.UTF-8"}
    env.update(extra or {})
    return env


def fake_gpu_env(home: Path, state: Path, config: Path) -> dict[str, str]:
    """A clean environment whose GPU probe reads the fake NVML state file ``state``."""
    return clean_env(home, {
        "PYTHONPATH": str(REPO_ROOT),  # so the probe can import tests.fakes.fake_nvml
        "AI_BOTTLENECK_NVML_BACKEND": "tests.fakes.fake_nvml:from_env",
        "AI_BOTTLENECK_FAKE_NVML": str(state),
        "AI_BOTTLENECK_CONFIG": str(config),
    })


def run(args: Sequence[str], env: Mapping[str, str], cwd: Path,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command(), *args], env=dict(env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr naming ``fragments``."""
    assert_no_traceback(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("ai-bottleneck: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
