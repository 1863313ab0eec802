"""The iperf3 probe: throughput, retransmits and RTT to peers, measured by the iperf3 program.

It drives the ``iperf3`` program (the distribution package) as a subprocess with
``--json``, one target after the other, each run under a hard time limit after
which it is killed. Why the program and not a binding to
libiperf: a subprocess can always be killed when a peer hangs (a library call
in our process cannot), there is no C ABI to match per distribution, and the
JSON output has been stable across iperf3 3.x releases.

A non-zero exit or an ``"error"`` key in the JSON is a failed sample carrying
iperf3's message ("the server is busy running a test", "unable to connect to
server: ..."). A busy server (it runs one test at a time) is retried after a
random back-off, a bounded number of times.

The probe is ``active``: it makes traffic, so the agent runs it under the
active-probe budget (agent/budget.py); ``expected_bytes()`` is its estimate
for the next run. Peers need an iperf3 server; ``Iperf3Server``
(probes/iperf3_server.py) runs one for them when ``server.enabled`` is set.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    clean_values,
    failed,
    one_line,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.iperf3_server import Iperf3Server, ServerOptions
from ai_bottleneck.probes.vocabulary import BYTES_VALUE, THROUGHPUT_VALUE

log = logging.getLogger(__name__)

NAME = "iperf3"
DEFAULT_PORT = 5201
BUSY_MARKER = "server is busy"
#: Between two tests an iperf3 server closes and reopens its listener; a client that
#: arrives then is reset. Like "busy", that is worth a retry after a back-off.
TRANSIENT_MARKERS = (BUSY_MARKER, "Connection reset by peer")


@dataclass(frozen=True)
class Target:
    """A peer running an iperf3 server."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(text: str) -> Target:
    """'host', 'host:port', '[v6addr]:port' or a bare IPv6 address; ValueError if none."""
    s = text.strip()
    host, port_text = s, ""
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise ValueError(f"target {text!r}: missing ']' after the IPv6 address")
        host, rest = s[1:close], s[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"target {text!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"target {text!r}: expected host or host:port")
    if not port_text:
        return Target(host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"target {text!r}: port must be a number from 1 to 65535")
    return Target(host, int(port_text))


def _whole_seconds(name: str, value: float) -> None:
    if value != int(value):
        raise ValueError(f"{name}: iperf3 takes whole seconds, got {value:g}")


@dataclass(frozen=True)
class Options:
    targets: tuple[str, ...] = field(default=(), metadata=option_info(
        doc="peers running an iperf3 server: host, host:port or [IPv6]:port (port 5201 "
            "if none)"))
    duration_seconds: float = field(default=5.0, metadata=option_info(
        min=1, max=60, doc="how long each test sends (iperf3 -t), whole seconds"))
    parallel_streams: int = field(default=1, metadata=option_info(
        min=1, max=32, doc="parallel TCP streams per test (iperf3 -P)"))
    reverse: bool = field(default=False, metadata=option_info(
        doc="the peer sends and this host receives (iperf3 -R; direction 'receive')"))
    omit_seconds: float = field(default=0.0, metadata=option_info(
        min=0, max=10, doc="leading seconds left out of the result, to skip TCP slow start "
                           "(iperf3 -O); they add to the test's time and traffic"))
    max_bits_per_second: float | None = field(default=None, metadata=option_info(
        min=1000, doc="cap on the test's total rate (iperf3 -b, split over the streams); "
                      "none = as fast as the path allows"))
    assumed_bits_per_second: float = field(default=1e9, metadata=option_info(
        min=1000, doc="rate assumed for the traffic estimate of a target not measured yet"))
    interval_seconds: float = field(default=600.0, metadata=option_info(
        min=10, doc="how often to test every target"))
    connect_timeout_seconds: float = field(default=3.0, metadata=option_info(
        min=0.1, max=60, doc="limit for connecting to a peer (iperf3 --connect-timeout)"))
    grace_seconds: float = field(default=5.0, metadata=option_info(
        min=1, max=60, doc="time beyond connect + omit + duration for iperf3 to exchange "
                           "results; after it the process is killed"))
    busy_retries: int = field(default=2, metadata=option_info(
        min=0, max=10, doc="retries when the peer is busy running another test or resets "
            "the connection between two tests"))
    busy_backoff_seconds: float = field(default=2.0, metadata=option_info(
        min=0, max=60, doc="a busy peer is retried after a random wait between half and all "
                           "of this, doubled on each retry"))
    program: str = field(default="iperf3", metadata=option_info(
        doc="the iperf3 program, by name on PATH or by path"))
    server: ServerOptions = field(default_factory=ServerOptions, metadata=option_info(
        doc="an iperf3 server this agent runs for its peers (off by default)"))

    def __post_init__(self) -> None:
        _whole_seconds("duration_seconds", self.duration_seconds)
        _whole_seconds("omit_seconds", self.omit_seconds)
        for text in self.targets:
            parse_target(text)

    @property
    def run_limit_seconds(self) -> float:
        """Hard time limit of one iperf3 run."""
        return (self.connect_timeout_seconds + self.omit_seconds + self.duration_seconds
                + self.grace_seconds)


def client_argv(options: Options, target: Target) -> list[str]:
    """The iperf3 command line for one test of ``target``."""
    argv = [options.program, "--client", target.host, "--port", str(target.port), "--json",
            "--time", str(int(options.duration_seconds)),
            "--parallel", str(options.parallel_streams),
            "--connect-timeout", str(max(1, round(options.connect_timeout_seconds * 1000)))]
    if options.omit_seconds:
        argv += ["--omit", str(int(options.omit_seconds))]
    if options.reverse:
        argv.append("--reverse")
    if options.max_bits_per_second is not None:
        per_stream = max(1, int(options.max_bits_per_second / options.parallel_streams))
        argv += ["--bitrate", str(per_stream)]
    return argv


class Iperf3Error(Exception):
    """An iperf3 run that gave no measurement; the message is one line for the sample."""


def _decode_json(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_result(obj: Mapping[str, Any]) -> dict[str, float]:
    """Values from iperf3's JSON: raise Iperf3Error for an error report or a missing sum."""
    error = obj.get("error")
    if error:
        raise Iperf3Error(one_line(error))
    end = obj.get("end")
    received = end.get("sum_received") if isinstance(end, dict) else None
    if not isinstance(received, dict) or _number(received, "bits_per_second") is None:
        raise Iperf3Error("iperf3 reported no received total (end.sum_received)")
    assert isinstance(end, dict)
    sent = end.get("sum_sent")
    retransmits = _number(sent, "retransmits") if isinstance(sent, dict) else None
    # Each stream's sender reports its smoothed RTT in microseconds. In reverse mode
    # the sender is the peer, which reports 0 there: unknown, so left out.
    rtts = []
    for stream in end.get("streams") or []:
        sender = stream.get("sender") if isinstance(stream, dict) else None
        rtt = _number(sender, "mean_rtt") if isinstance(sender, dict) else None
        if rtt is not None and rtt > 0:
            rtts.append(rtt)
    return clean_values({
        THROUGHPUT_VALUE: _number(received, "bits_per_second"),
        BYTES_VALUE: _number(received, "bytes"),
        "seconds": _number(received, "seconds"),
        "retransmits": retransmits,
        "rtt_seconds": sum(rtts) / len(rtts) / 1e6 if rtts else None,
    })


class Iperf3Probe:
    """Tests each target in turn; one sample per target and direction."""

    name = NAME
    active = True

    def __init__(self, options: Options | None = None, *, clock: Clock = time.time,
                 rng: random.Random | None = None):
        self.options = options or Options()
        self.targets = [parse_target(t) for t in self.options.targets]
        self.interval_seconds: float | None = self.options.interval_seconds
        self.timeout_seconds = self._worst_case_seconds()
        self._clock = clock
        self._rng = rng or random.Random()
        self._last_rate: dict[Target, float] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closing = threading.Event()

    def _worst_case_seconds(self) -> float:
        o = self.options
        backoffs = sum(o.busy_backoff_seconds * 2.0**i for i in range(o.busy_retries))
        per_target = (o.busy_retries + 1) * o.run_limit_seconds + backoffs
        return max(1, len(self.targets)) * per_target + 1.0

    @property
    def direction(self) -> str:
        return "receive" if self.options.reverse else "send"

    def check(self) -> Availability:
        if not self.targets:
            return Availability.no('no targets configured (option targets = ["host[:port]"])')
        path = shutil.which(self.options.program)
        if path is None:
            return Availability.no(
                f"{self.options.program} not found: install the iperf3 package")
        try:
            res = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return Availability.no(f"{path} does not run: {one_line(exc)}")
        first = (res.stdout or res.stderr).strip().splitlines()
        if res.returncode != 0 or not first or "iperf 3" not in first[0]:
            return Availability.no(f"{path} is not iperf3 (version output: "
                                   f"{one_line(first[0] if first else '')!r})")
        return Availability.yes(first[0].split("(")[0].strip())

    def expected_bytes(self) -> float:
        """Traffic of the next ``sample()``: for each target, (omit + duration) at the cap,
        else at the last rate measured, else at ``assumed_bits_per_second``."""
        o = self.options
        total = 0.0
        for target in self.targets:
            rate = o.max_bits_per_second or self._last_rate.get(target,
                                                                o.assumed_bits_per_second)
            total += rate / 8 * (o.omit_seconds + o.duration_seconds)
        return total

    def sample(self) -> Sequence[Sample]:
        return [self.measure(target) for target in self.targets
                if not self._closing.is_set()]

    def measure(self, target: Target) -> Sample:
        """One test of ``target``, retrying while it is busy; never raises."""
        labels = {"target": target.label, "direction": self.direction}
        attempts = 0
        while True:
            attempts += 1
            t = self._clock()
            try:
                values = parse_result(self._run(target))
            except Iperf3Error as exc:
                message = str(exc)
                busy = any(marker in message for marker in TRANSIENT_MARKERS)
                if busy and attempts <= self.options.busy_retries:
                    wait = self._backoff(attempts)
                    log.info("iperf3 %s: server busy, retry %d in %.1f s (%s)", target.label,
                             attempts, wait, message)
                    if not self._closing.wait(wait):
                        continue
                if busy and attempts > 1:
                    message += f" ({attempts} tries)"
                return failed(self.name, message, labels, t=t)
            self._last_rate[target] = values[THROUGHPUT_VALUE]
            return Sample(t=t, probe=self.name, labels=labels, values=values)

    def _backoff(self, attempt: int) -> float:
        base = self.options.busy_backoff_seconds * 2.0 ** (attempt - 1)
        return self._rng.uniform(base / 2, base)

    def _run(self, target: Target) -> dict[str, Any]:
        """Run iperf3 once; its decoded JSON, or Iperf3Error saying why there is none."""
        argv = client_argv(self.options, target)
        limit = self.options.run_limit_seconds
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise Iperf3Error(f"{self.options.program} not found: install the iperf3 "
                              "package") from None
        except OSError as exc:
            raise Iperf3Error(f"cannot start {self.options.program}: {one_line(exc)}") from None
        with self._lock:
            self._proc = proc
        try:
            if self._closing.is_set():
                proc.kill()
            try:
                out, err = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise Iperf3Error(f"iperf3 did not finish within the {limit:g} s limit "
                                  f"(connect + omit + duration + grace); killed") from None
        finally:
            with self._lock:
                self._proc = None
            if proc.poll() is None:  # only on an exception above: never leave it running
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if self._closing.is_set():
            raise Iperf3Error("probe closed during the test")
        obj = _decode_json(out.decode("utf-8", "replace"))
        if obj is not None and (obj.get("error") or proc.returncode == 0):
            return obj
        lines = err.decode("utf-8", "replace").strip().splitlines()
        detail = one_line(lines[-1]) if lines else "no output"
        raise Iperf3Error(f"iperf3 exited with status {proc.returncode}: {detail}")

    def make_server(self) -> Iperf3Server | None:
        """The server for peers, when ``server.enabled``; the caller starts and stops it."""
        if not self.options.server.enabled:
            return None
        return Iperf3Server(self.options.server, program=self.options.program)

    def close(self) -> None:
        """Stop: abort a back-off wait and kill a test in progress."""
        self._closing.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            # Popen.kill checks whether the process was reaped, so a pid reused since
            # then is never signalled.
            proc.kill()


def create(options: Mapping[str, Any]) -> Iperf3Probe:
    return Iperf3Probe(parse_options(Options, options))
