"""Plays one lab scenario against the real agent and returns what the agent said.

    run = run_scenario(scenario, QUICK, workdir)
    run.windows      # the `diagnose --json` window objects
    run.timeline     # the phases in unix time (TimedPhase), for tests/lab/score.py

What runs, all real except the GPU:
- the stand-in inference service (tests/lab/service.py) in a network namespace of its own
  (tests/netns.py), reached through a veth pair with a tbf limit that each phase sets
  (5 Mbit/s for the article's network_bound case, 1 Gbit/s, "fast", otherwise);
- ``ai-bottleneck diagnose --json --record FILE --config CFG --duration D --window W`` as a
  subprocess for the whole scenario, with the fake NVML (the project's one fake) reading
  the simulated GPU's state file that the service publishes. Its config points the http
  probe at the service's /infer with an image-sized body, the nic probe at the lab's veth,
  and the oom probe at the service's log;
- per phase: the service's parameters (POST /control), the link rate and the load
  (tests/lab/load.py clients on real sockets).

Timing: the agent's windows start at its first sample (agent/windows.py). The runner reads
that time from the recording as it is written and starts the first phase on a window
boundary after ``lead_in_windows`` windows, so that every phase covers whole windows and
no window mixes two phases. The agent runs ``tail_windows`` more windows after the last
phase. Everything is bounded in time and torn down on failure: load threads, the agent,
the service and the namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.lab.cpu import (
    DISTURBED_OTHER_CPU,
    QUIET_CPU_RATIO,
    QUIET_WAIT_SECONDS,
    CpuMeter,
    wait_for_quiet_host,
)
from tests.lab.load import BackgroundLoad, LoadResult
from tests.lab.placement import placed
from tests.lab.schedule import FAST_LINK_BITS_PER_SECOND, IDLE_SERVICE, Phase, Scenario
from tests.lab.score import Score, TimedPhase, score_runs
from tests.lab.service import REPO_ROOT, ServiceHandle, start_service
from tests.netns import Link, netns_link, wait_for_port

NVML_BACKEND = "tests.fakes.fake_nvml:from_env"
#: The body of the agent's own timed call to /infer: an image-sized upload (a scanned page
#: for an OCR API), as a user of the agent would configure it. Measured in the article's
#: case (10 clients uploading 5 MB through 5 Mbit/s): a 75 kB call takes 1.8-4.4 s, well
#: over the 1 s objective yet short enough that each 5 s window sees one; 30 kB took
#: 0.7-1.2 s (not clearly slow) and 100 kB 2.7-6.7 s (windows with no call in them).
PROBE_BODY_BYTES = 75_000


@dataclass(frozen=True)
class AgentSettings:
    """How the agent runs for a scenario, and how long its phases are."""

    window_seconds: float
    interval_seconds: float
    windows_per_phase: int
    lead_in_windows: int = 1
    tail_windows: int = 1
    probe_body_bytes: int = PROBE_BODY_BYTES
    latency_objective_seconds: float = 1.0
    probe_timeout_seconds: float = 10.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def thresholds(self) -> dict[str, Any]:
        """The [thresholds] the agent runs with: the defaults but for these."""
        return {"latency_objective_seconds": self.latency_objective_seconds}


#: CI: 5 s windows sampled every 0.5 s (ten readings a window), phases of five windows:
#: one window of guard band after each change, three steady windows, and one more that is
#: either steady or, where another change follows, its guard band. Windows shorter than 5 s
#: are shorter than the agent's own timed calls take in the network_bound phase (see
#: PROBE_BODY_BYTES).
QUICK = AgentSettings(window_seconds=5.0, interval_seconds=0.5, windows_per_phase=5)
#: The full benchmark: the agent's default 10 s windows at its default 1 s interval, twelve
#: windows a phase (schedule.full_scenarios).
FULL = AgentSettings(window_seconds=10.0, interval_seconds=1.0, windows_per_phase=12)


@dataclass
class PhaseRun:
    """What the runner did in one phase: planned times, when it really switched, and the
    load's outcome."""

    name: str
    label: str
    start: float
    end: float
    switched_at: float
    link_rate_bits_per_second: float | None
    load: dict[str, Any] | None = None
    cpu: dict[str, float] | None = None  # CpuMeter.shares over the phase

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ScenarioRun:
    scenario: str
    settings: AgentSettings
    timeline: list[TimedPhase]
    windows: list[dict[str, Any]]
    verdict: dict[str, Any]
    phases: list[PhaseRun]
    agent_seconds: float
    host_cpu_before: float | None
    agent_stderr: str = ""
    notes: list[str] = field(default_factory=list)
    lead_in_cpu: dict[str, float] | None = None

    def score(self, *, raw: bool = False) -> Score:
        """The run's score; ``raw``: of the windows' own labels, before hysteresis."""
        return score_runs([(self.timeline, self.label_windows(raw=raw))])

    def label_windows(self, *, raw: bool = False) -> list[dict[str, Any]]:
        if not raw:
            return self.windows
        return [{**w, "label": w.get("raw_label", w["label"])} for w in self.windows]

    @property
    def other_cpu(self) -> float | None:
        """The most CPU other work on the host took in the lead-in or any phase."""
        shares = [c["other"] for c in (self.lead_in_cpu, *(p.cpu for p in self.phases))
                  if c is not None]
        return max(shares) if shares else None

    @property
    def disturbed(self) -> bool:
        return self.other_cpu is not None and self.other_cpu >= DISTURBED_OTHER_CPU

    def schedule_json(self) -> dict[str, Any]:
        """The ground truth of this run, kept beside its recording in the corpus."""
        return {"scenario": self.scenario, "settings": self.settings.to_json(),
                "thresholds": self.settings.thresholds(),
                "phases": [{"name": p.name, "label": p.label, "start": p.start, "end": p.end}
                           for p in self.timeline],
                "host_cpu_before": self.host_cpu_before, "lead_in_cpu": self.lead_in_cpu,
                "phase_cpu": {p.name: p.cpu for p in self.phases}}

    def to_json(self) -> dict[str, Any]:
        return {**self.schedule_json(), "runs": [p.to_json() for p in self.phases],
                "agent_seconds": self.agent_seconds, "notes": self.notes,
                "labels": [[w["start"], w["end"], w["label"], w.get("raw_label")]
                           for w in self.windows]}


