"""The classifier: one window's aggregates in, a label with confidence, evidence and
advice out. A pure function: no I/O, no clock.

The rules are tried in the order of RULES below; the first that holds names
the label. docs/classifier.md is the same table in words, with every
threshold and its source. Confidence comes from the signals that support
the label (how far past their thresholds, and how many agree), lowered by
named factors (only coarse GPU data, objective still met, few samples).
"""

from __future__ import annotations

from collections.abc import Callable

from ai_bottleneck import engine_rules, gpu_faults, gpu_workloads, service_cpu
from ai_bottleneck.advice import advice_for, warnings_for
from ai_bottleneck.facts import Facts, memory_text
from ai_bottleneck.findings import Classification, Finding, Signal, above, below
from ai_bottleneck.labels import Label
from ai_bottleneck.reader import read, summary
from ai_bottleneck.thresholds import Thresholds
from ai_bottleneck.windows import ProbeState, Window
from ai_bottleneck.words import bits, pct, secs, size

DEFAULT_THRESHOLDS = Thresholds()


# -- the rules, in order -------------------------------------------------------------

Rule = Callable[[Facts], Finding | None]


def out_of_memory(f: Facts) -> Finding | None:
    r = f.readings
    if not (r.oom_events or r.load_failures):
        return None
    what = []
    if r.oom_events:
        what.append(f"{r.oom_events:.0f} out-of-memory event(s)")
    if r.load_failures:
        what.append(f"{r.load_failures:.0f} model-load failure(s)")
    found = Finding(Label.VRAM_BOUND, hard=True, signals=[Signal(1.0, (
        " and ".join(what) + f" in this window ({', '.join(r.event_sources)})"))])
    found.notes += [memory_text(g) for g in f.gpus if g.memory_used_ratio is not None]
    return found


def no_data(f: Facts) -> Finding | None:
    r = f.readings
    if any(r.probe(p).has_data for p in ("gpu", "host", "nic", "http")):
        return None
    return Finding(Label.UNKNOWN, notes=[
        "no GPU, host, NIC or HTTP measurement in this window: " + "; ".join(
            f"{p} {r.probe(p)}" for p in ("gpu", "host", "nic", "http"))])


def memory_full_and_failing(f: Facts) -> Finding | None:
    th = f.thresholds
    failing = [h for h in f.readings.http if h.server_errors]
    if not failing:
        return None
    full = [g for g in f.gpus if (m := g.memory_used_ratio) is not None and m >= th.vram_high_ratio]
    if not full:
        return None
    g, h = full[0], failing[0]
    assert g.memory_used_ratio is not None
    return Finding(Label.VRAM_BOUND, signals=[
        Signal(above(g.memory_used_ratio, th.vram_high_ratio), memory_text(g)),
        Signal(0.5, f"{h.target}: {h.server_errors} server error(s) (5xx) while memory is full"),
    ], notes=["no out-of-memory event was seen: memory this full is normal for servers that "
              "pre-reserve it, so this is likely, not certain"], factors=[(0.8, "soft evidence")])


def service_down(f: Facts) -> Finding | None:
    if not f.down_http or f.working_http:
        return None
    notes = [f"every call to {h.target} failed ({h.failures} of {h.failures}): "
             f"{h.errors[0] if h.errors else 'no answer'}" for h in f.down_http]
    notes.append("a service that does not answer is not idle; the label needs it answering")
    return Finding(Label.UNKNOWN, notes=notes + f.context())


def network_phases_dominate(f: Facts) -> Finding | None:
    if not (f.slow and f.net_dominant):
        return None
    found = Finding(Label.NETWORK_BOUND,
                    signals=f.slow_signals() + f.network_signals(phases=True))
    if (s := f.gpu_under_signal()) is not None:
        found.signals.append(s)
    elif f.gpu_saturated and f.top_gpu is not None:
        found.notes.append(f"{f.gpu_text(f.top_gpu)} is busy too: both limit the service")
        found.factors.append((0.8, "GPU busy too"))
    elif f.top_gpu is not None:
        found.notes.append(f"{f.gpu_text(f.top_gpu)}: not under-used, but the request time "
                           "is the network's")
        found.factors.append((0.9, "GPU partly used"))
    _add_mismatch(f, found)
    return found


