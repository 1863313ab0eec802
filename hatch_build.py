"""Wheel build hook: writes the source revision into the package as ai_bottleneck/REVISION.

The agent's ``build_info`` metric carries it (ai_bottleneck.state.build_revision).
The revision is $AI_BOTTLENECK_REVISION when set (an image build from an exported
tree), else ``git rev-parse HEAD`` of the checkout, else "unknown". The file is
written to a temporary folder, never into the tree, so a read-only checkout builds.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _revision(root: str) -> str:
    env = os.environ.get("AI_BOTTLENECK_REVISION", "").strip()
    if env:
        return env
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


class RevisionHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        folder = Path(tempfile.mkdtemp(prefix="ai-bottleneck-build-"))
        path = folder / "REVISION"
        path.write_text(_revision(self.root) + "\n", encoding="utf-8")
        build_data.setdefault("force_include", {})[str(path)] = "ai_bottleneck/REVISION"
