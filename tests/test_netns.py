"""The namespace helper itself: the link works, the rate limit is real, cleanup is complete."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.netns import netns_link, wait_for_port

pytestmark = pytest.mark.root


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


def test_link_pings_and_is_removed_after() -> None:
    with netns_link(rate_in_bits_per_second=10e6, rate_out_bits_per_second=10e6) as link:
        assert link.ns in _namespaces()
        server = link.popen([sys.executable, "-m", "http.server", "--bind", link.ns_addr,
                             "18080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(link, link.ns_addr, 18080)
        assert server.poll() is None
        server.terminate()
        server.wait(timeout=5)
        qd = subprocess.run(["tc", "qdisc", "show", "dev", link.host_dev], capture_output=True,
                            text=True, check=True).stdout
        assert "tbf" in qd and "10Mbit" in qd
        ns_name = link.ns
    assert ns_name not in _namespaces()


def test_cleanup_on_failure() -> None:
    name = ""
    with pytest.raises(RuntimeError), netns_link() as link:
        name = link.ns
        proc = link.popen(["sleep", "30"])
        assert proc.pid > 0
        raise RuntimeError("test failed mid-way")
    assert name and name not in _namespaces()
    assert proc.wait(timeout=5) is not None