def gpu_saturated(f: Facts) -> Finding | None:
    g = f.top_gpu
    if not f.gpu_saturated or g is None or g.busy is None:
        return None
    th = f.thresholds
    found = Finding(Label.GPU_BOUND, signals=[Signal(
        above(g.busy, f.gpu_busy_threshold),
        f"{f.gpu_text(g)} (>= {pct(f.gpu_busy_threshold)})")])
    if g.gpm and g.utilization is not None and g.utilization >= th.gpu_busy_utilization_ratio:
        found.signals.append(Signal(0.5, f"{g.title} utilization {pct(g.utilization)} agrees"))
    if g.power_watts and g.power_limit_watts and g.power_watts >= 0.9 * g.power_limit_watts:
        found.signals.append(Signal(0.5, f"{g.title} power {g.power_watts:.0f} W of its "
                                         f"{g.power_limit_watts:.0f} W limit"))
    if f.slow:
        found.signals += f.slow_signals()
        w = f.worst
        if f.server_dominant and w is not None and f.server_share is not None:
            found.signals.append(Signal(above(f.server_share, th.server_phase_dominant_ratio),
                                        f"{w.target}: server time {pct(f.server_share)} of "
                                        f"request time ({f.phase_text(w)})"))
        elif f.server_share is None:
            found.factors.append((0.85, "no request phase timings"))
        if f.saturated_nics:
            found.notes += [s.text for s in f.network_signals(phases=False)]
            found.factors.append((0.8, "a NIC is saturated too"))
    elif f.latency_ok:
        found.notes.append(_within_objective(f))
        found.factors.append((0.75, "requests still within the objective"))
    else:
        found.notes.append("no HTTP target measured: judged from the GPU alone")
    if f.coarse_only:
        found.factors.append((0.85, "only coarse GPU utilization"))
    _add_coverage_factors(f, found)
    return found


def cpu_saturated(f: Facts) -> Finding | None:
    signals = f.cpu_signals()
    if not signals or f.gpu_blind or f.gpu_saturated:
        return None
    found = Finding(Label.CPU_BOUND, signals=signals + f.slow_signals())
    if (s := f.gpu_under_signal()) is not None:
        found.signals.append(s)
    if f.no_gpu:
        found.notes.append(f"no GPU data on this host ({f.readings.probe('gpu')})")
    elif not f.gpu_under and f.top_gpu is not None:
        found.notes.append(f"{f.gpu_text(f.top_gpu)}: partly used")
        found.factors.append((0.8, "GPU partly used"))
    h = f.host
    if (h is not None and h.busiest_core is not None and h.cpu is not None
            and h.busiest_core >= f.thresholds.cpu_saturated_ratio and h.cpu < 0.5):
        found.notes.append(f"one core is pinned while the CPU overall is {pct(h.cpu)}: a "
                           "single-threaded step (one worker, the Python GIL)")
    if f.latency_ok:
        found.notes.append(_within_objective(f))
        found.factors.append((0.75, "requests still within the objective"))
    _add_coverage_factors(f, found)
    return found


def network_evidence_gpu_under_used(f: Facts) -> Finding | None:
    if not f.gpu_under:
        return None
    evidence = f.network_signals(phases=False)
    if not evidence:
        return None
    if not (f.slow or f.saturated_nics or f.load_present()):
        return None  # a stale shortfall on a host nobody uses: idle, with a warning
    found = Finding(Label.NETWORK_BOUND, signals=evidence + f.slow_signals())
    if (s := f.gpu_under_signal()) is not None:
        found.signals.append(s)
    if f.latency_ok:
        # Measured trouble on the path decides even while the agent's own calls are
        # fast: the clients' traffic is what fills the path (a full 5 Mbit/s uplink
        # serves one small probe call in time and ten uploads in minutes).
        found.notes.append(_within_objective(f) + ", but the path measured above is what "
                           "the clients' traffic crosses")
        found.factors.append((0.85, "the agent's own calls still within the objective"))
    elif not f.slow:
        found.notes.append("no HTTP target measured: a job waiting on network input "
                           "(dataset, checkpoints, remote storage)")
    _add_mismatch(f, found)
    _add_coverage_factors(f, found)
    return found


