"""`ai-bottleneck diagnose`: sample for a while, label the windows, give a verdict."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ai_bottleneck.assembly import ProbeSet, assemble_live
from ai_bottleneck.config import Config
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.probes.service import NAMING_KEYS, options_for
from ai_bottleneck.verdict import Verdict, overall_verdict

Progress = Callable[[float, float, WindowResult | None], None]


@dataclass
class DiagnoseResult:
    windows: list[WindowResult]
    verdict: Verdict
    unavailable: dict[str, str]
    probes: list[str]
    started: float
    ended: float
    samples: int
    interrupted: bool = False
    record_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    duration_seconds: float | None = None

    def title(self) -> str:
        # A full run's windows cover the duration asked for; its last sampling round
        # is one interval before the end (see run_diagnose).
        span = (self.duration_seconds if self.duration_seconds is not None
                and not self.interrupted else self.ended - self.started)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        cut = " (ended early by Ctrl-C)" if self.interrupted else ""
        return (f"ai-bottleneck diagnose on {socket.gethostname()}: {span:.0f} s from {when}, "
                f"{len(self.windows)} windows{cut}; probes: {', '.join(self.probes) or 'none'}")


class _StopOnSigint:
    """The first Ctrl-C ends sampling early (the report still comes); a second one
    interrupts at once."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.hit = False
        self._old: object = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        self.stop.set()

    def __enter__(self) -> _StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)  # type: ignore[arg-type]


def run_diagnose(config: Config, probe_set: ProbeSet, *, duration_seconds: float,
                 window_seconds: float, record_path: Path | None = None,
                 progress: Progress | None = None,
                 stop: threading.Event | None = None) -> DiagnoseResult:
    """Run the probes for ``duration_seconds`` and label what they saw.

    Active probes (iperf3, downloads) run once, at the start, under the traffic
    budget. Samples are recorded (when asked) in exactly the order they are
    labelled, so `replay` of the recording gives the same labels.
    """
    stop = stop or threading.Event()
    # Windows start when sampling starts, not at the first sample fed: the first
    # round's samples are stamped by several probe threads, and those stamped a
    # little before the first one handed over would count as late. The header
    # carries the origin so a replay cuts the same windows.
    started = time.time()
    run = assemble_live(config, probe_set, mode="diagnose", window_seconds=window_seconds,
                        record_path=record_path, origin=started, keep_results=True,
                        active_interval_override=max(duration_seconds, 1.0))
    results = run.pipeline.results
    # The sampler rounds at 0, i, 2i, ... and ends with the first round at or past
    # the duration it is given. Given the whole duration it would sample once more
    # at its very end, and that round opens a window past the run holding one
    # reading per probe (8 s in 2 s windows gave 5 windows, the last judged on one
    # sample). One interval less keeps every round inside the duration.
    sampling_seconds = max(duration_seconds - config.agent.interval_seconds, 0.0)

    def tick() -> None:
        if progress is not None:
            progress(time.time() - started, duration_seconds, results[-1] if results else None)

    guard = _StopOnSigint(stop)
    try:
        with guard:
            run.run(stop, duration_seconds=sampling_seconds, on_tick=tick)
    finally:
        run.finish()
    ended = time.time()
    labeller = run.pipeline.labeller
    notes = []
    if labeller.late_samples:
        notes.append(f"{labeller.late_samples} samples arrived late and were counted in the "
                     f"oldest open window")
    recorder = run.pipeline.recorder
    if recorder is not None:
        lost = recorder.lost_note()
        if lost is not None:
            notes.append(lost)
        record_path = recorder.path
        notes.append(f"raw samples recorded to {record_path} (replay with "
                     f"`ai-bottleneck replay {record_path}`)")
    return DiagnoseResult(results, overall_verdict(results, labeller.transitions),
                          dict(probe_set.unavailable), probe_set.names, started, ended,
                          run.pipeline.samples, interrupted=guard.hit,
                          record_path=record_path, notes=notes,
                          duration_seconds=duration_seconds)


#: The command-line flags that set a probe option: named in errors about their values.
FLAG_OPTIONS = {("http", "targets"): "--url", ("iperf3", "targets"): "--iperf3",
                ("download", "url"): "--download", ("engine", "targets"): "--engine",
                **{("service", key): "--service" for key in NAMING_KEYS}}


def service_override(service: str | None) -> dict[str, dict[str, Any]]:
    """``--service NAME`` as probe options: it replaces the service the config names."""
    if not service:
        return {}
    return {"service": {**dict.fromkeys(NAMING_KEYS, ""), **options_for(service)}}


def flag_overrides(urls: tuple[str, ...], iperf3: tuple[str, ...], download: str | None,
                   config: Config, service: str | None = None,
                   engines: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Command-line targets replace the config's targets for that probe."""
    out: dict[str, dict[str, Any]] = service_override(service)
    if urls:
        out["http"] = {"targets": [{"url": u} for u in urls]}
    if iperf3:
        out["iperf3"] = {"targets": list(iperf3)}
    if download:
        out["download"] = {"url": download}
    if engines:
        out["engine"] = {"targets": list(engines)}
    # A short diagnosis needs denser HTTP calls (and engine scrapes) than the daemon's
    # default, unless the config chose an interval itself.
    for name in ("http", "engine") if engines else ("http",):
        if "interval_seconds" not in config.probe_options(name):
            out.setdefault(name, {})["interval_seconds"] = config.agent.interval_seconds
    return out
