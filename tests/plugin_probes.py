"""Third-party-style probes for the discovery and sampler tests: real plugins
loaded through a real entry-point distribution made by the tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ai_bottleneck.probes.base import Availability
from ai_bottleneck.probes.options import parse_options
from ai_bottleneck.probes.sample import Sample


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class CounterOptions:
    step: float = 1.0


class CounterProbe:
    name = "counter"
    active = False
    interval_seconds: float | None = None
    timeout_seconds = 1.0

    def __init__(self, step: float = 1.0) -> None:
        self.step = step
        self.n = 0.0
        self.closed = False

    def check(self) -> Availability:
        return Availability.yes("always")

    def sample(self) -> Sequence[Sample]:
        self.n += self.step
        return [Sample(t=time.time(), probe=self.name, values={"count": self.n})]

    def close(self) -> None:
        self.closed = True


def create_counter(options: Mapping[str, Any]) -> CounterProbe:
    return CounterProbe(parse_options(CounterOptions, options).step)


def create_raises(options: Mapping[str, Any]) -> CounterProbe:
    raise RuntimeError("cannot open the widget")


class UnusableProbe(CounterProbe):
    name = "unusable"

    def check(self) -> Availability:
        return Availability.no("no widget on this host")


def create_unusable(options: Mapping[str, Any]) -> UnusableProbe:
    return UnusableProbe()


class HangingProbe(CounterProbe):
    """Blocks in sample() until released (bounded: at most 30 s)."""

    name = "hanging"
    timeout_seconds = 0.3

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def sample(self) -> Sequence[Sample]:
        self.release.wait(30)
        return super().sample()


class CrashingProbe(CounterProbe):
    name = "crashing"

    def sample(self) -> Sequence[Sample]:
        raise ZeroDivisionError("bug in probe")


class ActiveProbe(CounterProbe):
    """Traffic-generator-shaped: reports bytes it 'moved' and how long it ran."""

    active = True

    def __init__(self, name: str, seconds: float, nbytes: float) -> None:
        super().__init__()
        self.name = name
        self.seconds = seconds
        self.nbytes = nbytes
        self.running: list[tuple[float, float]] = []

    def expected_bytes(self) -> float:
        return self.nbytes

    def sample(self) -> Sequence[Sample]:
        start = time.monotonic()
        time.sleep(self.seconds)
        self.running.append((start, time.monotonic()))
        return [Sample(t=time.time(), probe=self.name, values={"bytes": self.nbytes})]


def create_hanging(options: Mapping[str, Any]) -> HangingProbe:
    """For the daemon tests: a plugin whose every call hangs (30 s at most, then the
    daemon's next call hangs again), installed through a real entry point."""
    parse_options(NoOptions, options)
    return HangingProbe()
