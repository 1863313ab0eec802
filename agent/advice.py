"""The advice for each label, made concrete with the window's measurements, and the
warnings that did not decide the label. Advice starts from the source article's
guidance (docs/classifier.md cites each piece).
"""

from __future__ import annotations

from ai_bottleneck.facts import Facts, memory_text, need, observed_transfer_rate, transfer
from ai_bottleneck.findings import Finding
from ai_bottleneck.labels import Label
from ai_bottleneck.remarks import Remark
from ai_bottleneck.remarks import WarningKind as K
from ai_bottleneck.windows import ProbeState, Window
from ai_bottleneck.words import bits, pct, secs, size

# -- advice per label ----------------------------------------------------------------

def advice_for(found: Finding, f: Facts) -> list[str]:
    if found.label is Label.NETWORK_BOUND:
        return _network(f, found.mismatch)
    builders = {
        Label.VRAM_BOUND: _vram, Label.GPU_BOUND: _gpu, Label.CPU_BOUND: _cpu,
        Label.BALANCED: _balanced, Label.IDLE: _idle, Label.UNKNOWN: _unknown,
    }
    return builders[found.label](f)


def _vram(f: Facts) -> list[str]:
    out = ["The model does not fit in GPU memory; until it does nothing else matters "
           "(VRAM is the hard threshold)."]
    sizes = ", ".join(f"{g.title} has {size(g.memory_total_bytes)}" for g in f.gpus
                      if g.memory_total_bytes)
    out.append("Use a GPU with more memory" + (f" ({sizes})" if sizes else "") + ", quantize "
               "(a 7B model needs about 12 GB or more served in 16-bit, about 8 GB at 4 bit), "
               "lower batch size or context length, or lower the server's memory reservation.")
    if not (f.readings.oom_events or f.readings.load_failures):
        out.append("Confirm in the server log (CUDA out of memory, failed allocation) before "
                   "buying memory: a full GPU alone is normal for servers that pre-reserve it.")
    return out


def _gpu(f: Facts) -> list[str]:
    th = f.thresholds
    g = f.top_gpu
    out = [f"The GPU is the limit ({g.title if g else 'GPU'}); more bandwidth will not help."]
    w = f.worst
    if w is not None and w.total is not None and w.total.p95 > th.latency_objective_seconds:
        factor = w.total.p95 / th.latency_objective_seconds
        out.append(f"p95 {secs(w.total.p95)} is {factor:.3g}x the "
                   f"{secs(th.latency_objective_seconds)} objective: the GPU work per request "
                   f"must get about {factor:.3g}x faster, or be spread over more GPUs.")
    out.append("Do more per GPU pass: batch requests (continuous batching), lower precision "
               "(16-bit, 8-bit), a smaller or distilled model; for training, mixed precision "
               "and the largest batch that fits.")
    if f.coarse_only:
        out.append("Only the coarse utilization was available: confirm with SM activity "
                   "(DCGM or GPM on Hopper and newer) that the SMs, not just a kernel, are busy.")
    return out


