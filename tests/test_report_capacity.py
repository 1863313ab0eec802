"""A link's use reads the same in every report as in the classifier's evidence, whatever
the path's capacity came from: a plateau, a throughput test (iperf3, download), a rate
declared in [links] or the link speed.

The evidence says "eth0 rx at 98% of 7.6 Mbit/s (the plateau it held ...)"; the key
numbers, the busiest-link figure, the progress line, the HTML report (and so the live
page, which renders it) and `replay --json` must not say 0% of 10 Gbit/s beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ai_bottleneck.assembly import RunPipeline, assemble_replay
from ai_bottleneck.exporter import Exposition
from ai_bottleneck.figures import run_figures
from ai_bottleneck.html_report import report_main
from ai_bottleneck.live_page import LivePage
from ai_bottleneck.pipeline import Labeller, WindowResult
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.progress import leading_numbers
from ai_bottleneck.report import ReportOptions, render
from ai_bottleneck.state import AgentState
from ai_bottleneck.units import bits, pct
from ai_bottleneck.verdict import overall_verdict
from tests.promtool import run_promtool
from tests.synth import T0, Part, gpu, host, http, scene, tcp, throughput_sample

LAB = Path(__file__).parent / "data" / "lab"
SCENARIOS = sorted(p.name.removesuffix(".jsonl.gz") for p in LAB.glob("*.jsonl.gz"))
#: A NIC direction's share of a capacity in the evidence: "eth0 rx at 98% of 7.6 Mbit/s".
EVIDENCE_USE = re.compile(r"(?:^|busiest NIC |: )(\S+) (rx|tx) at (\d+%) of ")


def _nic(*, rx: float = 1e5, tx: float = 1e5, jitter: float = 0.0) -> Part:
    """eth0 on a 10 Gbit/s link; ``jitter``: every other reading that much lower."""
    def part(t: float) -> Sample:
        dip = 1.0 - (jitter if int(t) % 2 else 0.0)
        return Sample(t, "nic", {"nic": "eth0"}, {
            "rx_bits_per_second": rx * dip, "tx_bits_per_second": tx * dip,
            "link_speed_bits_per_second": 10e9})
    return part


def _windows(*parts: Part, extra: tuple[Sample, ...] = ()) -> list[WindowResult]:
    samples = sorted([*scene(*parts, seconds=20), *extra], key=lambda s: s.t)
    return list(Labeller(10.0, origin=T0).run(samples))


QUIET = (gpu(util=0.05), host(cpu=0.10, busiest=0.2),
         http(total=0.2, upload=0.01, server=0.18, download=0.01))

CASES = {
    # an answer stream held flat near 7.6 Mbit/s while TCP retransmits 7%
    "plateau": ((*QUIET, _nic(rx=7.6e6, jitter=0.05), tcp(0.07)), (),
                "rx", "7.6 Mbit/s path (plateau)"),
    # bulk uploads at 38 Mbit/s where an iperf3 test got 38.3
    "iperf3": ((*QUIET, _nic(tx=38e6)),
               (throughput_sample(T0 + 2, "iperf3", "10.0.0.2", 38.3e6),
                throughput_sample(T0 + 12, "iperf3", "10.0.0.2", 38.3e6)),
               "tx", "38.3 Mbit/s path (iperf3)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_report_shows_the_evidence_figure_for_a_path_found_full(case: str) -> None:
    parts, extra, direction, capacity = CASES[case]
    results = _windows(*parts, extra=extra)
    assert [r.raw_label for r in results] == ["network_bound", "network_bound"]
    evidence = [m for e in results[-1].evidence if (m := EVIDENCE_USE.search(e))]
    assert [(m[1], m[2]) for m in evidence] == [("eth0", direction)], results[-1].evidence
    figure = evidence[0][3]  # e.g. "98%": the link speed alone would give 0%
    assert figure in ("98%", "99%", "100%")

    text = render(results, overall_verdict(results), title="t", not_measured={},
                  options=ReportOptions(width=80))
    row = next(line for line in text.splitlines() if line.startswith("  eth0 "))
    assert row.split()[-1] == f"{figure[:-1]}/{figure}", text  # USE: mean/highest window
    assert f"eth0 USE: {direction} {figure} of {capacity} 2w" in text, text

    # the progress line while sampling, and what `replay --json` prints
    assert f"link {figure}" in leading_numbers(results[-1])
    out = results[-1].to_json()["saturations"]
    assert [(s["nic"], s["direction"]) for s in out] == [("eth0", direction)]
    assert pct(min(out[0]["utilization_ratio"], 1.0)) == figure

    # the HTML report and the live page: the key numbers, and the capacity drawn
    page = report_main(results, overall_verdict(results), title="t", not_measured={})
    live = LivePage(clock=lambda: results[-1].end)
    for r in results:
        live.add(r)
    for html in (page, live.render().decode()):
        assert f"eth0 USE: {direction} {figure} of {capacity} 2w" in html
        assert f'class="ml">{direction} {capacity}</text>' in html


def test_the_busiest_link_figure_names_the_path_it_is_against() -> None:
    """In a run where the label held only part of the windows, the verdict's leading
    numbers say which capacity the busiest link's share is of."""
    idle = _windows(gpu(util=0.0), host(cpu=0.01), _nic())
    full = _windows(*CASES["plateau"][0])
    full = [WindowResult(**{**r.__dict__, "start": r.start + 20, "end": r.end + 20})
            for r in full]
    text = render([*idle, *full], overall_verdict([*idle, *full]), title="t",
                  not_measured={}, options=ReportOptions(width=200))
    figure = next(m[3] for e in full[-1].evidence if (m := EVIDENCE_USE.search(e)))
    assert f"busiest link rx {figure} of 7.6 Mbit/s path (plateau)," in text, text