class LabRunError(RuntimeError):
    """The scenario could not be played (agent or service failed); one line with the cause."""


def timeline_from_json(document: Mapping[str, Any]) -> list[TimedPhase]:
    """The phases of a ``schedule_json`` document."""
    return [TimedPhase(str(p["name"]), str(p["label"]), float(p["start"]), float(p["end"]))
            for p in document["phases"]]


def scaled(scenario: Scenario, settings: AgentSettings) -> Scenario:
    """``scenario`` with every phase ``settings.windows_per_phase`` windows long."""
    length = settings.window_seconds * settings.windows_per_phase
    return dataclasses.replace(scenario, phases=tuple(
        dataclasses.replace(p, duration_seconds=length) for p in scenario.phases))


def agent_command() -> list[str]:
    """The installed `ai-bottleneck` beside this Python, as a user runs it."""
    script = Path(sys.executable).parent / "ai-bottleneck"
    if script.exists():
        return [str(script)]
    found = shutil.which("ai-bottleneck")
    return [found] if found else [sys.executable, "-m", "ai_bottleneck.cli"]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for everything the lab writes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _physical_nics() -> list[str]:
    """This machine's own interfaces (those with a device in sysfs): their traffic is other
    work's, not the lab service's, so the lab's agent leaves them out."""
    root = Path("/sys/class/net")
    return sorted(p.name for p in root.iterdir() if (p / "device").exists())


IPERF3_PORT = 5299


