"""Where the path's limit is read from: [links] in the config, a tc shaper on this host
(real veth, real tbf and htb), and calls still running when a window ends (a real HTTP
server sending its answer slowly, seen by the real sampler)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from ai_bottleneck.config import ConfigError, parse_config
from ai_bottleneck.probes.capacity import Shapers, parse_htb_classes, parse_tc_qdiscs
from ai_bottleneck.probes.http import create as create_http
from ai_bottleneck.probes.nic import NicProbe, Options
from ai_bottleneck.probes.nic import create as create_nic
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.probes.vocabulary import IN_FLIGHT_LABELS
from ai_bottleneck.sampler import Sampler
from tests.netns import netns_link
from tests.servers import HttpServer, ServerConfig

PROBES = ("gpu", "host", "nic", "http", "download", "iperf3", "oom")


# -- [links] -----------------------------------------------------------------------

def test_links_reach_the_nic_probe_as_its_options() -> None:
    config = parse_config({"links": {"public_bits_per_second": "5Mbit",
                                     "nics": {"eth1": {"rx_bits_per_second": "1gbit",
                                                       "bits_per_second": "10gbit"}}}},
                          source="c.toml", known_probes=PROBES)
    nic = create_nic(config.probe_option_tables["nic"])
    links = nic.options.links
    assert links.public_bits_per_second == 5e6
    assert links.declared("eth1", "rx", public=False) == 1e9
    assert links.declared("eth1", "tx", public=False) == 1e10
    assert links.declared("eth1", "tx", public=True) == 5e6  # the tighter of the two
    assert links.declared("eth0", "rx", public=False) is None


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"public_bits_per_second": "fast"}, "links.public_bits_per_second", "not a bit rate"),
    ({"public_bits_per_second": 0}, "links.public_bits_per_second", "must be >= 1"),
    ({"nics": {"eth0": {"rate": "1gbit"}}}, "links.nics.eth0.rate", "unknown key"),
    ({"uplink": "1gbit"}, "links.uplink", "unknown key"),
])
def test_bad_links_are_one_line_naming_the_key(table: dict[str, object], key: str,
                                               problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"links": table}, source="c.toml", known_probes=PROBES)
    assert str(info.value).startswith(f"c.toml: {key}: ")
    assert problem in str(info.value)


# -- shapers, read with tc ---------------------------------------------------------

def test_tc_output_is_parsed_without_trusting_it() -> None:
    text = ('[{"kind":"noqueue","handle":"0:","dev":"lo","root":true,"options":{}},'
            '{"kind":"tbf","handle":"8021:","dev":"veth0","root":true,"options":'
            '{"rate":625000,"burst":4541,"lat":500000}},'
            '{"kind":"tbf","handle":"1:","dev":"veth1","parent":"2:","options":{"rate":1}}]')
    assert parse_tc_qdiscs(text) == {"veth0": 5e6}  # bytes/s in tc's JSON; root only
    assert parse_tc_qdiscs("not json") == {} == parse_tc_qdiscs('{"kind": "tbf"}')
    assert parse_htb_classes("class htb 1:10 root prio 0 rate 20Mbit ceil 30Mbit burst 1600b "
                             "cburst 1593b\nclass htb 1:20 parent 1:10 prio 0 rate 1Mbit "
                             "ceil 2Mbit burst 1600b cburst 1600b\n") == 30e6
    assert parse_htb_classes("") is None


def test_no_tc_program_means_no_shaper_rate() -> None:
    shapers = Shapers(program=None)
    assert not shapers.available and shapers.rates() == {} and shapers.rate("eth0") is None


@pytest.mark.root
def test_a_real_tbf_and_htb_are_read_from_tc() -> None:
    with netns_link(rate_in_bits_per_second=5e6) as link:
        shapers = Shapers()
        assert shapers.rate(link.host_dev) == pytest.approx(5e6, rel=0.01)
        subprocess.run(["tc", "qdisc", "replace", "dev", link.host_dev, "root", "handle", "1:",
                        "htb", "default", "10"], check=True, capture_output=True)
        subprocess.run(["tc", "class", "add", "dev", link.host_dev, "parent", "1:", "classid",
                        "1:10", "htb", "rate", "20mbit", "ceil", "30mbit"], check=True,
                       capture_output=True)
        assert shapers.rate(link.host_dev) == pytest.approx(5e6, rel=0.01)  # reused a while
        assert Shapers().rate(link.host_dev) == pytest.approx(30e6, rel=0.01)


@pytest.mark.root
def test_the_nic_probe_reports_the_shaper_and_judges_use_against_it(tmp_path: Path) -> None:
    with netns_link(rate_in_bits_per_second=8e6) as link:
        probe = NicProbe(Options(include=(link.host_dev,)))
        assert f"shaped: {link.host_dev} tx 8 Mbit/s" in probe.check().reason
        probe.sample()
        # Push about 1 MB through the 8 Mbit/s shaper in a second (a real UDP stream).
        sender = subprocess.Popen(["iperf3", "-c", link.ns_addr, "-u", "-b", "20M", "-t", "2",
                                   "-p", "5321"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        server = link.popen(["iperf3", "-s", "-1", "-p", "5321"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)
            (sample,) = [s for s in probe.sample() if s.labels.get("nic") == link.host_dev]
        finally:
            sender.kill()
            sender.wait(timeout=5)
            server.kill()
        values = sample.values
        assert values["shaped_tx_bits_per_second"] == pytest.approx(8e6, rel=0.01)
        assert values["link_speed_bits_per_second"] >= 1e9
        if values.get("tx_bits_per_second", 0.0) > 1e6:  # the stream got going in time
            assert values["tx_utilization_ratio"] == pytest.approx(
                values["tx_bits_per_second"] / 8e6)


# -- calls still running --------------------------------------------------------------

def test_a_running_call_reports_its_time_so_far_and_where_it_went() -> None:
    # 400 kB at 100 kB/s: four seconds of download after a quick answer.
    with HttpServer(ServerConfig("stream", body_bytes=400_000, body_rate=100_000)) as server:
        probe = create_http({"targets": [{"url": server.url("/big")}]})
        try:
            got: list[Sample] = []
            worker = threading.Thread(target=lambda: got.extend(probe.sample()))
            worker.start()
            time.sleep(1.5)
            running = probe.in_flight()
            worker.join(timeout=15)
        finally:
            probe.close()
        assert probe.in_flight() == []  # nothing runs any more
    (report,) = running
    assert dict(report.labels) == {"target": server.url("/big"), **IN_FLIGHT_LABELS}
    v = report.values
    assert 1.2 < v["in_flight_seconds"] < 4.0
    assert v["in_flight_network_seconds"] + v["in_flight_server_seconds"] == pytest.approx(
        v["in_flight_seconds"])
    assert v["in_flight_network_seconds"] > 0.8 * v["in_flight_seconds"]  # downloading
    assert v["in_flight_calls"] == 1.0
    (done,) = got
    assert done.error is None and done.values["total_seconds"] > v["in_flight_seconds"]


def test_the_sampler_reports_a_call_that_outlasts_its_interval() -> None:
    with HttpServer(ServerConfig("stream", body_bytes=300_000, body_rate=100_000)) as server:
        probe = create_http({"targets": [{"url": server.url("/big")}], "interval_seconds": 0.2})
        seen: list[Sample] = []
        sampler = Sampler([probe], 0.2,
                          consumer=lambda rounds: seen.extend(s for r in rounds for s in r.samples))
        stop = threading.Event()
        try:
            sampler.run(stop, duration_seconds=4.0)
        finally:
            sampler.close()
    running = [s for s in seen if s.labels.get("call") == "in_flight"]
    finished = [s for s in seen if "total_seconds" in s.values]
    assert running and finished
    elapsed = [s.values["in_flight_seconds"] for s in running]
    assert max(elapsed) > 1.0
    # Reported from the loop while the call ran: before the finished call came back.
    first_done = seen.index(finished[0])
    assert any(seen.index(s) < first_done for s in running)