def test_a_window_of_another_label_words_the_full_path_the_same() -> None:
    """A path found full beside a GPU at half its capacity reads balanced; its evidence
    and advice name the busiest link by the plateau's figure, as the reports do, not
    as 0% of the 10 Gbit/s link speed."""
    results = _windows(gpu(util=0.5), host(cpu=0.10),
                       http(total=0.2, upload=0.01, server=0.18, download=0.01),
                       _nic(rx=7.6e6, jitter=0.05), tcp(0.07))
    r = results[-1]
    assert r.raw_label == "balanced"
    words = "eth0 rx at 98% of 7.6 Mbit/s (the plateau it held"
    assert any(e.startswith(f"busiest NIC {words}") for e in r.evidence), r.evidence
    assert f"Closest to its limit: {words}" in r.advice[0]
    text = render(results, overall_verdict(results), title="t", not_measured={},
                  options=ReportOptions(width=80))
    row = next(line for line in text.splitlines() if line.startswith("  eth0 "))
    assert row.split()[-1] == "98/98%", text


def test_a_declared_rate_is_named_where_the_link_speed_is_not_the_capacity() -> None:
    results, _ = _lab("purchased_rate")
    text = render(results, overall_verdict(results), title="t", not_measured={},
                  options=ReportOptions(width=120))
    assert "USE: tx 73% of 20 Mbit/s path (declared) 7w" in text
    assert "busiest link tx 84% of 20 Mbit/s path (declared)" in text


def _lab(name: str) -> tuple[list[WindowResult], dict[str, str]]:
    run = assemble_replay(LAB / f"{name}.jsonl.gz")
    return list(run.results), dict(run.labeller.unavailable)


@pytest.mark.parametrize("name", SCENARIOS)
def test_link_figures_agree_with_the_evidence_in_every_lab_recording(name: str) -> None:
    """For every window of every lab recording: each percentage the evidence gives a NIC
    direction is the one the key numbers give that window, and the run's key numbers
    (per direction, highest window) are no lower."""
    results, _ = _lab(name)
    whole = {n.name: n for n in run_figures(results).nics}
    checked = 0
    for r in results:
        nics = {n.name: n for n in run_figures([r]).nics}
        for text in (*r.evidence, *r.advice):
            for m in EVIDENCE_USE.finditer(text):
                nic, direction, figure = m[1], m[2], m[3]
                use = getattr(nics[nic], f"{direction}_use")
                assert pct(use.mean) == figure, (name, r.start, text)
                assert use.mean is not None and use.mean <= (
                    getattr(whole[nic], f"{direction}_use").max or 0.0)
                checked += 1
    if name in ("egress_big_answers", "internal_hop", "network_bound", "purchased_rate",
                "transitions"):
        assert checked, f"{name}: no NIC figure in any window's evidence"


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_give_the_evidence_figure_and_what_it_is_against(case: str) -> None:
    """/metrics as the agent serves it: the pipeline puts each window in the state."""
    parts, extra, direction, capacity = CASES[case]
    state = AgentState(clock=lambda: T0 + 20)
    pipeline = RunPipeline(Labeller(10.0, origin=T0), state=state)
    samples = sorted([*scene(*parts, seconds=20), *extra], key=lambda s: s.t)
    results = [*pipeline.replay(samples), *pipeline.finish()]
    figure = next(m[3] for e in results[-1].evidence if (m := EVIDENCE_USE.search(e)))
    body = Exposition(state, process_metrics=False).render()[0].decode()
    lines = dict(line.rsplit(" ", 1) for line in body.splitlines()
                 if line.startswith("ai_bottleneck_nic_path_"))
    ratio = float(lines[f'ai_bottleneck_nic_path_utilization_ratio{{nic="eth0",'
                        f'direction="{direction}"}}'])
    assert pct(ratio) == figure
    basis = capacity.split("(")[1].rstrip(")")
    rate = float(lines[f'ai_bottleneck_nic_path_capacity_bytes_per_second{{nic="eth0",'
                       f'direction="{direction}",basis="{basis}"}}'])
    assert f"{bits(rate * 8)} path ({basis})" == capacity
    promtool_check = run_promtool(["check", "metrics"], stdin=body.encode())
    assert promtool_check.returncode == 0, promtool_check.stdout + promtool_check.stderr