def slow_in_server_gpu_working(f: Facts) -> Finding | None:
    g = f.top_gpu
    if not (f.slow and f.server_dominant) or g is None or g.busy is None or f.gpu_under:
        return None
    w = f.worst
    assert w is not None and f.server_share is not None
    server = Signal(above(f.server_share, f.thresholds.server_phase_dominant_ratio),
                    f"{w.target}: server time {pct(f.server_share)} of request time "
                    f"({f.phase_text(w)})")
    return Finding(Label.GPU_BOUND, signals=[*f.slow_signals(), server], notes=[
        f"{f.gpu_text(g)}: working but not saturated; the time is spent in the server while "
        "the GPU works, so per-request GPU work is the likely limit (requests not batched)"],
        factors=[(0.6, "likely, not certain")])


def slow_unexplained(f: Facts) -> Finding | None:
    if not f.slow:
        return None
    notes = [s.text for s in f.slow_signals()]
    if f.worst is not None and (text := f.phase_text(f.worst)):
        notes.append(f"{f.worst.target}: {text}")
    notes.append("no resource is saturated and there is no positive network evidence; "
                 "checked: " + ("; ".join(f.context()) or "nothing measured"))
    if f.gpu_under is False and not f.gpu_saturated:
        low = f.thresholds.gpu_low_utilization_ratio
        notes.append(f"the GPU is not under-used (>= {pct(low)}), "
                     "so low GPU cannot point at the network either")
    return Finding(Label.UNKNOWN, notes=notes)


def blind_spot(f: Facts) -> Finding | None:
    r = f.readings
    blind = []
    if f.gpu_blind:
        blind.append(f"gpu {r.probe('gpu')}")
    if f.host is None:
        blind.append(f"host {r.probe('host')}")
    if not blind:
        return None
    return Finding(Label.UNKNOWN, notes=[
        "cannot tell balanced or idle from a bottleneck without: " + "; ".join(blind),
        *f.context()])


def balanced(f: Facts) -> Finding | None:
    if not f.load_present():
        return None
    th = f.thresholds
    found = Finding(Label.BALANCED)
    if f.latency_ok and f.worst is not None and f.worst.total is not None:
        p95 = f.worst.total.p95
        found.signals.append(Signal(below(p95, th.latency_objective_seconds),
                                    _within_objective(f)))
    else:
        found.notes.append("no HTTP target measured: judged from resource use alone")
        found.factors.append((0.8, "no latency measurement"))
    g = f.top_gpu
    if g is not None and g.busy is not None:
        found.signals.append(Signal(below(g.busy, f.gpu_busy_threshold),
                                    f"{f.gpu_text(g)}: below {pct(f.gpu_busy_threshold)}"))
    h = f.host
    if h is not None and h.cpu is not None:
        found.signals.append(Signal(below(h.cpu, th.cpu_saturated_ratio),
                                    f"CPU {pct(h.cpu)}: below {pct(th.cpu_saturated_ratio)}"))
    busiest = f.busiest_link()
    if busiest is not None:
        name, use = busiest
        found.signals.append(Signal(below(use.ratio, th.nic_saturation_ratio),
                                    f"busiest NIC {name} {use.direction} at {pct(use.ratio)} "
                                    f"of {use.of_text()}"))
    _add_coverage_factors(f, found)
    return found


def idle(f: Facts) -> Finding:
    th = f.thresholds
    found = Finding(Label.IDLE)
    own = " beyond the agent's own calls" if f.own_load_text() else ""
    gpu = f.gpu_activity_beyond_own
    if gpu is not None:
        found.signals.append(Signal(below(gpu, th.gpu_idle_ratio),
                                    f"GPU activity{own} at most {pct(gpu)} "
                                    f"(< {pct(th.gpu_idle_ratio)})"))
    h = f.host
    if h is not None and h.cpu is not None:
        found.signals.append(Signal(below(h.cpu, th.cpu_idle_ratio),
                                    f"CPU {pct(h.cpu)} (< {pct(th.cpu_idle_ratio)})"))
    traffic = f.nic_traffic_beyond_own
    if traffic is not None:
        found.signals.append(Signal(below(traffic, th.nic_idle_bits_per_second),
                                    f"network traffic{own} at most {bits(traffic)} "
                                    f"(< {bits(th.nic_idle_bits_per_second)})"))
    if f.latency_ok:
        found.notes.append(_within_objective(f))
    if (text := f.own_load_text()) is not None:
        found.notes.append(text)
    _add_coverage_factors(f, found)
    return found