def _network(f: Facts, mismatch: bool) -> list[str]:
    th = f.thresholds
    out = []
    n = need(f.worst, th)
    moved = transfer(f.worst)
    if n is not None and moved is not None:
        together = (f" ({bits(n.total_bits_per_second)} for {n.concurrency} at once)"
                    if n.concurrency > 1 else "")
        out.append(f"A {size(n.payload_bytes)} {n.direction} took {secs(moved[2])}; to finish "
                   f"within {secs(n.budget_seconds)} (the objective less the server's time) it "
                   f"needs at least {bits(n.per_call_bits_per_second)} per request{together}.")
        rate = observed_transfer_rate(f.worst)
        if rate:
            out.append(f"The {n.direction}s moved at about {bits(rate)} in all.")
    out.append(f"A public API serving many users needs at least "
               f"{bits(th.public_bandwidth_min_bits_per_second)}, and the link between front "
               f"end and GPU workers {bits(th.internal_bandwidth_min_bits_per_second)}; a 5 MB "
               "upload takes about 40 s at 1 Mbit/s and 0.4 s at 100 Mbit/s.")
    out.append("Send less over the link: compress or resize inputs before upload, pass "
               "references to object storage instead of payloads, stream results.")
    for sat in f.saturated_nics:
        out.append(f"{sat.nic} {sat.direction} is full at {bits(sat.capacity_bits_per_second)} "
                   f"({sat.source}): a faster link or plan, or spread the traffic over more "
                   "hosts.")
    rt = f.retransmit_ratio
    if rt is not None and rt > th.retransmit_high_ratio:
        out.append("Retransmits mean loss or congestion on the path: check MTU, duplex, "
                   "shapers and the busiest hop.")
    if mismatch:
        out.append("Resource mismatch: the GPU waits for data. Fix the link first; a bigger "
                   "GPU buys nothing here, and a smaller one would do until data arrives "
                   "faster.")
    if not f.readings.throughputs:
        out.append("Measure the path: iperf3 between front end and GPU workers (--iperf3), a "
                   "large download for public bandwidth (--download).")
    return out


def _cpu(f: Facts) -> list[str]:
    out = ["The CPU is the limit" + ("" if f.no_gpu else "; the GPU waits for it") + "."]
    if f.no_gpu:
        out.append("A CPU-only workload (small models such as XGBoost): more or faster cores; a "
                   "GPU helps only if the model can use one.")
    else:
        out.append("Feed the GPU faster: more data-loader workers, move decoding, resizing and "
                   "tokenizing to the GPU or a separate pool, pinned memory, more cores.")
    h = f.host
    if h is not None and h.busiest_core is not None and h.cpu is not None and h.cpu < 0.5 \
            and h.busiest_core >= f.thresholds.cpu_saturated_ratio:
        out.append("One core does the work: split that step across processes (threads do not "
                   "help Python code).")
    return out


def _balanced(f: Facts) -> list[str]:
    closest = []
    if f.gpu_busy is not None:
        closest.append((f.gpu_busy / f.gpu_busy_threshold, f"GPU {pct(f.gpu_busy)}"))
    if f.host is not None and f.host.cpu is not None:
        closest.append((f.host.cpu / f.thresholds.cpu_saturated_ratio, f"CPU {pct(f.host.cpu)}"))
    busiest = f.busiest_link()
    if busiest is not None:
        name, use = busiest
        closest.append((use.ratio / f.thresholds.nic_saturation_ratio,
                        f"{name} {use.direction} at {pct(use.ratio)} of {use.of_text()}"))
    text = "Load is served without a saturated resource; nothing to fix now."
    if closest:
        text += f" Closest to its limit: {max(closest)[1]}."
    return [text]


def _idle(f: Facts) -> list[str]:
    return ["No meaningful load: nothing to diagnose now. Run the diagnosis while the service "
            "is under real load, or send it representative requests (--url)."]


def _unknown(f: Facts) -> list[str]:
    out = []
    for h in f.down_http:
        out.append(f"Check that the service at {h.target} is up and reachable (see the error).")
    for name in ("gpu", "host", "nic", "http"):
        status = f.readings.probe(name)
        if name == "http" and f.down_http:
            continue  # said above, with the target
        if status.state in (ProbeState.FAILING, ProbeState.MISSING):
            out.append(f"Make the {name} probe work: {status}.")
    if f.slow:
        io = f.host.io_pressure if f.host is not None else None
        out.append("Requests are slow with no resource saturated: look inside the service "
                   "(queue length, batch size, locks, slow storage"
                   + (f"; I/O pressure {pct(io)}" if io else "") + ").")
        if f.worst is not None and not f.worst.phases:
            out.append("Phase timings (upload, server, download) would tell the network from "
                       "the server.")
    if not f.readings.http:
        out.append("Add an HTTP target (--url) so request latency can be judged.")
    return out or ["Not enough evidence for a label in this window."]


