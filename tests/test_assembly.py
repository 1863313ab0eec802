"""The run assembly: one channel for a sampling round, in order (record, label, state,
exposition), and a replay of its recording through the same labeller."""

from __future__ import annotations

from pathlib import Path

from ai_bottleneck.assembly import RunPipeline, assemble_replay
from ai_bottleneck.pipeline import Labeller, WindowResult
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.record import RecordWriter, make_header, read_record
from ai_bottleneck.sampler import Round
from ai_bottleneck.state import AgentState

T0 = 1_700_000_000.0


def host(t: float, cpu: float) -> Sample:
    return Sample(t, "host", {}, {"cpu_utilization_ratio": cpu, "cpu_count": 8.0})


def test_a_round_is_recorded_labelled_then_stated_then_exposed(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    labeller = Labeller(2.0, origin=T0, expected_probes=["host", "crashing"])
    recorder = RecordWriter(path, make_header(mode="run", **labeller.header_fields()))
    clock = [T0]
    state = AgentState(interval_seconds=1.0, window_seconds=2.0, clock=lambda: clock[0])
    state.register_probe("host")
    state.register_probe("crashing")
    seen_by_exposition: list[tuple[int, int, int]] = []
    windows: list[WindowResult] = []

    def exposition() -> None:
        snap = state.snapshot()
        seen_by_exposition.append((snap.probes["host"].samples_total,
                                   snap.probes["crashing"].errors_total["crash"],
                                   sum(snap.windows_total.values())))

    pipeline = RunPipeline(labeller, recorder, state, exposition, windows.append,
                           keep_results=True)
    crash = Sample(T0 + 0.5, "crashing", error="probe crashed: ZeroDivisionError: bug")
    pipeline.handle([Round("host", [host(T0 + 0.1, 0.97)], 0.01),
                     Round("crashing", [crash], 0.02, "crash", crash.error or "")])
    pipeline.handle([Round("host", [host(T0 + 1.1, 0.98)], 0.01)])
    # This round closes the first window: it is labelled before the state is updated,
    # and the exposition sees both.
    pipeline.handle([Round("host", [host(T0 + 4.2, 0.99)], 0.01)])
    assert seen_by_exposition == [(1, 1, 0), (2, 1, 0), (3, 1, 1)]
    assert len(windows) == 1 and windows == pipeline.results
    assert state.snapshot().window is not None
    assert state.snapshot().window.label == windows[0].label
    closed = pipeline.finish()
    assert windows == pipeline.results and closed == windows[1:]
    assert pipeline.samples == 4
    # Recorded in the order labelled (the failed sample too) ...
    _, recorded, _ = read_record(path)
    assert [(s.probe, s.t) for s in recorded] == [("host", T0 + 0.1), ("crashing", T0 + 0.5),
                                                  ("host", T0 + 1.1), ("host", T0 + 4.2)]
    # ... so the replay of the recording gives the live windows.
    replay = assemble_replay(path)
    assert list(replay.results) == windows
    assert replay.stats.samples == 4
