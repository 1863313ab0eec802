"""The agent's own timed HTTP calls are not load: a call to an inference endpoint runs the
model, so an idle GPU serving nothing but the agent's calls shows their time as activity,
and their bodies cross the NIC. Found by the scenario lab: its idle phase (the http probe
posting a 75 kB image to /infer twice a second) read as `balanced` at 10% GPU activity and
1.2 Mbit/s on the service's link."""

from __future__ import annotations

from ai_bottleneck.classifier import classify
from ai_bottleneck.labels import Label
from tests.synth import H100, gpu, host, http, nic, window_of

QUIET_HOST = host(cpu=0.05, busiest=0.1)
# The lab's idle phase: one call a second (the window repeats each part once a second),
# 55 ms in the server each, 75 kB up, 1 kB back.
OWN_CALL = http(total=0.07, upload=0.01, server=0.055, download=0.001, request_bytes=75e3,
                response_bytes=1e3)


def label(*parts: object) -> tuple[Label, tuple[str, ...]]:
    c = classify(window_of(*parts))  # type: ignore[arg-type]
    return c.label, c.evidence


def test_gpu_activity_the_own_calls_explain_is_idle() -> None:
    # A kernel ran 5.5% of the time: exactly the calls' server time (10 x 55 ms in 10 s).
    got, evidence = label(gpu(util=0.055, sm=0.03, name=H100), QUIET_HOST, OWN_CALL)
    assert got is Label.IDLE
    assert any("agent's own timed calls account for up to 6% of the service's time" in e
               for e in evidence), evidence
    assert any("GPU activity beyond the agent's own calls at most 0%" in e for e in evidence)


def test_activity_beyond_the_own_calls_is_load() -> None:
    # 15% busy while the calls explain 5.5%: someone else is being served.
    got, _ = label(gpu(util=0.15, sm=0.1, name=H100), QUIET_HOST, OWN_CALL)
    assert got is Label.BALANCED


def test_queueing_behind_other_work_is_not_counted_as_the_own_share() -> None:
    # Calls that wait in a queue take 0.5 s in the server, but the fastest took 55 ms:
    # only 10 x 55 ms are the agent's, so 30% activity is load.
    calls = [http(total=0.6, server=s, upload=0.01, request_bytes=75e3)
             for s in (0.055, 0.5)]
    got, _ = label(gpu(util=0.3, sm=0.2, name=H100), QUIET_HOST, *calls)
    assert got is Label.BALANCED


def test_the_own_calls_bytes_on_the_link_are_not_traffic() -> None:
    # The calls move 76 kB a second: 0.67 Mbit/s on the wire with TCP/IP's overhead. Of
    # 1.2 Mbit/s on the NIC that leaves 0.53 Mbit/s, under the 1 Mbit/s floor: idle...
    got, evidence = label(gpu(util=0.0, name=H100), QUIET_HOST, nic(rx=1e5, tx=1.1e6),
                          OWN_CALL)
    assert got is Label.IDLE, evidence
    assert any("network traffic beyond the agent's own calls" in e for e in evidence)
    # ... while of 2.5 Mbit/s, 1.8 Mbit/s are someone else's: load.
    got, _ = label(gpu(util=0.0, name=H100), QUIET_HOST, nic(rx=1e5, tx=2.4e6), OWN_CALL)
    assert got is Label.BALANCED


def test_without_http_calls_nothing_is_discounted() -> None:
    got, evidence = label(gpu(util=0.055, name=H100), QUIET_HOST)
    assert got is Label.BALANCED
    assert not any("own" in e for e in evidence)
