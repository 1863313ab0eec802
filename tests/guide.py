"""The command blocks of docs/deployment.md, as the tests run them.

Every fenced ``sh`` block in the guide is preceded by one of two markers:

- ``<!-- test: NAME -->``: a test runs this block's lines literally, with
  only the placeholders it declares substituted (host names, ports, the
  checkout's path). ``TESTED_BY`` says which test file runs which block.
- ``<!-- untested: REASON -->``: no machine here can run it (a real cluster,
  Grafana); the reason is printed in the guide too.

Lines that need systemd as PID 1 (``systemctl``, ``journalctl``) cannot run on
these machines; ``run_block`` leaves them out and returns them, so each test
states exactly which lines it did not run.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "deployment.md"

#: Which test file runs which block (tests/test_guide.py checks that every marked
#: block is here and that the file names the block).
TESTED_BY = {
    "host-install": "tests/test_guide_plain_host.py",
    "host-start": "tests/test_guide_systemd.py",
    "host-check": "tests/test_guide_plain_host.py",
    "prom-rules": "tests/test_guide_plain_host.py",
    "prom-config": "tests/test_guide_plain_host.py",
    "prom-check": "tests/test_guide_plain_host.py",
    "alertmanager-check": "tests/test_guide_plain_host.py",
    "k8s-image": "tests/test_image.py",
    "k8s-settings": "tests/test_guide.py",
    "prom-files": "tests/test_deploy.py",
    "image-run": "tests/test_image.py",
}

_MARKED = re.compile(r"^([ \t]*)<!-- (test|untested): ([^>]*?) -->\n[ \t]*```sh\n(.*?)^[ \t]*```",
                     re.MULTILINE | re.DOTALL)
_FENCE = re.compile(r"^[ \t]*```sh\n", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    kind: str  # "test" or "untested"
    name: str  # the block's name, or the reason it is untested
    text: str  # dedented

    @property
    def lines(self) -> list[str]:
        """Command lines, comments and blank lines dropped, continuations kept."""
        return [line for line in self.text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def blocks(text: str | None = None) -> list[Block]:
    section = guide_text() if text is None else text
    return [Block(kind, name.strip(), textwrap.dedent(body))
            for _indent, kind, name, body in _MARKED.findall(section)]


def unmarked_fences(text: str | None = None) -> int:
    """How many sh blocks of the guide carry no marker."""
    section = guide_text() if text is None else text
    return len(_FENCE.findall(section)) - len(_MARKED.findall(section))


def block(name: str) -> Block:
    (found,) = [b for b in blocks() if b.kind == "test" and b.name == name]
    return found


def needs_systemd(line: str) -> bool:
    return line.split(maxsplit=1)[0] in ("systemctl", "journalctl")


def substitute(text: str, substitutions: Mapping[str, str]) -> str:
    for old in sorted(substitutions, key=len, reverse=True):
        assert old in text, f"placeholder {old!r} is not in the guide's block:\n{text}"
        text = text.replace(old, substitutions[old])
    return text


def script(name: str, substitutions: Mapping[str, str], *,
           systemd: bool = False) -> tuple[str, list[str]]:
    """A bash script of block NAME with the placeholders substituted, without the
    lines that need systemd as PID 1 (returned beside it) unless ``systemd`` says
    the script runs where systemd is PID 1."""
    lines = block(name).lines
    skipped = [line for line in lines if needs_systemd(line) and not systemd]
    kept = [line for line in lines if line not in skipped]
    body = substitute("\n".join(kept), substitutions) if kept else ""
    return "set -euo pipefail\n" + body + "\n", skipped


def run_block(name: str, substitutions: Mapping[str, str], *, prefix: Sequence[str] = (),
              cwd: Path = REPO, env: Mapping[str, str] | None = None,
              timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run block NAME with bash (under ``prefix``, e.g. nsenter); returns the result
    and the lines left out because they need systemd."""
    text, skipped = script(name, substitutions)
    # nsenter starts in the namespace's root folder: go to cwd as a shell would be there
    text = f"cd {shlex.quote(str(cwd))}\n{text}"
    done = subprocess.run([*prefix, "bash", "-c", text], capture_output=True, text=True,
                          cwd=cwd, env=None if env is None else dict(env), timeout=timeout,
                          check=False)
    return done, skipped
