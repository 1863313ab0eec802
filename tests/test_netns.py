"""The namespace helper itself: the link works, the rate limit is real, cleanup is complete."""

from __future__ import annotations

import subprocess
import sys
import time

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


@pytest.mark.root
def test_a_hop_beyond_the_host_limits_what_arrives_and_shows_no_shaper_here() -> None:
    import json

    with netns_link() as link:
        link.set_hop_rate(20e6)
        here = json.loads(subprocess.run(["tc", "-j", "qdisc", "show", "dev", link.host_dev],
                                         capture_output=True, text=True, check=True).stdout)
        assert not any(q.get("kind") == "tbf" for q in here)
        link.popen(["iperf3", "-s", "-p", "5322", "-B", link.ns_addr],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(link, link.ns_addr, 5322)
        result: dict[str, object] = {}
        for _ in range(3):  # the server may still be busy with wait_for_port's connection
            done = subprocess.run(["iperf3", "-c", link.ns_addr, "-p", "5322", "-t", "3", "-J"],
                                  capture_output=True, text=True, timeout=30, check=False)
            result = json.loads(done.stdout or "{}")
            if "error" not in result and done.returncode == 0:
                break
            time.sleep(1.0)
        assert "error" not in result, result.get("error")
        received = result["end"]["sum_received"]["bits_per_second"]  # type: ignore[index]
        assert 0.8 * 20e6 < received < 1.1 * 20e6
        link.set_hop_rate(None)
        assert link.hop_rate_in_bits_per_second is None