def warnings_for(f: Facts, label: Label, window: Window) -> list[str]:
    """Facts worth knowing that did not decide the label."""
    th = f.thresholds
    out = []
    for g in f.gpus:
        m = g.memory_used_ratio
        if m is not None and m >= th.vram_warning_ratio and label is not Label.VRAM_BOUND:
            out.append(Remark(K.MEMORY_RESERVED, memory_text(g) + ": normal for servers that "
                              "pre-reserve memory (vLLM reserves 90% by default); a fault "
                              "only with OOM or failed loads", g.id))
        if (g.gpm and g.utilization is not None and g.sm_active is not None
                and g.utilization >= th.gpu_busy_utilization_ratio
                and g.sm_active < th.gpm_ineffective_ratio):
            out.append(Remark(K.GPU_INEFFECTIVE, f"{g.title} utilization {pct(g.utilization)} "
                              f"but SM activity only {pct(g.sm_active)}: small kernels or gaps "
                              "between them; the GPU is not saturated (a bigger GPU will not "
                              "help)", g.id))
        out += [Remark(K.CLOCKS_HELD_BACK, f"{g.title} clocks held back by {reason} "
                       f"{pct(share)} of the window", g.id) for reason, share in g.slowdowns]
    if f.coarse_only and (f.gpu_activity or 0.0) >= th.gpu_idle_ratio:
        out.append(Remark(K.COARSE_GPU_ONLY, "GPU activity from the coarse utilization only "
                          "(no GPM metrics): it says a kernel was running, not how much of the "
                          "GPU it used"))
    for t in f.readings.throughputs:
        floor = (th.internal_bandwidth_min_bits_per_second if t.internal
                 else th.public_bandwidth_min_bits_per_second)
        if t.age_seconds <= th.active_measurement_max_age_seconds and t.bits_per_second < floor:
            need = ("internal minimum between front end and GPU workers" if t.internal else
                    "public minimum for an API serving many users")
            out.append(Remark(K.THIN_LINK, f"{t.probe} {t.target}: {bits(t.bits_per_second)}, "
                              f"under the {need}, {bits(floor)}", t.target))
    rt = f.retransmit_ratio
    if rt is not None and rt > th.retransmit_high_ratio and label is not Label.NETWORK_BOUND:
        out.append(Remark(K.RETRANSMITS, f"TCP retransmits {pct(rt, 1)} of sent segments"))
    if label is not Label.NETWORK_BOUND:
        out += [Remark(K.PATH_FULL, f"{sat.nic} {sat.direction} is full: "
                       f"{bits(sat.capacity_bits_per_second)} ({sat.source}) at "
                       f"{pct(min(sat.utilization, 1.0))}; the service is within its objective "
                       "now, but the path has no headroom left", sat.nic)
                for sat in f.saturated_nics]
    if f.working_http:
        out += [Remark(K.TARGET_DOWN, f"every call to {h.target} failed ({h.failures}): "
                       f"{h.errors[0] if h.errors else 'no answer'}", h.target)
                for h in f.down_http]
    for name, status in f.readings.status.items():
        if status.state not in (ProbeState.OK, ProbeState.ABSENT):
            kind = (K.PROBE_UNAVAILABLE if status.state is ProbeState.UNAVAILABLE
                    else K.PROBE_FAILING)
            out.append(Remark(kind, f"probe {name} {status}", name))
    if f.readings.probe("gpu").state is ProbeState.PARTIAL:
        out += [Remark(K.GPU_READ_ERROR, e) for e in f.readings.gpu_errors[:3]]  # which GPU failed
    if window.late_samples:
        out.append(Remark(K.LATE_SAMPLES, f"{window.late_samples} sample(s) arrived after "
                          "their window closed and were counted in this one"))
    return list(dict.fromkeys(out))
