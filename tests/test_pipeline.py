"""The shared pipeline: live feeding and replaying its recording give the same labels."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ai_bottleneck.assembly import assemble_replay as replay
from ai_bottleneck.pipeline import Labeller, WindowResult
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import RecordWriter, make_header
from ai_bottleneck.thresholds import Thresholds
from ai_bottleneck.verdict import overall_verdict
from tests.synth import (
    T0,
    gpu_sample,
    host_sample,
    http_sample,
    nic_sample,
    oom_sample,
    skipped_sample,
)

GPU_BOUND = dict(gpu=(1.0, 0.92), cpu=0.3, rx=1e7, http=(3.0, 0.02, 2.9))
NET_BOUND = dict(gpu=(0.08, 0.05), cpu=0.1, rx=9.5e8, http=(6.0, 5.7, 0.2))
IDLE = dict(gpu=(0.0, 0.0), cpu=0.05, rx=1e4, http=(0.1, 0.01, 0.08))
CPU_BOUND = dict(gpu=(0.2, 0.1), cpu=0.97, rx=1e6, http=(2.0, 0.02, 1.9))


def tick(t: float, phase: dict[str, object], oom: float = 0.0) -> list[Sample]:
    util, sm = phase["gpu"]  # type: ignore[misc]
    total, upload, server = phase["http"]  # type: ignore[misc]
    return [
        gpu_sample(t, 0, util=util, sm=sm, mem=0.5),
        gpu_sample(t + 0.01, 1, util=util * 0.9, sm=sm * 0.9, mem=0.5),
        host_sample(t + 0.02, cpu=phase["cpu"], psi=0.5 if phase["cpu"] == 0.97 else 0.0),  # type: ignore[arg-type]
        nic_sample(t + 0.03, rx=phase["rx"], tx=1e5),  # type: ignore[arg-type]
        http_sample(t + 0.04, total=total, upload=upload, server=server, download=0.01,
                    request_bytes=5e6, concurrency=2.0),
        oom_sample(t + 0.05, events=oom),
    ]


def session(seed: int = 1, jitter: float = 0.0) -> list[Sample]:
    """Phases of a run, 10 s windows at 1 Hz: idle, GPU-bound, a flapping stretch,
    network-bound, an OOM, CPU-bound. With ``jitter``, samples arrive up to that
    many seconds out of order, as probe threads would hand them over."""
    rng = random.Random(seed)
    plan = ([IDLE] * 30 + [GPU_BOUND] * 40
            + ([GPU_BOUND] * 10 + [NET_BOUND] * 10) * 3
            + [NET_BOUND] * 40 + [CPU_BOUND] * 40)
    samples: list[Sample] = []
    for i, phase in enumerate(plan):
        samples += tick(T0 + i, phase, oom=1.0 if i == 185 else 0.0)
    samples.append(skipped_sample(T0 + 12.5, "iperf3", "traffic budget spent"))
    samples.sort(key=lambda s: s.t)
    if jitter:
        arrival = sorted(samples, key=lambda s: s.t + rng.uniform(0.0, jitter))
        return arrival
    return samples


def labels(results: list[WindowResult]) -> list[str]:
    return [r.label for r in results]


def live(samples: list[Sample], **kw: object) -> list[WindowResult]:
    labeller = Labeller(10.0, **kw)  # type: ignore[arg-type]
    out: list[WindowResult] = []
    for s in samples:
        out += labeller.feed(s)
    return out + labeller.finish()


def record(path: Path, samples: list[Sample], labeller: Labeller) -> None:
    with RecordWriter(path, make_header(**labeller.header_fields())) as w:
        for s in samples:
            w.write(s)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_replaying_a_recording_gives_the_live_labels(tmp_path: Path, suffix: str) -> None:
    samples = session(jitter=1.5)
    th = Thresholds(latency_objective_seconds=1.5, hysteresis_windows=2)
    unavailable = {"download": "no URL configured"}
    labeller = Labeller(10.0, th, unavailable=unavailable, expected_probes=["gpu", "host"])
    live_results: list[WindowResult] = []
    for s in samples:
        live_results += labeller.feed(s)
    live_results += labeller.finish()
    path = tmp_path / f"run{suffix}"
    record(path, samples, labeller)

    rep = replay(path)
    replayed = list(rep.results)
    assert rep.stats.samples == len(samples)
    assert [r.to_json() for r in replayed] == [r.to_json() for r in live_results]
    assert rep.labeller.thresholds == th  # restored from the header, not passed again
    assert replayed[0].probes["download"] == "unavailable: no URL configured"
    assert {"gpu_bound", "network_bound", "vram_bound", "cpu_bound", "idle"} <= set(
        labels(replayed))


def test_feed_feed_many_and_run_agree() -> None:
    samples = session(jitter=1.0)
    one = live(samples)
    batched = Labeller(10.0)
    by_batch: list[WindowResult] = []
    for i in range(0, len(samples), 7):  # the sampler hands the pipeline batches
        by_batch += batched.feed_many(samples[i:i + 7])
    by_batch += batched.finish()
    by_run = list(Labeller(10.0).run(samples))
    assert [r.to_json() for r in one] == [r.to_json() for r in by_batch] == [
        r.to_json() for r in by_run]


def test_arrival_order_within_the_reorder_delay_does_not_change_labels() -> None:
    in_order = live(session())
    jittered = live(session(jitter=1.5))
    assert [(r.start, r.raw_label, r.label) for r in jittered] == [
        (r.start, r.raw_label, r.label) for r in in_order]
    assert all(r.late_samples == 0 for r in jittered)


def test_flapping_windows_give_a_steady_label_and_an_oom_switches_at_once() -> None:
    results = live(session())
    flapping = results[7:13]  # the GPU-bound / network-bound stretch, 10 s each
    assert [r.raw_label for r in flapping] == ["gpu_bound", "network_bound"] * 3
    # The first whole network-bound window settles a change from the established
    # gpu_bound; network_bound then never holds two windows in a row, so it stays.
    assert labels(flapping) == ["gpu_bound"] + ["network_bound"] * 5
    assert all(r.held for r in flapping if r.raw_label != r.label)
    # The change back is not judged for settling: network_bound has not yet held.
    assert "is new itself" in flapping[2].evidence[0]
    plain = live(session(), thresholds=Thresholds(hysteresis_settled_at_once=False))
    assert set(labels(plain[7:13])) == {"gpu_bound"}
    oom_window = next(r for r in results if r.hard)
    assert oom_window.start == T0 + 180
    assert (oom_window.raw_label, oom_window.label) == ("vram_bound", "vram_bound")
    assert oom_window.transition is not None and oom_window.transition.hard
    assert oom_window.confidence == 1.0


def test_window_json_carries_the_contract_fields() -> None:
    results = live(session())
    obj = json.loads(json.dumps(results[5].to_json(), allow_nan=False))
    assert {"start", "end", "label", "confidence", "evidence"} <= set(obj)
    assert obj["end"] - obj["start"] == 10.0
    assert 0.0 <= obj["confidence"] <= 1.0
    assert obj["evidence"] and all(isinstance(e, str) for e in obj["evidence"])
    assert obj["label"] == "gpu_bound"
    assert obj["summary"]["gpu"]["0"]["busy_signal"] == "sm_active"
    assert obj["summary"]["http"]["http://inference.test/v1/run"]["p95_total_seconds"] == 3.0
    assert "iperf3" not in obj["probes"]  # periodic: named only where it ran (or skipped)
    first = json.loads(json.dumps(results[0].to_json()))
    assert first["transition"] == {"at": T0, "from": None, "to": "idle", "windows": 1,
                                   "hard": False, "settled": False, "recurring": False}
    assert results[1].to_json()["probes"]["iperf3"].startswith("skipped")


def test_overall_verdict() -> None:
    results = live(session())
    verdict = overall_verdict(results)
    assert verdict.label == "vram_bound"  # hard evidence anywhere wins
    assert verdict.confidence == 1.0
    assert verdict.reasons[0] == f"hard evidence in 1 of {len(results)} windows"
    assert verdict.windows == len(results)
    obj = json.loads(json.dumps(verdict.to_json(), allow_nan=False))
    assert {"label", "confidence", "reasons", "advice", "label_windows",
            "transitions"} <= set(obj)

    no_oom = [r for r in results if not r.hard]
    v = overall_verdict(no_oom)
    assert v.label == max(v.label_windows, key=lambda k: v.label_windows[k])
    assert v.label not in ("idle", "unknown")
    assert 0.0 < v.confidence < 1.0

    mostly_idle = [r for r in results if r.label == "idle"] * 9 + [
        r for r in results if r.label == "cpu_bound"][:1]
    assert overall_verdict(mostly_idle).label == "idle"  # a blip is not the verdict

    empty = overall_verdict([])
    assert (empty.label, empty.confidence, empty.windows) == ("unknown", 0.0, 0)


def test_header_with_unknown_threshold_keys_is_accepted(tmp_path: Path) -> None:
    header = make_header(window_seconds=5.0, thresholds={"latency_objective_seconds": 2.0,
                                                         "from_a_newer_version": 1})
    labeller = Labeller.from_header(header)
    assert labeller.window_seconds == 5.0
    assert labeller.thresholds.latency_objective_seconds == 2.0
    assert Labeller.from_header(header, window_seconds=30.0).window_seconds == 30.0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("window_seconds", "ten", "header.window_seconds"),
    ("window_seconds", 0, "header.window_seconds"),
    ("thresholds", {"gpu_low_utilization_ratio": 2.0}, "header.thresholds"),
    ("thresholds", [1, 2], "header.thresholds"),
])
def test_a_malformed_header_is_one_clear_error(field: str, value: object,
                                               message: str) -> None:
    with pytest.raises(OptionError, match=message):
        Labeller.from_header(make_header(**{field: value}))


def test_replay_of_a_file_with_a_bad_header_closes_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(make_header(window_seconds=-1)) + "\n")
    with pytest.raises(OptionError):
        replay(path)  # filterwarnings=error turns an unclosed file into a failure


# -- settling a change within one window ---------------------------------------------

def ticks(plan: list[dict[str, object]]) -> list[Sample]:
    return [s for i, phase in enumerate(plan) for s in tick(T0 + i, phase)]


def test_a_change_before_a_window_is_published_with_that_window() -> None:
    results = live(ticks([IDLE] * 30 + [GPU_BOUND] * 20))
    assert [(r.raw_label, r.label) for r in results[2:5]] == [
        ("idle", "idle"), ("gpu_bound", "gpu_bound"), ("gpu_bound", "gpu_bound")]
    change = results[3]
    assert change.transition is not None and change.transition.settled
    assert change.transition.windows == 1
    assert change.evidence[-1] == ("changed from idle after one window: gpu_bound holds in "
                                   "its second half and idle in neither half")


def test_a_change_inside_a_window_waits_for_the_next_one() -> None:
    # GPU load starts at second 27: window 2 straddles it (idle in its first half) and
    # reads as neither regime; window 3, wholly after it, settles the change.
    results = live(ticks([IDLE] * 27 + [GPU_BOUND] * 23))
    assert results[2].raw_label != "idle"
    assert (results[2].label, results[2].held) == ("idle", True)
    assert "did not settle it" in results[2].evidence[0]
    assert (results[3].raw_label, results[3].label) == ("gpu_bound", "gpu_bound")
    assert results[3].transition is not None and results[3].transition.settled


def test_a_burst_in_half_a_window_does_not_change_the_label() -> None:
    plan = [IDLE] * 30 + [GPU_BOUND] * 5 + [IDLE] * 15  # window 3: GPU-bound 5 s of 10
    results = live(ticks(plan))
    assert results[3].raw_label == "gpu_bound"
    assert labels(results) == ["idle"] * len(results)


def test_settling_can_be_turned_off() -> None:
    plain = live(ticks([IDLE] * 30 + [GPU_BOUND] * 20),
                 thresholds=Thresholds(hysteresis_settled_at_once=False))
    assert labels(plain)[2:5] == ["idle", "idle", "gpu_bound"]
    assert "did not settle" not in plain[3].evidence[0]