def agent_config(settings: AgentSettings, *, infer_url: str, service_log: Path,
                 nic: str, scenario: Scenario | None = None,
                 iperf3_target: str | None = None, cgroup_root: Path | None = None) -> str:
    """The agent's config for a lab run: every probe pointed at the lab, plus the
    scenario's own tables ("{nic}" in them names the lab's NIC)."""
    body_bytes = (scenario.probe_body_bytes if scenario is not None
                  and scenario.probe_body_bytes is not None else settings.probe_body_bytes)
    timeout = (scenario.probe_timeout_seconds if scenario is not None
               and scenario.probe_timeout_seconds is not None
               else settings.probe_timeout_seconds)
    tables: dict[str, dict[str, Any]] = {
        "agent": {"interval_seconds": settings.interval_seconds,
                  "window_seconds": settings.window_seconds},
        "thresholds": settings.thresholds(),
        "probes.gpu": {"enabled": True},
        "probes.host": {"enabled": True},
        "probes.nic": {"enabled": True, "include": [nic], "exclude": _physical_nics()},
        "probes.http": {"enabled": True, "interval_seconds": settings.interval_seconds,
                        "targets": [{"url": infer_url, "name": "lab /infer",
                                     "method": "POST",
                                     "body_bytes": body_bytes,
                                     "headers": {"Content-Type": "application/octet-stream"},
                                     "timeout_seconds": timeout}]},
        "probes.oom": {"enabled": True, "files": [str(service_log)],
                       "interval_seconds": settings.interval_seconds},
        "probes.iperf3": ({"enabled": True, "targets": [iperf3_target],
                           "duration_seconds": 2.0, "assumed_bits_per_second": 1e8}
                          if iperf3_target is not None else {"enabled": False}),
        "probes.download": {"enabled": False},
        "probes.engine": {"enabled": False},
        # Where the scenario places the service in a cgroup of its own, the service probe
        # finds it as the GPU process's cgroup (nothing named); elsewhere the service runs
        # in the lab's own cgroup and the host is judged, as before.
        "probes.service": ({"enabled": True, "cgroup_root": str(cgroup_root)}
                           if cgroup_root is not None else {"enabled": False}),
    }
    for table, values in (scenario.agent_tables if scenario is not None else {}).items():
        tables[table.replace("{nic}", nic)] = {
            k.replace("{nic}", nic): v.replace("{nic}", nic) if isinstance(v, str) else v
            for k, v in values.items()}
    lines = ["# Written by tests/lab/runner.py for one scenario run."]
    for table, values in tables.items():
        lines.append(f"\n[{table}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _first_sample_time(record: Path, agent: subprocess.Popen[bytes], stderr: Path,
                       timeout: float) -> float:
    """The time of the first sample the agent fed (its windows' origin), read from the
    recording as the agent flushes it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.exists():
            with record.open(encoding="utf-8") as fh:
                fh.readline()  # the header
                line = fh.readline()
            if line.endswith("\n"):
                return float(json.loads(line)["t"])
        if agent.poll() is not None:
            raise LabRunError(f"the agent exited with {agent.returncode} before its first "
                              f"sample: {_tail(stderr)}")
        time.sleep(0.05)
    raise LabRunError(f"the agent recorded no sample within {timeout:g}s: {_tail(stderr)}")


def first_phase_start(origin: float, settings: AgentSettings, notes: list[str]) -> float:
    """The first phase's start: on a window boundary at least ``lead_in_windows`` after the
    agent's first sample, later (and noted) when the runner is late."""
    window = settings.window_seconds
    k = settings.lead_in_windows
    while origin + k * window < time.time() + 0.2:
        k += 1
    if k > settings.lead_in_windows:
        notes.append(f"the first phase started {k} windows in, not "
                     f"{settings.lead_in_windows}: the runner was late")
    return origin + k * window


def wait_for_agent(agent: subprocess.Popen[bytes], origin: float, duration: float) -> None:
    """Until the agent's diagnose run ends (its duration from ``origin``, 30 s of slack)."""
    remaining = origin + duration - time.time() + 30.0
    try:
        agent.wait(timeout=max(remaining, 30.0))
    except subprocess.TimeoutExpired:
        raise LabRunError(f"the agent did not end within {duration:g}s + 30s") from None


