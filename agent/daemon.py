"""`ai-bottleneck run`: the always-on agent.

Samples on the configured schedule in a background thread (never on scrape),
labels each window, keeps the exporter's state current and serves /metrics.

Signals: SIGTERM/SIGINT finish the open window, flush the recording and exit
0; SIGHUP reloads the config without dropping the endpoint (a bad new config
is refused with one log line and the old one keeps running).
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ai_bottleneck.assembly import LiveRun, ProbeSet, assemble_live, build_probes
from ai_bottleneck.config import Config, ConfigError, load_config
from ai_bottleneck.diagnose import FLAG_OPTIONS, service_override
from ai_bottleneck.endpoint import MetricsServer
from ai_bottleneck.gpu_presence import count_nvidia_gpus
from ai_bottleneck.live_page import LivePage
from ai_bottleneck.malloc_arenas import limit_arenas
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.record import RecordError
from ai_bottleneck.sdnotify import Notifier
from ai_bottleneck.state import AgentState

log = logging.getLogger("ai_bottleneck.agent")


def _fresh_record_path(path: Path, now: float | None = None) -> Path:
    """Never overwrite an earlier recording: a taken name gets a time suffix, and a
    counter after it when that name is taken too (two reloads within one second)."""
    if not path.exists() or path.stat().st_size == 0:
        return path
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    stem, ext = path.name, ""
    for known in (".jsonl.gz", ".jsonl", ".gz"):
        if stem.endswith(known):
            stem, ext = stem[: -len(known)], known
            break
    candidate = path.with_name(f"{stem}-{stamp}{ext}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}-{stamp}-{n}{ext}")
    return candidate


def sampling_health(state: AgentState) -> tuple[bool, str]:
    """For systemd's watchdog: whether sampling goes on, and the status line (the
    /healthz reasons, or all well)."""
    now = state.clock()
    snapshot = state.snapshot()
    problems = snapshot.problems(now)
    status = "; ".join(problems) if problems else "sampling; all well"
    return snapshot.sampling_stalled(now) is None, status


def _freeze_heap() -> None:
    """Move everything built at start (modules, probes, tables) out of the garbage
    collector's sight: a full collection then scans only what came later. Under
    the soak benchmark one took 40-70 ms, every endpoint thread waiting for it.
    A reload unfreezes first, so the run it replaces can still be collected."""
    gc.collect()
    gc.freeze()


@dataclass
class _Run:
    """What one config builds (probes, pipeline, sampler, peer servers) and its thread."""

    config: Config
    live: LiveRun
    thread: threading.Thread | None = None
    stop: threading.Event | None = None

    @property
    def probes(self) -> ProbeSet:
        return self.live.probes


class Agent:
    """The daemon. ``start()`` then ``wait()``; signals drive stop and reload."""

    def __init__(self, config_path: Path | None, *, listen: str | None = None,
                 web_config_file: Path | None = None, service: str | None = None) -> None:
        self.config_path = config_path
        self._service_override = service_override(service)  # --service, over every reload
        self._listen_override = listen
        self._web_override = web_config_file
        self.config = self._load()
        self.state = AgentState.from_config(self.config.agent)
        self.page = LivePage(history_seconds=self.config.endpoint.page_history_seconds)
        self.server = MetricsServer(self.state, self.config.agent.listen,
                                    self.config.agent.web_config_file, page=self.page.render,
                                    **self.config.endpoint.server_kwargs())
        self._run: _Run | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.notifier = Notifier(self.health)

    def _load(self) -> Config:
        config = load_config(self.config_path)
        overrides: dict[str, object] = {}
        if self._listen_override is not None:
            overrides["listen"] = self._listen_override
        if self._web_override is not None:
            overrides["web_config_file"] = self._web_override
        if overrides:
            config = config.with_agent("--listen/--web.config.file", **overrides)
        return config

    # -- building and running one config -------------------------------------------

    def _build(self, config: Config) -> _Run:
        probes = build_probes(config, self._service_override, origins=FLAG_OPTIONS)
        path = (_fresh_record_path(config.agent.record_file)
                if config.agent.record_file is not None else None)
        try:
            live = assemble_live(config, probes, mode="run",
                                 window_seconds=config.agent.window_seconds, record_path=path,
                                 state=self.state, exposition=self.server.exposition.prepare,
                                 on_window=self._on_window, peer_servers=True)
        except RecordError as exc:
            probes.close()
            raise ConfigError(config.source, "agent.record_file", str(exc)) from None
        if live.pipeline.recorder is not None:
            log.info("recording samples to %s", live.pipeline.recorder.path)
        return _Run(config, live)

    def _on_window(self, result: WindowResult) -> None:
        """Every labelled window (the pipeline has put it in the state already): onto
        the live page, and one log line."""
        self.page.add(result)
        change = result.transition.to_json() if result.transition is not None else None
        log.info("window %s..%s: %s (%.2f)%s",
                 time.strftime("%H:%M:%S", time.localtime(result.start)),
                 time.strftime("%H:%M:%S", time.localtime(result.end)), result.label,
                 result.confidence,
                 f"; changed from {change['from']}" if change and change.get("from") else "")

    def _register(self, run: _Run) -> None:
        self.state.set_gpu_pci_devices(count_nvidia_gpus())
        self.page.set_unavailable(run.probes.unavailable)
        for p in run.probes.probes:
            self.state.register_probe(p.name, usable=True, interval_seconds=p.interval_seconds,
                                      active=p.active)
        for name, reason in run.probes.unavailable.items():
            self.state.register_probe(name, usable=False, reason=reason)
            log.info("probe %s not running: %s", name, reason)

    def _launch(self, run: _Run) -> None:
        for problem in run.live.start_servers():
            log.warning("server for peers: %s", problem)
        run.stop = threading.Event()
        stop = run.stop
        self.state.watch_recording(run.live.pipeline.recorder)
        run.thread = threading.Thread(target=lambda: run.live.run(stop), name="sampler",
                                      daemon=True)
        run.thread.start()
        log.info("sampling every %gs, %gs windows; probes: %s", run.config.agent.interval_seconds,
                 run.config.agent.window_seconds, ", ".join(run.probes.names) or "none")

    def _finish(self, run: _Run) -> None:
        """Stop sampling, label the open window, flush and close the recording."""
        if run.stop is not None:
            run.stop.set()
        if run.thread is not None:
            run.thread.join(timeout=run.config.agent.interval_seconds + 5)
            if run.thread.is_alive():
                log.warning("sampling loop did not stop in time; finishing without it")
        try:
            run.live.finish()
        finally:
            run.probes.close()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Bind the endpoint and start sampling; raises ConfigError/ListenError."""
        limit_arenas()  # before the sampler's and the endpoint's threads
        run = self._build(self.config)
        try:
            self.server.start()
        except Exception:
            run.live.discard()
            raise
        self._register(run)
        self._launch(run)
        self._run = run
        _freeze_heap()
        log.info("ai-bottleneck agent started; config %s", self.config.source)

    def reload(self) -> bool:
        """Re-read the config; on success swap the sampling run, keeping the endpoint."""
        try:
            config = self._load()
            new = self._build(config)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        if (config.agent.listen, config.agent.web_config_file) != (
                self.config.agent.listen, self.config.agent.web_config_file):
            log.warning("listen address and web config change only on restart")
        if config.endpoint != self.config.endpoint:
            log.warning("[endpoint] limits change only on restart")
        old = self._run
        if old is not None:
            # The old run was frozen with the rest at start: unfrozen, its cycles
            # (threads, probes, their callbacks) can be collected once it is finished.
            gc.unfreeze()
            self._finish(old)
        self.config = config
        self.state.apply_config(config.agent)
        self._register(new)
        self._launch(new)
        self._run = new
        _freeze_heap()
        log.info("config reloaded from %s", config.source)
        return True

    def stop(self) -> None:
        if self._run is not None:
            self._finish(self._run)
            self._run = None
        self.server.stop()
        log.info("ai-bottleneck agent stopped")

    def health(self) -> tuple[bool, str]:
        return sampling_health(self.state)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop.set()

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT; reload on SIGHUP. Call from the main thread."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.start()
        self.notifier.ready("sampling; all well")
        try:
            while not self._stop.is_set():
                # The watchdog is pinged from this loop: a hung main thread stops it too.
                self.notifier.tick(time.monotonic())
                self._stop.wait(0.5)
                if self._reload.is_set():
                    self._reload.clear()
                    self.notifier.reloading()
                    self.reload()
                    self.notifier.ready("config reloaded")
        finally:
            self.notifier.stopping()
            self.stop()
