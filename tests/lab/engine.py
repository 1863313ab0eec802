"""Lab scenarios against a real model server: the llama.cpp server (tests/llama_server.py,
built by .ci/build-llama-server) serving the tiny random Llama of tests/llama_model.py on
this machine's CPU, read by the agent through its real ``/metrics`` and ``/slots``.

    run = run_engine_scenario(scenario, QUICK, workdir)   # a ScenarioRun, as runner.py's

What runs, all real except the GPU:
- llama-server in a network namespace of its own behind the lab's veth with a tbf limit per
  phase (tests/netns.py), ``--parallel`` slots, ``--ctx-size`` split among them;
- the stand-in GPU (tests/lab/engine_gpu.py) beside it, busy while the server's slots are:
  the fake NVML reads what it publishes;
- ``ai-bottleneck diagnose`` with the engine probe on the server's /metrics, the http probe
  timing a call to /completion, the nic probe on the lab's veth and the oom probe on the
  server's log;
- per phase, clients on real sockets posting /completion requests (``EngineLoad``).

Timing, lead-in and tail as in runner.py, whose helpers this reuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.lab.cpu import QUIET_WAIT_SECONDS, CpuMeter, wait_for_quiet_host
from tests.lab.runner import (
    NVML_BACKEND,
    PROBE_BODY_BYTES,
    AgentSettings,
    LabRunError,
    PhaseRun,
    ScenarioRun,
    _agent_process,
    _first_sample_time,
    _sleep_until,
    _tail,
    agent_command,
    agent_config,
    agent_document,
    first_phase_start,
    scaled,
    wait_for_agent,
)
from tests.lab.schedule import (
    ARTICLE_CLIENTS,
    ARTICLE_LINK_BITS_PER_SECOND,
    ARTICLE_UPLOAD_BYTES,
    FAST_LINK_BITS_PER_SECOND,
    Scenario,
)
from tests.lab.score import TimedPhase
from tests.lab.service import REPO_ROOT
from tests.llama_server import find_llama_server, llama_server
from tests.netns import netns_link

#: Each "the model " is 14 tokens in the tiny model's vocabulary (byte-level pieces).
PROMPT_TEXT = "the model "
TOKENS_PER_PROMPT_REPEAT = 14


@dataclass(frozen=True)
class EngineLoad:
    """Clients posting /completion. ``upload_bytes``: instead a prompt document of that
    size, longer than any context: the server reads it, tokenizes it and refuses it with
    400 (exceed_context_size_error), so the upload is the request and the model never
    runs; sent uncached."""

    clients: int
    prompt_repeats: int = 3
    n_predict: int = 64
    rate_per_client: float | None = None  # None: closed loop
    upload_bytes: int | None = None
    timeout_seconds: float = 30.0
    max_requests: int = 20_000

    def body(self, client: int) -> bytes:
        if self.upload_bytes is not None:
            return upload_document(self.upload_bytes)
        # A word per client in front: prompts differ, nothing is shared between slots.
        prompt = f"client {client} " + PROMPT_TEXT * self.prompt_repeats
        return json.dumps({"prompt": prompt, "n_predict": self.n_predict, "ignore_eos": True,
                           "cache_prompt": False, "temperature": 1.0}).encode()


def upload_document(size: int) -> bytes:
    """A /completion body of ``size`` bytes whose prompt is longer than any context."""
    head = b'{"n_predict": 1, "prompt": "'
    words = (PROMPT_TEXT * (size // len(PROMPT_TEXT) + 1)).encode()
    return head + words[: max(size - len(head) - 2, 0)] + b'"}'


@dataclass(frozen=True)
class EnginePhase:
    name: str
    duration_seconds: float
    expected_label: str
    load: EngineLoad | None
    link_rate_bits_per_second: float = FAST_LINK_BITS_PER_SECOND
    description: str = ""


@dataclass(frozen=True)
class EngineScenario:
    name: str
    phases: tuple[EnginePhase, ...]
    description: str = ""
    slots: int = 2
    context: int = 4096  # tokens, split among the slots
    #: The agent's own timed call: None, a short completion (16 tokens); else an upload
    #: document of this size (refused with 400, expected).
    probe_upload_bytes: int | None = None

    def timeline(self, start: float) -> list[TimedPhase]:
        out, t = [], start
        for p in self.phases:
            out.append(TimedPhase(p.name, p.expected_label, t, t + p.duration_seconds))
            t += p.duration_seconds
        return out


def engine_scenarios(window_seconds: float, windows: int) -> dict[str, EngineScenario]:
    d = window_seconds * windows
    long_prompt = 128  # 1,792 tokens of a 2,048-token slot
    return {
        "engine_balanced": EngineScenario("engine_balanced", (EnginePhase(
            "balanced", d, "balanced",
            EngineLoad(clients=2, n_predict=300, rate_per_client=1.0),
            description="light load: two clients, one 300-token answer a second each; "
                        "nothing is deferred"),), "the real engine under light load"),
        "engine_gpu_bound": EngineScenario("engine_gpu_bound", (EnginePhase(
            "gpu_bound", d, "gpu_bound", EngineLoad(clients=6, n_predict=300),
            description="six closed-loop clients on two slots: requests deferred, the "
                        "slots (the stand-in GPU) always busy, short contexts"),),
            "concurrency beyond the engine's slots"),
        "engine_vram_bound": EngineScenario("engine_vram_bound", (EnginePhase(
            "vram_bound", d, "vram_bound",
            EngineLoad(clients=4, prompt_repeats=long_prompt, n_predict=230),
            description="four clients with 1,800-token prompts and 230-token answers on "
                        "two 2,048-token slots: the KV cache is full and requests wait "
                        "for room"),), "long contexts fill the KV cache"),
        "engine_network_bound": EngineScenario("engine_network_bound", (EnginePhase(
            "network_bound", d, "network_bound",
            EngineLoad(clients=ARTICLE_CLIENTS, upload_bytes=ARTICLE_UPLOAD_BYTES // 5,
                       timeout_seconds=max(120.0, d + 10)),
            link_rate_bits_per_second=ARTICLE_LINK_BITS_PER_SECOND,
            description="ten clients uploading 1 MB prompt documents to the engine through "
                        "a 5 Mbit/s tbf link; the engine idles"),),
            "the engine behind a thin link", probe_upload_bytes=PROBE_BODY_BYTES),
    }


class EngineLoadRun:
    """``load.clients`` threads posting to ``url`` until ``deadline`` (unix time)."""

    def __init__(self, url: str, load: EngineLoad, deadline: float) -> None:
        self.url, self.load, self.deadline = url, load, deadline
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.started = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True,
                                          name=f"engine-load-{i}") for i in range(load.clients)]

    def start(self) -> EngineLoadRun:
        for t in self._threads:
            t.start()
        return self

    def _claim(self) -> bool:
        with self._lock:
            if self.started >= self.load.max_requests or time.time() >= self.deadline:
                return False
            self.started += 1
            return True

    def _client(self, index: int) -> None:
        body = self.load.body(index)
        interval = None if not self.load.rate_per_client else 1.0 / self.load.rate_per_client
        next_at = time.time() + (interval or 0.0) * index / max(self.load.clients, 1)
        with httpx.Client(trust_env=False, timeout=self.load.timeout_seconds) as client:
            while True:
                _sleep_until(next_at)
                if not self._claim():
                    return
                began = time.time()
                try:
                    r = client.post(self.url, content=body,
                                    headers={"Content-Type": "application/json"})
                    with self._lock:
                        self.statuses[r.status_code] += 1
                        if r.status_code == 200:
                            self.latencies.append(time.time() - began)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors[type(exc).__name__] += 1
                next_at = max(time.time(), began + interval) if interval else time.time()

    def finish(self, grace_seconds: float = 3.0) -> dict[str, Any]:
        """Join the clients; those still in a request ``grace_seconds`` after the deadline
        are abandoned (daemon threads, ended by their time limit or the server's stop)."""
        for t in self._threads:
            t.join(timeout=max(self.deadline + grace_seconds - time.time(), 0.0))
        latencies = sorted(self.latencies)
        with self._lock:
            return {"started": self.started, "statuses": {str(k): v for k, v in
                                                          sorted(self.statuses.items())},
                    "errors": dict(self.errors),
                    "abandoned": sum(1 for t in self._threads if t.is_alive()),
                    "latency_seconds": {"median": latencies[len(latencies) // 2]
                                        if latencies else None,
                                        "max": latencies[-1] if latencies else None}}


def run_engine_scenario(scenario: EngineScenario, settings: AgentSettings, workdir: Path, *,
                        record_to: Path | None = None, quiet_wait: float = QUIET_WAIT_SECONDS,
                        start_timeout: float = 60.0) -> ScenarioRun:
    """Play ``scenario`` (phases scaled to ``settings``) against `ai-bottleneck diagnose`.
    Raises LabRunError with one line when the server, the namespace or the agent fails."""
    try:
        find_llama_server()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        raise LabRunError(f"{scenario.name}: {exc.msg}") from None
    try:
        return _play(scaled(scenario, settings), settings, workdir,  # type: ignore[arg-type]
                     record_to=record_to, quiet_wait=quiet_wait, start_timeout=start_timeout)
    except (OSError, subprocess.SubprocessError, httpx.HTTPError, TimeoutError,
            RuntimeError) as exc:
        if isinstance(exc, LabRunError):
            raise
        raise LabRunError(f"{scenario.name}: {type(exc).__name__}: {exc}".replace(
            "\n", " ")[:400]) from exc


def _config(scenario: EngineScenario, settings: AgentSettings, base_url: str, log: Path,
            nic: str, workdir: Path) -> str:
    probe = workdir / "probe.json"
    if scenario.probe_upload_bytes is not None:
        probe.write_bytes(upload_document(scenario.probe_upload_bytes))
        expect: list[int] = [200, 400]
    else:
        probe.write_text(json.dumps({"prompt": "the model token cache", "n_predict": 16,
                                     "ignore_eos": True}), encoding="utf-8")
        expect = [200]
    tables = {
        "probes.http": {"enabled": True, "interval_seconds": settings.interval_seconds,
                        "targets": [{"url": base_url + "/completion", "name": "lab /completion",
                                     "method": "POST", "body_file": str(probe),
                                     "headers": {"Content-Type": "application/json"},
                                     "expect_status": expect,
                                     "timeout_seconds": settings.probe_timeout_seconds}]},
        "probes.engine": {"enabled": True, "interval_seconds": settings.interval_seconds,
                          "targets": [base_url + "/metrics"]},
    }
    return agent_config(settings, infer_url=base_url + "/completion", service_log=log, nic=nic,
                        scenario=Scenario(scenario.name, (), agent_tables=tables))


def _play(scenario: EngineScenario, settings: AgentSettings, workdir: Path, *,
          record_to: Path | None, quiet_wait: float, start_timeout: float) -> ScenarioRun:
    workdir.mkdir(parents=True, exist_ok=True)
    window = settings.window_seconds
    duration = (settings.lead_in_windows + len(scenario.phases) * settings.windows_per_phase
                + settings.tail_windows) * window
    host_cpu_before = wait_for_quiet_host(quiet_wait) if quiet_wait > 0 else None
    record, out, err = workdir / "record.jsonl", workdir / "agent.json", workdir / "agent.err"
    gpu_state = workdir / "gpu.json"
    for stale in (record, out, err, gpu_state):
        stale.unlink(missing_ok=True)
    notes: list[str] = []
    rate = scenario.phases[0].link_rate_bits_per_second
    with netns_link(rate, rate) as link, llama_server(
            workdir, slots=scenario.slots, context=scenario.context, link=link) as server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        with (workdir / "gpu.err").open("wb") as gpu_err:
            gpu = link.popen([sys.executable, "-m", "tests.lab.engine_gpu", server.base_url,
                              str(gpu_state), str(server.pid)], cwd=REPO_ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=gpu_err)
        deadline = time.monotonic() + 10.0
        while not gpu_state.exists():
            if gpu.poll() is not None or time.monotonic() > deadline:
                raise LabRunError(f"the stand-in GPU did not start: {_tail(workdir / 'gpu.err')}")
            time.sleep(0.05)
        config = workdir / "agent.toml"
        config.write_text(_config(scenario, settings, server.base_url, server.log,
                                  link.host_dev, workdir), encoding="utf-8")
        agent_env = {**env, "AI_BOTTLENECK_NVML_BACKEND": NVML_BACKEND,
                     "AI_BOTTLENECK_FAKE_NVML": str(gpu_state)}
        argv = [*agent_command(), "diagnose", "--json", "--record", str(record),
                "--config", str(config), "--duration", f"{duration:g}s",
                "--window", f"{window:g}s"]
        began = time.monotonic()
        load: tuple[EngineLoadRun, PhaseRun] | None = None
        with _agent_process(argv, agent_env, out, err) as agent:
            meter = CpuMeter({"agent": agent.pid, "service": server.pid, "gpu": gpu.pid,
                              "load_generator": os.getpid()})
            try:
                origin = _first_sample_time(record, agent, err, start_timeout)
                timeline = scenario.timeline(first_phase_start(origin, settings, notes))
                runs: list[PhaseRun] = []
                lead_in_cpu = None
                for phase, planned in zip(scenario.phases, timeline, strict=True):
                    _sleep_until(planned.start)
                    shares = meter.shares()
                    if runs:
                        runs[-1].cpu = shares
                    else:
                        lead_in_cpu = shares
                    if phase.link_rate_bits_per_second != rate:
                        rate = phase.link_rate_bits_per_second
                        link.set_rate(rate_in=rate, rate_out=rate)
                    run = PhaseRun(phase.name, phase.expected_label, planned.start, planned.end,
                                   time.time(), rate)
                    runs.append(run)
                    previous = load
                    load = None if phase.load is None else (EngineLoadRun(
                        server.base_url + "/completion", phase.load, planned.end).start(), run)
                    if previous is not None:
                        previous[1].load = previous[0].finish()
                _sleep_until(timeline[-1].end)
                runs[-1].cpu = meter.shares()
            finally:
                if load is not None:
                    load[1].load = load[0].finish()
            wait_for_agent(agent, origin, duration)
        agent_seconds = time.monotonic() - began
    document = agent_document(agent, out, err, record, record_to)
    return ScenarioRun(scenario.name, settings, timeline, document["windows"],
                       document["verdict"], runs, agent_seconds, host_cpu_before,
                       err.read_text(encoding="utf-8", errors="replace"), notes, lead_in_cpu)
