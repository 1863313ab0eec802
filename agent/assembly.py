"""One run, assembled one way for `diagnose`, `run` and `replay`.

A sampling round travels one channel, in this order::

    Sampler --rounds--> RunPipeline.handle:
        record     RecordWriter   every sample, in the order it is labelled
        label      Labeller       windows -> classifier -> hysteresis -> WindowResult
        state      AgentState     probe health, latest series, labelled windows
        exposition prepare()      render the new metric lines once per round

`diagnose` and `run` put a Sampler in front of the pipeline (``assemble_live``;
`run` adds the state and the exposition, `diagnose` keeps the windows);
`replay` feeds a recording's samples through the same Labeller
(``assemble_replay``), so it gives the labels the live run gave.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_bottleneck.budget import ActiveBudget
from ai_bottleneck.config import Config, ConfigError
from ai_bottleneck.discovery import discover
from ai_bottleneck.path_use import metric_uses
from ai_bottleneck.pipeline import Labeller, WindowResult
from ai_bottleneck.probes.base import PeerServer, PeerServerHost, Probe, SampleFollower
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import ReadStats, RecordReader, RecordWriter, make_header
from ai_bottleneck.sampler import Round, Sampler
from ai_bottleneck.state import AgentState
from ai_bottleneck.thresholds import Thresholds
from ai_bottleneck.window_means import WindowMeans

log = logging.getLogger("ai_bottleneck.agent")

# -- the probes of a run --------------------------------------------------------------


@dataclass
class ProbeSet:
    """The probes that run, and for every other known probe why it does not."""

    probes: list[Probe] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.probes]

    def close(self) -> None:
        for p in self.probes:
            p.close()


def build_probes(config: Config,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, *,
                 origins: Mapping[tuple[str, str], str] | None = None) -> ProbeSet:
    """Discover, build and check the enabled probes with their options.

    ``overrides`` replaces option keys of a probe's table (command-line flags);
    ``origins`` names where an overriding (probe, key) came from, e.g.
    ``{("http", "targets"): "--url"}``. Bad options and required probes that
    cannot run raise ConfigError (one line, naming the file and key, or the flag
    that gave the bad value); anything else unusable is reported, not fatal.
    """
    tables = config.probe_option_tables
    for name, extra in (overrides or {}).items():
        tables[name] = {**tables.get(name, {}), **extra}
    enabled = config.enabled_probes
    try:
        found = discover(tables, only=enabled, strict_options=True)
    except OptionError as exc:
        flag = _flag_behind(exc.key, overrides or {}, origins or {})
        if flag is not None:
            raise ConfigError(flag, "", exc.problem) from None
        raise config.error(exc) from None
    result = ProbeSet()
    for name in sorted(set(config.known_probes) - set(enabled)):
        result.unavailable[name] = "turned off in the config (enabled = false)"
    required = set(config.required_probes)
    usable: dict[str, str] = {}
    for d in found:
        if d.usable and d.probe is not None:
            result.probes.append(d.probe)
            usable[d.name] = d.availability.reason
            continue
        if d.name in required:
            result.close()
            raise ConfigError(config.source, f"probes.{d.name}.enabled",
                              f"probe is required (enabled = true) but cannot run here: "
                              f"{d.availability.reason}")
        result.unavailable[d.name] = d.availability.reason
    _drop_orphan_followers(result, usable)
    return result


def _drop_orphan_followers(result: ProbeSet, reasons: Mapping[str, str]) -> None:
    """A probe that follows another probe's samples has nothing to do where that probe
    does not run (the default service without a GPU probe): unavailable, with both
    reasons, as it was before it could follow."""
    running = set(result.names)
    for probe in list(result.probes):
        if not isinstance(probe, SampleFollower):
            continue
        leader = probe.follows
        if leader is None or leader in running:
            continue
        result.probes.remove(probe)
        probe.close()
        why = result.unavailable.get(leader, "not running")
        own = reasons.get(probe.name, "")
        result.unavailable[probe.name] = ((f"{own}; " if own else "") + f"but the {leader} "
                                          f"probe does not run here ({why})")


def _flag_behind(key: str, overrides: Mapping[str, Mapping[str, Any]],
                 origins: Mapping[tuple[str, str], str]) -> str | None:
    """The flag whose value the bad option ``key`` ("probes.http.targets[0]") holds.

    A bad value from a flag is not the config file's fault; naming the file (often
    the absent default) sends the user to the wrong place. A check of the probe's
    options as a whole ("probes.iperf3") is put down to the flag when one set them.
    """
    parts = key.split(".", 2)
    if len(parts) < 2 or parts[0] != "probes":
        return None
    probe = parts[1]
    option = parts[2].split("[", 1)[0].split(".", 1)[0] if len(parts) == 3 else ""
    flagged = [(p, k) for (p, k) in origins if p == probe and k in overrides.get(p, {})]
    for p, k in flagged:
        if option in ("", k):
            return origins[(p, k)]
    return None


# -- the pipeline ---------------------------------------------------------------------


def record_health(state: AgentState, r: Round) -> None:
    """One round into the exporter's state: a timeout or crash counts as that failure,
    anything the probe returned as its samples; a report on a call still running is
    no health event."""
    if r.in_progress:
        return
    if r.failure is not None:
        state.record_failure(r.probe, r.failure, r.message, duration_seconds=r.duration_seconds)
    else:
        state.record_samples(r.probe, r.samples, duration_seconds=r.duration_seconds)


@dataclass
class RunPipeline:
    """What happens to every round, in order: record, label, state, exposition.

    ``on_window`` sees every labelled window (the daemon logs it); ``keep_results``
    keeps them in ``results`` too (diagnose reports them at the end).
    """

    labeller: Labeller
    recorder: RecordWriter | None = None
    state: AgentState | None = None
    exposition: Callable[[], None] | None = None
    on_window: Callable[[WindowResult], None] | None = None
    keep_results: bool = False
    results: list[WindowResult] = field(default_factory=list)
    samples: int = 0
    # With a state: the window means of the rate and ratio values it shows in place
    # of the latest sample's (ai_bottleneck.window_means).
    means: WindowMeans | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.means is None:
            self.means = WindowMeans()

    def handle(self, rounds: Sequence[Round]) -> None:
        """The sampler's one consumer: a round's samples, in the order gathered."""
        batch = [s for r in rounds for s in r.samples]
        self.samples += len(batch)
        if self.recorder is not None and batch:
            self.recorder.write_many(batch)
        if self.means is not None:
            self.means.add_many(batch)
        self._windows(self.labeller.feed_many(batch))
        if self.state is not None:
            for r in rounds:
                record_health(self.state, r)
        if self.exposition is not None and batch:
            # Render the new samples' metric lines here, once per round, not per scrape.
            self.exposition()

    def replay(self, samples: Iterable[Sample]) -> Iterator[WindowResult]:
        """Label a whole recorded stream: every window, in order, as it closes."""
        for result in self.labeller.run(samples):
            self._windows((result,))
            yield result

    def finish(self) -> list[WindowResult]:
        """Label the windows still open and close the recording (end of a run)."""
        try:
            closed = self.labeller.finish()
            self._windows(closed)
            return closed
        finally:
            if self.recorder is not None:
                self.recorder.close()

    def _windows(self, results: Iterable[WindowResult]) -> None:
        for result in results:
            if self.keep_results:
                self.results.append(result)
            if self.state is not None:
                means = (self.means.close(result.start, result.end)
                         if self.means is not None else None)
                self.state.record_window(result.label, result.confidence, result.start,
                                         result.end, len(result.evidence),
                                         top_evidence=result.evidence[0] if result.evidence
                                         else "", means=means,
                                         path_uses=metric_uses(result.readings,
                                                               result.saturations))
            if self.on_window is not None:
                self.on_window(result)


# -- live runs (diagnose, run) --------------------------------------------------------


#: Label transitions the daemon keeps (nothing it serves reads older ones; a
#: report's run keeps them all).
RUN_TRANSITIONS = 1000


@dataclass
class LiveRun:
    """A sampler in front of a pipeline, and the servers the probes run for peers."""

    probes: ProbeSet
    pipeline: RunPipeline
    sampler: Sampler
    servers: list[PeerServer]

    def start_servers(self) -> list[str]:
        """Start the peer servers; the problems, one line each."""
        return [problem for server in self.servers if (problem := server.start())]

    def run(self, stop: threading.Event, duration_seconds: float | None = None,
            on_tick: Callable[[], None] | None = None) -> None:
        """Sample until ``stop`` is set or the duration has passed; after every tick keep
        the peer servers running, then call ``on_tick``."""
        def tick() -> None:
            for server in self.servers:
                if (problem := server.ensure_running()) is not None:
                    log.warning("server for peers: %s", problem)
            if on_tick is not None:
                on_tick()
        self.sampler.run(stop, duration_seconds=duration_seconds,
                         on_tick=tick if self.servers or on_tick is not None else None)

    def discard(self) -> None:
        """Give up a run that never started: stop the sampler's workers (which closes the
        probes) and close the recording."""
        self.sampler.close()
        if self.pipeline.recorder is not None:
            self.pipeline.recorder.close()

    def finish(self) -> list[WindowResult]:
        """Stop sampling (the sampler closes the probes whose calls are not hung), label
        the open windows, close the recording and stop the peer servers."""
        self.sampler.close()
        try:
            return self.pipeline.finish()
        finally:
            for server in self.servers:
                server.stop()


def assemble_live(config: Config, probe_set: ProbeSet, *, mode: str,
                  window_seconds: float, record_path: Path | None = None,
                  origin: float | None = None, state: AgentState | None = None,
                  exposition: Callable[[], None] | None = None,
                  on_window: Callable[[WindowResult], None] | None = None,
                  keep_results: bool = False, peer_servers: bool = False,
                  active_interval_override: float | None = None) -> LiveRun:
    """Build the run: labeller, recording (raises RecordError when it cannot be
    opened), traffic budget, sampler and, with ``peer_servers`` (the daemon), the
    servers probes run for their peers (not yet started)."""
    labeller = Labeller(window_seconds, config.thresholds, unavailable=probe_set.unavailable,
                        expected_probes=probe_set.names, origin=origin,
                        max_transitions=RUN_TRANSITIONS if mode == "run" else None)
    recorder = (RecordWriter(record_path, make_header(mode=mode, **labeller.header_fields()))
                if record_path is not None else None)
    pipeline = RunPipeline(labeller, recorder, state, exposition, on_window, keep_results)
    sampler = Sampler(probe_set.probes, config.agent.interval_seconds,
                      _handed_to_followers(probe_set.probes, pipeline.handle),
                      budget=ActiveBudget.from_options(config.budget),
                      active_interval_override=active_interval_override)
    servers = [s for p in probe_set.probes if peer_servers and isinstance(p, PeerServerHost)
               and (s := p.make_server()) is not None]
    return LiveRun(probe_set, pipeline, sampler, servers)


def _handed_to_followers(probes: Sequence[Probe],
                         handle: Callable[[Sequence[Round]], None]
                         ) -> Callable[[Sequence[Round]], None]:
    """The pipeline's handler, then every round's samples to the probes that follow other
    probes' samples (ai_bottleneck.probes.base.SampleFollower); the handler alone when none
    does."""
    followers = [p for p in probes if isinstance(p, SampleFollower)]
    if not followers:
        return handle

    def handle_and_follow(rounds: Sequence[Round]) -> None:
        handle(rounds)
        batch = [s for r in rounds for s in r.samples]
        for follower in followers:
            follower.follow(batch)
    return handle_and_follow


# -- replay ---------------------------------------------------------------------------


@dataclass
class Replay:
    """A recording being labelled: iterate ``results``; ``stats`` fills in as it reads."""

    header: dict[str, Any]
    pipeline: RunPipeline
    results: Iterator[WindowResult]
    stats: ReadStats = field(default_factory=ReadStats)

    @property
    def labeller(self) -> Labeller:
        return self.pipeline.labeller


def assemble_replay(path: str | os.PathLike[str], *, window_seconds: float | None = None,
                    thresholds: Thresholds | None = None) -> Replay:
    """Label a recording with the same code path as a live run.

    Raises ai_bottleneck.record.RecordError (the file is not a recording) or
    OptionError (its header is malformed), each one line.
    """
    reader = RecordReader(path)
    try:
        labeller = Labeller.from_header(reader.header, window_seconds=window_seconds,
                                        thresholds=thresholds)
    except Exception:
        reader.close()
        raise
    pipeline = RunPipeline(labeller)
    return Replay(reader.header, pipeline, pipeline.replay(reader), reader.stats)
