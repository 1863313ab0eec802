"""The sampling loop: calls each probe on its schedule, each call under a time limit.

Every probe call runs on that probe's own worker thread, so a probe that hangs
or crashes never stalls the loop, the other probes or the endpoint: a call
that overruns its ``timeout_seconds`` is reported as a failed sample once, and
the probe is not called again until the hung call returns. Samples are handed
to one consumer on the loop's own thread, once per tick, as the rounds that
finished (each probe call's samples, in the order they were gathered), so the
consumer (ai_bottleneck.assembly.RunPipeline: recording, windows, exporter
state) needs no locks of its own.

Active probes (traffic generators) run under the traffic budget: never two at
once, skipped with a recorded reason when the budget or a busy NIC says so.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, Protocol

from ai_bottleneck.budget import bytes_in_samples, expected_bytes_of
from ai_bottleneck.probes.base import (
    Clock,
    InFlight,
    LinkLoadSource,
    Probe,
    Skip,
    skipped_sample,
)
from ai_bottleneck.probes.sample import Sample, one_line

log = logging.getLogger(__name__)



class Budget(Protocol):
    """What the sampler asks of the active-probe traffic budget (ai_bottleneck.budget)."""

    def permit(self, probe: str, expected_bytes: float,
               nic_utilization_ratio: float | None, /) -> Skip | None: ...

    def spend(self, probe: str, bytes_used: float, /) -> None: ...


@dataclass(frozen=True)
class Round:
    """One finished (or given-up) call of one probe.

    ``failure`` is None when ``sample()`` returned (its samples may still be
    failed samples), "timeout" when the call overran its time limit, "crash"
    when it raised; ``samples`` then holds the one failed sample that says so.
    ``in_progress``: not a finished call but a report on one still running
    (``InFlight``): its samples say what the call has taken so far.
    """

    probe: str
    samples: Sequence[Sample]
    duration_seconds: float
    failure: Literal["timeout", "crash"] | None = None
    message: str = ""
    in_progress: bool = False


#: What the sampler hands the rounds of one tick to (at least one round each time).
RoundConsumer = Callable[[Sequence[Round]], None]


class _Worker:
    """One daemon thread per probe. Daemon, so that a call that never returns cannot
    keep the process alive at exit (a ThreadPoolExecutor joins its threads at exit)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[list[Sample]], Callable[[], list[Sample]]]
                                      | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"probe-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the loop thread, which reports it
                fut.set_exception(exc)

    def submit(self, fn: Callable[[], list[Sample]]) -> Future[list[Sample]]:
        fut: Future[list[Sample]] = Future()
        self._jobs.put((fut, fn))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)


@dataclass
class _Slot:
    probe: Probe
    executor: _Worker
    interval: float
    next_due: float = 0.0
    future: Future[list[Sample]] | None = None
    started: float = 0.0
    call_seconds: float | None = None  # the probe's own time in its last sample() call
    timed_out: bool = False


