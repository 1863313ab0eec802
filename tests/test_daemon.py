"""`ai-bottleneck run` as a user runs it: the installed command in a subprocess.

The GPUs are the fake NVML (8 of them, read from a state file the test can
change live); host and nic are the real probes on this machine; a plugin probe
that hangs comes in through a real entry-point distribution. /metrics is
scraped over real sockets and parsed with prometheus_client's parser.
Every wait is bounded and every subprocess is killed if a test fails.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ai_bottleneck.daemon import _fresh_record_path
from ai_bottleneck.discovery import GROUP
from ai_bottleneck.exporter import Collector
from ai_bottleneck.labels import LABEL_NAMES as LABELS
from ai_bottleneck.probes.nvml import BACKEND_ENV
from ai_bottleneck.probes.sample import Sample
from tests.fakes.fake_nvml import BACKEND_SPEC, STATE_ENV, make_gpus, update_gpu, write_state
from tests.test_exporter import Clock, full_state
from tests.tlsfiles import make_pki

REPO = Path(__file__).resolve().parent.parent
GPUS = 8
#: Fast enough that a window closes within a few seconds, slow enough for a busy
#: 2-core machine. Windows close reorder_seconds (2 s) after their end.
FAST = "[agent]\ninterval_seconds = 0.25\nwindow_seconds = 1\n"
QUIET = "[probes.oom]\nenabled = false\n"  # the oom watcher is not under test here
WAIT = 20.0  # seconds: the bound on every wait for the daemon


def entry_point() -> str:
    found = shutil.which("ai-bottleneck") or str(Path(sys.executable).parent / "ai-bottleneck")
    assert Path(found).is_file(), "the ai-bottleneck entry point is not installed (pip install)"
    return found


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """A real installed distribution declaring the hanging probe, for PYTHONPATH."""
    root = tmp_path / "plugins"
    info = root / "abtest_hanging-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: abtest-hanging\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\nhanging = tests.plugin_probes:create_hanging\n")
    return root


@pytest.fixture
def nvml_state(tmp_path: Path) -> Path:
    path = tmp_path / "nvml.json"
    write_state(path, make_gpus(GPUS, utilization_percent=90,
                                memory_used_bytes=40 * 2**30))
    return path


def env_for(nvml_state: Path, plugins: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "AI_BOTTLENECK_CONFIG", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([*([str(plugins)] if plugins else []), str(REPO)])
    env[BACKEND_ENV] = BACKEND_SPEC
    env[STATE_ENV] = str(nvml_state)
    return env


class Daemon:
    """One `ai-bottleneck run` subprocess; stderr goes to a file the test reads."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path,
                 journal: bool = False):
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        if journal:
            # journald's contract: JOURNAL_STREAM names the device and inode of stderr.
            st = os.fstat(self._log.fileno())
            env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        self.proc = subprocess.Popen([entry_point(), "run", *args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log)
        self._port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        """Wait until ``count`` stderr lines match; return them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if re.search(pattern, line)]
            if len(lines) >= count:
                return lines
            if self.proc.poll() is not None:
                pytest.fail(f"the agent exited ({self.proc.returncode}) before logging "
                            f"{pattern!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in the agent's log after {timeout:g}s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def port(self) -> int:
        if self._port is None:
            line = self.wait_log(r"serving metrics on https?://")[0]
            match = re.search(r"serving metrics on https?://\S+:(\d+)", line)
            assert match, line
            self._port = int(match.group(1))
        return self._port

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

    def stop(self, timeout: float = WAIT) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def _start(config: str, env: dict[str, str], *extra: str, journal: bool = False) -> Daemon:
        path = tmp_path / f"config-{len(started)}.toml"
        path.write_text(config)
        daemon = Daemon(["--config", str(path), "--listen", "127.0.0.1:0", *extra], env,
                        tmp_path / f"agent-{len(started)}.log", journal=journal)
        started.append(daemon)
        return daemon

    yield _start
    for daemon in started:
        daemon.close()


Families = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(conn: http.client.HTTPConnection, headers: dict[str, str] | None = None
           ) -> tuple[int, str]:
    conn.request("GET", "/metrics", headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read().decode()


def parse(body: str) -> Families:
    """Every sample by name and sorted label pairs (the parser rejects malformed text)."""
    out: Families = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(families: Families, metric: str, **labels: str) -> float | None:
    return families.get(metric, {}).get(tuple(sorted(labels.items())))


def scrape_until(conn: http.client.HTTPConnection, done: Callable[[Families], bool],
                 what: str, timeout: float = WAIT) -> Families:
    deadline = time.monotonic() + timeout
    while True:
        status, body = scrape(conn)
        assert status == 200, body
        families = parse(body)
        if done(families):
            return families
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen in /metrics after {timeout:g}s:\n{body}")
        time.sleep(0.1)


def assert_one_hot(families: Families) -> str:
    state = {dict(k)["label"]: v for k, v in families["ai_bottleneck_window_label"].items()}
    assert set(state) == set(LABELS)
    assert sorted(state.values()) == [0.0] * (len(LABELS) - 1) + [1.0], state
    return next(label for label, v in state.items() if v == 1.0)


# -- a running agent -------------------------------------------------------------------


def test_scrapes_parse_one_hot_and_a_hanging_probe_delays_nothing(
        start: Callable[..., Daemon], nvml_state: Path, plugins: Path) -> None:
    daemon = start(FAST + QUIET, env_for(nvml_state, plugins))
    conn = daemon.connect()
    try:
        # The hanging plugin's first call overran its time limit and is still blocked
        # (it blocks for 30 s); the scrapes below all happen while it hangs.
        families = scrape_until(
            conn, lambda f: (value(f, "ai_bottleneck_probe_errors_total", probe="hanging",
                                   reason="timeout") or 0) >= 1
            and "ai_bottleneck_window_label" in f, "a timed-out probe and a first window")
        assert value(families, "ai_bottleneck_probe_up", probe="hanging") == 0.0
        assert value(families, "ai_bottleneck_probe_up", probe="gpu") == 1.0
        gpus = {dict(k)["gpu"] for k in families["ai_bottleneck_gpu_memory_used_bytes"]}
        assert gpus == {str(i) for i in range(GPUS)}
        assert value(families, "ai_bottleneck_host_cpus") == os.cpu_count()
        hung_since = time.monotonic()
        host_before = value(families, "ai_bottleneck_probe_samples_total", probe="host")
        assert host_before is not None

        # One keep-alive connection, as Prometheus keeps one: every scrape answers
        # (the client gives up after 5 s, the probe hangs for 30 s), the state set
        # stays one-hot, and sampling goes on around the hung probe.
        update_gpu(nvml_state, 3, memory_used_bytes=77 * 2**30)
        families = scrape_until(
            conn, lambda f: value(f, "ai_bottleneck_gpu_memory_used_bytes", gpu="3",
                                  uuid=f"GPU-fa4e0000-0000-4000-8000-{3:012x}",
                                  name="NVIDIA H100 80GB HBM3") == 77 * 2**30,
            "GPU 3's new memory reading")
        for _ in range(20):
            status, body = scrape(conn)
            assert status == 200
            families = parse(body)
            assert_one_hot(families)
        host_after = value(families, "ai_bottleneck_probe_samples_total", probe="host")
        assert host_after is not None and host_after > host_before
        assert value(families, "ai_bottleneck_probe_errors_total", probe="hanging",
                     reason="timeout") == 1.0  # not called again while its call hangs
        assert time.monotonic() - hung_since < 30, "the scrapes outlasted the hang"
    finally:
        conn.close()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def test_sigterm_flushes_the_recording_and_it_replays_to_the_same_windows(
        start: Callable[..., Daemon], nvml_state: Path, plugins: Path, tmp_path: Path) -> None:
    record = tmp_path / "agent.jsonl.gz"  # gzip: an unflushed file would not even read
    daemon = start(FAST + f'record_file = "{record}"\n' + QUIET, env_for(nvml_state, plugins))
    conn = daemon.connect()
    try:
        families = scrape_until(conn, lambda f: "ai_bottleneck_window_label" in f,
                                "a first window")
    finally:
        conn.close()
    recorded_before_stop = {p: value(families, "ai_bottleneck_probe_samples_total", probe=p)
                            for p in ("gpu", "host", "nic")}
    # A probe call is still hung: SIGTERM must not wait for it.
    assert daemon.stop() == 0
    log = daemon.log()
    assert "Traceback" not in log and "agent stopped" in log
    logged = [m.groups() for m in re.finditer(r"window \S+: (\w+) \(([\d.]+)\)", log)]

    result = subprocess.run([entry_point(), "replay", "--json", str(record)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    windows = [json.loads(line) for line in result.stdout.splitlines()]
    # The open window was labelled at exit and its samples reached the file: the
    # replay gives exactly the windows the agent published, last one included.
    assert [(w["label"], f"{w['confidence']:.2f}") for w in windows] == logged
    with gzip.open(record, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh][1:]  # after the header
    for probe, counted in recorded_before_stop.items():
        assert counted is not None
        assert sum(1 for row in rows if row["probe"] == probe) >= counted, probe
    last_sample = max(row["t"] for row in rows)
    assert windows[-1]["start"] <= last_sample <= windows[-1]["end"]


def test_sighup_reloads_a_good_config_and_keeps_running_on_a_bad_one(
        start: Callable[..., Daemon], nvml_state: Path, tmp_path: Path) -> None:
    daemon = start(FAST + QUIET, env_for(nvml_state), journal=True)
    config = tmp_path / "config-0.toml"
    conn = daemon.connect()  # one keep-alive connection across both reloads
    try:
        families = scrape_until(conn, lambda f: value(f, "ai_bottleneck_probe_up",
                                                      probe="nic") == 1.0, "nic up")
        assert value(families, "ai_bottleneck_sampling_interval_seconds") == 0.25

        config.write_text('[agent]\ninterval_seconds = "often"\n')
        daemon.proc.send_signal(signal.SIGHUP)
        refused = daemon.wait_log("reload refused")
        assert len(refused) == 1 and refused[0].startswith("<3>")
        assert f"{config}: agent.interval_seconds:" in refused[0]
        status, body = scrape(conn)
        assert status == 200 and daemon.proc.poll() is None
        assert value(parse(body), "ai_bottleneck_sampling_interval_seconds") == 0.25

        config.write_text("[agent]\ninterval_seconds = 0.5\nwindow_seconds = 2\n"
                          "[probes.nic]\nenabled = false\n" + QUIET)
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log("config reloaded")[0].startswith("<6>")
        status, body = scrape(conn)
        assert status == 200
        families = parse(body)
        assert value(families, "ai_bottleneck_probe_usable", probe="nic") == 0.0
        assert value(families, "ai_bottleneck_probe_usable", probe="gpu") == 1.0
        # The endpoint shows the settings it now runs with.
        assert value(families, "ai_bottleneck_sampling_interval_seconds") == 0.5
        assert value(families, "ai_bottleneck_window_length_seconds") == 2.0
    finally:
        conn.close()
    assert daemon.stop() == 0
    # Logs journald reads well: a priority prefix on every line, no timestamps of ours.
    lines = daemon.log().splitlines()
    assert lines and all(re.match(r"<[0-7]>\S", line) for line in lines), lines
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\d", line) for line in lines)


PASSWORD = "correct horse battery staple"


def test_tls_and_basic_auth_through_the_web_config_flag(
        start: Callable[..., Daemon], nvml_state: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                   f"  key_file: {pki.server_key}\nbasic_auth_users:\n  prometheus: {hashed}\n")
    daemon = start(FAST + QUIET, env_for(nvml_state), "--web.config.file", str(web))
    assert daemon.wait_log("serving metrics on https://")
    ctx = ssl.create_default_context(cafile=pki.ca_cert)

    def get(headers: dict[str, str]) -> tuple[int, str]:
        conn = http.client.HTTPSConnection("localhost", daemon.port, timeout=10, context=ctx)
        try:
            return scrape(conn, headers)
        finally:
            conn.close()

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    assert get({})[0] == 401
    assert get(basic("prometheus", "wrong"))[0] == 401
    status, body = get(basic("prometheus", PASSWORD))
    assert status == 200
    assert value(parse(body), "ai_bottleneck_probe_usable", probe="gpu") == 1.0
    # Plain HTTP to the TLS port gets no metrics.
    plain = daemon.connect()
    try:
        plain_status: int | None = scrape(plain)[0]
    except (http.client.HTTPException, OSError):
        plain_status = None
    finally:
        plain.close()
    assert plain_status != 200
    assert daemon.stop() == 0


# -- start-up failures -------------------------------------------------------------------


def run_once(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([entry_point(), "run", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{proc.args} did not exit in {timeout:g}s")
    return proc.returncode, out, err


def test_config_errors_are_one_line_and_exit_2(tmp_path: Path, nvml_state: Path) -> None:
    def config(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    plain = config("plain-password.yml", "basic_auth_users:\n  alice: secret\n")
    cases: list[tuple[list[str], str]] = [
        (["--config", str(tmp_path / "absent.toml")], "absent.toml: no such file"),
        (["--config", str(config("bad.toml", "[agent\n"))], "bad.toml: not valid TOML"),
        (["--config", str(config("unknown.toml", "[agent]\nintervall_seconds = 1\n"))],
         "unknown.toml: agent.intervall_seconds: unknown key"),
        (["--config", str(config("type.toml", '[agent]\ninterval_seconds = "fast"\n'))],
         "type.toml: agent.interval_seconds:"),
        (["--config", str(config("range.toml", "[agent]\ninterval_seconds = 0.01\n"))],
         "range.toml: agent.interval_seconds: must be >= 0.1"),
        (["--config", str(config("probe.toml", "[probes.host]\nspeed = 1\n"))],
         "probe.toml: probes.host.speed: unknown key"),
        (["--config", str(config("record.toml", f'[agent]\nrecord_file = '
                                                f'"{tmp_path}/no/such/dir/r.jsonl"\n'))],
         "agent.record_file"),
        (["--config", str(config("ok.toml", QUIET)), "--listen", "localhost"],
         "listen"),
        (["--config", str(tmp_path / "ok.toml"), "--web.config.file", str(plain)],
         "basic_auth_users.alice: not a bcrypt hash"),
    ]
    env = env_for(nvml_state)
    procs = [(run_once(args, env), expected) for args, expected in cases]
    try:
        for proc, expected in procs:
            code, out, err = finish(proc)
            assert code == 2, (proc.args, err)
            assert "Traceback" not in err
            lines = err.strip().splitlines()
            assert len(lines) == 1, (proc.args, err)
            assert lines[0].startswith("ai-bottleneck: error: ") and expected in lines[0], err
            assert out == ""
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_the_error_line_carries_a_priority_under_journald(tmp_path: Path,
                                                          nvml_state: Path) -> None:
    def stderr_of(journal_stream: Callable[[os.stat_result], str]) -> list[str]:
        with open(tmp_path / "stderr", "wb") as err_file:
            env = {**env_for(nvml_state),
                   "JOURNAL_STREAM": journal_stream(os.fstat(err_file.fileno()))}
            result = subprocess.run([entry_point(), "run", "--config",
                                     str(tmp_path / "absent.toml")], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err_file, timeout=60, check=False)
        assert result.returncode == 2
        return (tmp_path / "stderr").read_text().splitlines()

    lines = stderr_of(lambda st: f"{st.st_dev}:{st.st_ino}")
    assert len(lines) == 1 and lines[0].startswith("<3>ai-bottleneck: error: "), lines
    # Inherited from a service but stderr is elsewhere (a shell in a desktop terminal):
    # plain text, no priority prefix.
    lines = stderr_of(lambda st: f"{st.st_dev}:{st.st_ino + 1}")
    assert len(lines) == 1 and lines[0].startswith("ai-bottleneck: error: "), lines


def test_listen_port_in_use_is_one_line_and_a_failure(tmp_path: Path,
                                                      nvml_state: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "ok.toml").write_text(QUIET)
        code, _out, err = finish(run_once(["--config", str(tmp_path / "ok.toml"),
                                           "--listen", f"127.0.0.1:{port}"],
                                          env_for(nvml_state)))
    assert code not in (0, 2)
    assert err.strip().splitlines() == [
        f"ai-bottleneck: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


# -- recordings never overwrite one another --------------------------------------------


def test_a_new_recording_never_overwrites_an_earlier_one(tmp_path: Path) -> None:
    path = tmp_path / "agent.jsonl"
    now = 1_800_000_000.0
    taken: set[Path] = set()
    for _ in range(3):  # three reloads within one second
        fresh = _fresh_record_path(path, now=now)
        assert fresh not in taken and not fresh.exists()
        assert fresh.name.startswith("agent") and fresh.name.endswith(".jsonl")
        fresh.write_text("{}\n")
        taken.add(fresh)



# -- lines rendered by the sampling thread ahead of the scrapes ---------------------------


def test_prepared_lines_render_exactly_as_lines_made_at_the_scrape() -> None:
    clock = Clock()
    state = full_state(clock, gpus=3)
    state.record_window("gpu_bound", 0.8, clock() - 10, clock())

    def fresh(openmetrics: bool) -> str:
        return Collector(state).render(openmetrics)

    collector = Collector(state)
    collector.prepare()
    for openmetrics in (False, True):
        assert collector.render(openmetrics) == fresh(openmetrics)
    # Recorded after prepare(): the scrape renders those series itself.
    clock.t += 1
    state.record_samples("host", [Sample(clock(), "host", {}, {"cpu_utilization_ratio": 0.75})])
    assert "ai_bottleneck_host_cpu_utilization_ratio 0.75\n" in collector.render()
    assert collector.render() == fresh(False)
    # A GPU that fails ends its good series at once, prepared or not.
    state.record_samples("gpu", [Sample(clock(), "gpu", {"gpu": "1", "uuid": "GPU-0001"},
                                        error="GPU is lost")])
    assert collector.render() == fresh(False)
    collector.prepare()
    assert collector.render() == fresh(False)
    assert 'ai_bottleneck_gpu_up{gpu="1",uuid="GPU-0001"} 0.0\n' in collector.render()
    # Series that went stale leave the output though their lines were prepared.
    clock.t += 3600
    assert "ai_bottleneck_gpu_memory_used_bytes" not in collector.render()
    assert collector.render() == fresh(False)