RULES: tuple[tuple[str, Rule], ...] = (
    ("out-of-memory or model-load failure events -> vram_bound, at once", out_of_memory),
    ("no resource probe measured anything -> unknown", no_data),
    ("VRAM >= 95% and server errors -> vram_bound (soft)", memory_full_and_failing),
    ("every HTTP call failed -> unknown (service down)", service_down),
    ("KV cache full, requests waiting or preempted -> vram_bound", engine_rules.kv_cache_full),
    ("slow requests, network phases dominate -> network_bound", network_phases_dominate),
    ("requests waiting in the engine, GPU busy -> gpu_bound", engine_rules.queue_with_gpu_busy),
    ("GPU busy -> gpu_bound", gpu_saturated),
    ("CPU saturated, GPU not busy -> cpu_bound", cpu_saturated),
    ("GPU under-used and network evidence -> network_bound", network_evidence_gpu_under_used),
    ("slow, engine idle -> unknown (time before the engine)", engine_rules.engine_idle_while_slow),
    ("slow requests, server time dominates, GPU working -> gpu_bound (likely)",
     slow_in_server_gpu_working),
    ("slow requests, nothing explains them -> unknown", slow_unexplained),
    ("GPU or host not measured -> unknown", blind_spot),
    ("load served, nothing saturated -> balanced", balanced),
    ("no meaningful load -> idle", idle),
)


def classify(window: Window, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Classification:
    """Label one window. Pure: the same window and thresholds give the same answer."""
    r = read(window)
    # The service's own CPU where it was measured; the host's becomes context.
    judged, service_notes = service_cpu.judge_service(r, window)
    f = engine_rules.facts(judged, thresholds)
    # A GPU fallen off the bus or needing a reset comes before every rule (gpu_faults.py).
    health = gpu_faults.GpuHealth(window)
    faults = health.hard_faults()
    found: Finding | None = Finding(Label.UNKNOWN, notes=faults, hard=True) if faults else None
    for _, rule in RULES if found is None else ():
        found = rule(f)
        if found is not None:
            break
    assert found is not None  # idle always answers
    evidence = [s.text for s in found.signals] + found.notes + service_notes
    if found.label is Label.CPU_BOUND:
        evidence += service_cpu.cpu_names(window)
    evidence += [f"confidence lowered: {why}" for _, why in found.factors]
    return Classification(
        label=found.label, confidence=found.confidence(), evidence=tuple(evidence),
        advice=tuple(found.advice or advice_for(found, f)),
        warnings=(*warnings_for(f, found.label, window), *health.warnings()),
        summary={**summary(r), **engine_rules.summary(f), **gpu_workloads.summary(window),
                 **health.summary()},
        probes={name: str(st) for name, st in r.status.items()}, hard=found.hard, readings=r,
        saturations=tuple(f.saturated_nics))


# -- helpers ------------------------------------------------------------------------


def _within_objective(f: Facts) -> str:
    if (llm := engine_rules.objective_text(f)) is not None:
        return llm
    w = f.worst
    if w is None or w.total is None:
        return "requests within the objective"
    return (f"{w.target}: p95 request {secs(w.total.p95)} <= objective "
            f"{secs(f.thresholds.latency_objective_seconds)}")


def _add_coverage_factors(f: Facts, found: Finding) -> None:
    """Doubt from thin data: few readings, or a GPU that could not be read (it may be
    the busy one) behind a label that says the GPUs are not busy."""
    counts = [g.samples for g in f.gpus] + ([f.host.samples] if f.host else [])
    if counts and min(counts) < f.thresholds.window_min_samples:
        found.factors.append((0.7, f"only {min(counts)} sample(s) of a resource in the window"))
    if (found.label is not Label.GPU_BOUND and f.readings.gpu_errors
            and f.readings.probe("gpu").state is ProbeState.PARTIAL):
        found.factors.append((0.8, "a GPU could not be read"))


def _add_mismatch(f: Facts, found: Finding) -> None:
    """The article's A100-behind-5-Mbit/s case: name it where it is measured."""
    g = f.top_gpu
    pipe = f.thin_pipe()
    if g is None or g.busy is None or not f.gpu_under or pipe is None:
        return
    found.notes.append(f"resource mismatch: {g.title}"
                       + (f", {size(g.memory_total_bytes)}" if g.memory_total_bytes else "")
                       + f" is only {pct(g.busy)} busy behind {pipe}"
                       + (" while requests queue" if f.slow else ""))
    found.mismatch = True


__all__ = ["RULES", "classify"]