class Sampler:
    """Run probes on a schedule and hand every round to the consumer."""

    def __init__(
        self,
        probes: Sequence[Probe],
        interval_seconds: float,
        consumer: RoundConsumer | None = None,
        *,
        budget: Budget | None = None,
        wall_clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        active_interval_override: float | None = None,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0")
        self.interval = interval_seconds
        self._consumer = consumer
        self.budget = budget
        self._wall = wall_clock
        self._mono = monotonic
        self._link_utilization: float | None = None
        self._slots: list[_Slot] = []
        start = monotonic()
        for p in probes:
            interval = p.interval_seconds or interval_seconds
            if p.active and active_interval_override is not None:
                interval = active_interval_override
            self._slots.append(_Slot(p, _Worker(p.name), interval, next_due=start))
        self.consumer_errors = 0

    # -- the worker side -------------------------------------------------

    def _call(self, probe: Probe) -> list[Sample]:
        """Runs on the probe's worker thread."""
        if not probe.active or self.budget is None:
            return list(probe.sample())
        reason = self.budget.permit(probe.name, expected_bytes_of(probe),
                                    self._link_utilization)
        if reason is not None:
            return [skipped_sample(probe.name, reason, t=self._wall())]
        samples = list(probe.sample())
        self.budget.spend(probe.name, bytes_in_samples(samples))
        return samples

    # -- the loop side ---------------------------------------------------

    def _timed_call(self, slot: _Slot) -> list[Sample]:
        """Runs on the worker: the call, and how long the probe itself took."""
        t0 = self._mono()
        try:
            return self._call(slot.probe)
        finally:
            slot.call_seconds = self._mono() - t0

    def _start(self, slot: _Slot, now: float) -> None:
        slot.started = now
        slot.timed_out = False
        slot.call_seconds = None
        slot.future = slot.executor.submit(functools.partial(self._timed_call, slot))
        slot.next_due = max(slot.next_due + slot.interval, now)

    def _submit_due(self, now: float) -> None:
        for slot in self._slots:
            if not slot.probe.active and slot.future is None and now >= slot.next_due:
                self._start(slot, now)
        # Active probes never overlap: one in flight at a time (a hung one still counts,
        # it may still be sending). A due probe that has to wait stays due and goes first
        # once the link is free, the longest-waiting first.
        if any(s.probe.active and s.future is not None for s in self._slots):
            return
        due = [s for s in self._slots if s.probe.active and now >= s.next_due]
        if due:
            self._start(min(due, key=lambda s: s.next_due), now)

    def _collect(self, now: float) -> list[Round]:
        out: list[Round] = []
        for slot in self._slots:
            fut = slot.future
            if fut is None:
                continue
            name = slot.probe.name
            duration = now - slot.started
            if fut.done():
                slot.future = None
                if slot.call_seconds is not None:
                    duration = slot.call_seconds
                if slot.timed_out:
                    log.info("probe %s: late call returned after %.1fs (discarded)", name, duration)
                    continue
                try:
                    samples = fut.result()
                except Exception as exc:  # a probe bug: counted, recorded, never fatal
                    msg = f"probe crashed: {type(exc).__name__}: {one_line(exc)}"
                    log.warning("probe %s: %s", name, msg)
                    out.append(Round(name, (Sample(t=self._wall(), probe=name, error=msg),),
                                     duration, "crash", msg))
                    continue
                if isinstance(slot.probe, LinkLoadSource):
                    self._link_utilization = slot.probe.link_utilization(samples)
                out.append(Round(name, samples, duration))
            elif not slot.timed_out and duration > slot.interval and isinstance(
                    slot.probe, InFlight):
                # A call that outlasts its interval can outlast a window: say what runs.
                running = tuple(slot.probe.in_flight())
                if running:
                    out.append(Round(name, running, duration, in_progress=True))
                if duration > slot.probe.timeout_seconds:
                    out.append(self._time_out(slot, duration))
            elif not slot.timed_out and duration > slot.probe.timeout_seconds:
                out.append(self._time_out(slot, duration))
        return out

    def _time_out(self, slot: _Slot, duration: float) -> Round:
        name = slot.probe.name
        slot.timed_out = True
        msg = f"timed out after {slot.probe.timeout_seconds:g}s"
        log.warning("probe %s: %s", name, msg)
        return Round(name, (Sample(t=self._wall(), probe=name, error=msg),), duration,
                     "timeout", msg)

    def tick(self) -> list[Round]:
        """One pass: start the due calls, wait (bounded) for them, collect what finished."""
        now = self._mono()
        self._submit_due(now)
        deadline = now + self.interval * 0.9
        pending = [s.future for s in self._slots if s.future is not None and not s.timed_out]
        for fut in pending:
            remaining = deadline - self._mono()
            if remaining <= 0:
                break
            try:
                fut.exception(timeout=remaining)
            except TimeoutError:
                break
        rounds = self._collect(self._mono())
        if rounds and self._consumer is not None:
            self._feed(self._consumer, rounds)
        return rounds

    def _feed(self, consumer: RoundConsumer, rounds: Sequence[Round]) -> None:
        # A consumer that raises must not end the sampling thread (nothing would
        # restart it): counted, and logged with its traceback the first time only.
        try:
            consumer(rounds)
        except Exception:
            self.consumer_errors += 1
            if self.consumer_errors == 1:
                log.exception("the round consumer failed; sampling goes on")
            else:
                log.debug("the round consumer failed again", exc_info=True)

    def run(self, stop: threading.Event, duration_seconds: float | None = None,
            on_tick: Callable[[], None] | None = None) -> None:
        """Tick every interval until ``stop`` is set or the duration has passed."""
        start = self._mono()
        n = 0
        while not stop.is_set():
            self.tick()
            if on_tick is not None:
                on_tick()
            n += 1
            if duration_seconds is not None and self._mono() - start >= duration_seconds - 1e-6:
                break
            next_at = start + n * self.interval
            delay = next_at - self._mono()
            if delay > 0:
                stop.wait(delay)

    def close(self) -> None:
        """Stop the workers and close the probes; hung calls are abandoned, not joined."""
        for slot in self._slots:
            slot.executor.stop()
            if slot.future is None or slot.future.done():
                try:
                    slot.probe.close()
                except Exception:
                    log.debug("probe %s: close raised", slot.probe.name, exc_info=True)