def agent_document(agent: subprocess.Popen[bytes], out: Path, err: Path, record: Path,
                   record_to: Path | None) -> dict[str, Any]:
    """The ended agent's ``--json`` document; its recording kept where asked."""
    if agent.returncode != 0:
        raise LabRunError(f"the agent exited with {agent.returncode}: {_tail(err)}")
    try:
        document = json.loads(out.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LabRunError(f"the agent's --json output is not JSON: {exc}") from None
    if record_to is not None:
        _keep_recording(record, record_to)
    return document


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "(no output)"
    return " | ".join(text.splitlines()[-lines:]) or "(no output)"


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


@contextlib.contextmanager
def _agent_process(argv: Sequence[str], env: Mapping[str, str], stdout: Path,
                   stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(list(argv), cwd=REPO_ROOT, env=dict(env),
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        yield process
    finally:
        if process.poll() is None:
            # SIGINT first: the agent ends early and still writes its report.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


class _Driver:
    """Switches the service, the link and the load from phase to phase."""

    def __init__(self, service: ServiceHandle, link: Link, cpu: CpuMeter) -> None:
        self.service = service
        self.link = link
        self.cpu = cpu
        self.load: BackgroundLoad | None = None
        self.load_phase: PhaseRun | None = None
        self.current: PhaseRun | None = None
        self.lead_in_cpu: dict[str, float] | None = None
        self.rate: float | None = link.rate_in_bits_per_second
        self.rate_out: float | None = link.rate_out_bits_per_second

    def enter(self, phase: Phase, planned: TimedPhase) -> PhaseRun:
        switched = time.time()
        self.close_cpu()
        rate = phase.link_rate_bits_per_second or FAST_LINK_BITS_PER_SECOND
        rate_out = phase.link_rate_out_bits_per_second or rate
        if (rate, rate_out) != (self.rate, self.rate_out):
            self.link.set_rate(rate_in=rate, rate_out=rate_out)
            self.rate, self.rate_out = rate, rate_out
        if phase.hop_rate_in_bits_per_second != self.link.hop_rate_in_bits_per_second:
            self.link.set_hop_rate(phase.hop_rate_in_bits_per_second)
        self.service.control(**phase.service.to_json())
        run = PhaseRun(phase.name, phase.expected_label, planned.start, planned.end, switched,
                       rate)
        self.current = run
        previous = self.stop_load_later()
        if phase.load is not None:
            duration = max(planned.end - time.time(), 0.1)
            self.load = BackgroundLoad(self.service.infer_url,
                                       **phase.load.run_load_kwargs(duration)).start()
            self.load_phase = run
        self.finish(previous)
        return run

    def stop_load_later(self) -> tuple[BackgroundLoad, PhaseRun] | None:
        """Hand over the running load (its own deadline is this phase's end) to be joined
        after the next phase has started, so its last requests do not delay the switch."""
        if self.load is None or self.load_phase is None:
            return None
        previous = (self.load, self.load_phase)
        self.load = self.load_phase = None
        return previous

    @staticmethod
    def finish(previous: tuple[BackgroundLoad, PhaseRun] | None) -> None:
        if previous is None:
            return
        load, run = previous
        result: LoadResult = load.finish(timeout=60.0)
        run.load = result.to_json()

    def close_cpu(self) -> None:
        """End the CPU account of the phase in progress, or of the lead-in."""
        shares = self.cpu.shares()
        if self.current is not None:
            self.current.cpu = shares
            self.current = None
        elif self.lead_in_cpu is None:
            self.lead_in_cpu = shares

    def close(self) -> None:
        self.finish(self.stop_load_later())


def run_scenario(scenario: Scenario, settings: AgentSettings, workdir: Path, *,
                 record_to: Path | None = None, quiet_wait: float = QUIET_WAIT_SECONDS,
                 start_timeout: float = 60.0) -> ScenarioRun:
    """Play ``scenario`` (phases scaled to ``settings``) against `ai-bottleneck diagnose`.

    ``record_to``: also keep the agent's recording there (gzip'd when it ends in .gz).
    Raises LabRunError with one line when the namespace, the service or the agent fails.
    """
    try:
        return _play(scaled(scenario, settings), settings, workdir, record_to=record_to,
                     quiet_wait=quiet_wait, start_timeout=start_timeout)
    except (OSError, subprocess.SubprocessError, httpx.HTTPError, TimeoutError,
            RuntimeError) as exc:
        if isinstance(exc, LabRunError):
            raise
        detail = f" ({exc.stderr.strip()})" if isinstance(
            exc, subprocess.CalledProcessError) and exc.stderr else ""
        raise LabRunError(f"{scenario.name}: {type(exc).__name__}: {exc}{detail}".replace(
            "\n", " ")) from exc


def _play(scenario: Scenario, settings: AgentSettings, workdir: Path, *,
          record_to: Path | None, quiet_wait: float, start_timeout: float) -> ScenarioRun:
    workdir.mkdir(parents=True, exist_ok=True)
    window = settings.window_seconds
    duration = (settings.lead_in_windows + len(scenario.phases) * settings.windows_per_phase
                + settings.tail_windows) * window
    host_cpu_before = wait_for_quiet_host(quiet_wait) if quiet_wait > 0 else None
    record = workdir / "record.jsonl"
    out, err = workdir / "agent.json", workdir / "agent.err"
    for stale in (record, out, err, workdir / "gpu.json", workdir / "service.log"):
        stale.unlink(missing_ok=True)  # a file left by an earlier run must not be read
    # Lead-in and tail: the model loaded, no load, the first phase's link.
    first_rate = scenario.phases[0].link_rate_bits_per_second or FAST_LINK_BITS_PER_SECOND
    notes = []
    if host_cpu_before is not None and host_cpu_before >= QUIET_CPU_RATIO:
        notes.append(f"host CPU was {host_cpu_before:.0%} busy before the run (other work on "
                     f"this machine); idle and balanced phases may read busier")
    first_out = scenario.phases[0].link_rate_out_bits_per_second or first_rate
    with netns_link(first_rate, first_out) as link, start_service(
            workdir / "gpu.json", workdir / "service.log", link=link, bind=link.ns_addr,
            params=IDLE_SERVICE, gpu_model=scenario.gpu_model) as service, placed(
                scenario.placement, service.process.pid, seconds=duration + 60) as placement:
        # The first phase's hop from the start: the agent's active probes run once, at
        # the start of a diagnose run, and measure the path as the phase will have it.
        link.set_hop_rate(scenario.phases[0].hop_rate_in_bits_per_second)
        iperf3_target = None
        if scenario.iperf3_peer:
            link.popen(["iperf3", "-s", "-p", str(IPERF3_PORT), "-B", link.ns_addr],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_port(link, link.ns_addr, IPERF3_PORT)
            iperf3_target = f"{link.ns_addr}:{IPERF3_PORT}"
        config = workdir / "agent.toml"
        config.write_text(agent_config(settings, infer_url=service.infer_url,
                                       service_log=service.log, nic=link.host_dev,
                                       scenario=scenario, iperf3_target=iperf3_target,
                                       cgroup_root=placement.cgroup_root),
                          encoding="utf-8")
        env = {**os.environ, "AI_BOTTLENECK_NVML_BACKEND": NVML_BACKEND,
               "AI_BOTTLENECK_FAKE_NVML": str(service.gpu_state),
               "PYTHONPATH": os.pathsep.join(
                   p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        argv = [*agent_command(), "diagnose", "--json", "--record", str(record),
                "--config", str(config), "--duration", f"{duration:g}s",
                "--window", f"{window:g}s"]
        began = time.monotonic()
        with _agent_process(argv, env, out, err) as agent:
            driver = _Driver(service, link, CpuMeter({
                "agent": agent.pid, "service": service.process.pid,
                "load_generator": os.getpid(), **placement.processes}))
            try:
                origin = _first_sample_time(record, agent, err, start_timeout)
                timeline = scenario.timeline(first_phase_start(origin, settings, notes))
                runs = []
                for phase, planned in zip(scenario.phases, timeline, strict=True):
                    _sleep_until(planned.start)
                    runs.append(driver.enter(phase, planned))
                _sleep_until(timeline[-1].end)
                driver.close_cpu()
                service.control(**IDLE_SERVICE.to_json())  # the tail: no load
            finally:
                driver.close()
            wait_for_agent(agent, origin, duration)
        agent_seconds = time.monotonic() - began
    document = agent_document(agent, out, err, record, record_to)
    return ScenarioRun(scenario.name, settings, timeline, document["windows"],
                       document["verdict"], runs, agent_seconds, host_cpu_before,
                       err.read_text(encoding="utf-8", errors="replace"), notes,
                       driver.lead_in_cpu)


def _keep_recording(record: Path, target: Path) -> None:
    import gzip

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".gz":
        with record.open("rb") as src, gzip.GzipFile(target, "wb", compresslevel=9,
                                                     mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copyfile(record, target)
