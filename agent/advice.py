"""Plain-words numbers and the advice for each label, made concrete with the
window's measurements. Advice starts from the source article's guidance
(docs/classifier.md cites each piece).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.signals import HttpReading
from agent.thresholds import Thresholds
from agent.windows import ProbeState

if TYPE_CHECKING:
    from agent.classifier import Facts, Finding


# -- numbers in words --------------------------------------------------------------

def pct(ratio: float | None, digits: int = 0) -> str:
    if ratio is None:
        return "?"
    return f"{ratio * 100:.{digits}f}%"


def secs(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.3g} s"
    return f"{seconds:.0f} s"


def bits(bps: float) -> str:
    for scale, unit in ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def size(nbytes: float | None) -> str:
    n = nbytes or 0.0
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


# -- bandwidth arithmetic ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Need:
    """The bandwidth that brings a request's transfer under the latency objective."""

    direction: str          # "upload" or "download"
    payload_bytes: float
    budget_seconds: float   # objective minus the server's time
    concurrency: int
    per_call_bits_per_second: float

    @property
    def total_bits_per_second(self) -> float:
        return self.per_call_bits_per_second * self.concurrency


def transfer(h: HttpReading | None) -> tuple[str, float, float] | None:
    """(direction, payload bytes, mean seconds) of the larger transfer phase."""
    if h is None:
        return None
    up = h.phases.get("upload_seconds")
    down = h.phases.get("download_seconds")
    if up is not None and h.request_bytes and (down is None or up >= down):
        return "upload", h.request_bytes, up
    if down is not None and h.response_bytes:
        return "download", h.response_bytes, down
    return None


def need(h: HttpReading | None, th: Thresholds) -> Need | None:
    moved = transfer(h)
    if moved is None or h is None:
        return None
    direction, payload, _ = moved
    objective = th.latency_objective_seconds
    budget = objective - h.phases.get("server_seconds", 0.0)
    if budget < 0.1 * objective:
        budget = objective  # the server alone uses the objective up; say what the link needs
    concurrency = max(1, round(h.concurrency or 1))
    return Need(direction, payload, budget, concurrency, payload * 8 / budget)


def needed_bits_per_second(h: HttpReading | None, th: Thresholds) -> tuple[float, Need] | None:
    n = need(h, th)
    return None if n is None else (n.total_bits_per_second, n)


def observed_transfer_rate(h: HttpReading | None) -> float | None:
    """How fast the requests' payloads actually moved, all concurrent calls together."""
    moved = transfer(h)
    if moved is None or h is None or moved[2] <= 0:
        return None
    return moved[1] * 8 / moved[2] * max(1, round(h.concurrency or 1))


# -- advice per label ----------------------------------------------------------------

def advice_for(found: Finding, f: Facts) -> list[str]:
    from agent.classifier import Label

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
    if not (f.r.oom_events or f.r.load_failures):
        out.append("Confirm in the server log (CUDA out of memory, failed allocation) before "
                   "buying memory: a full GPU alone is normal for servers that pre-reserve it.")
    return out


def _gpu(f: Facts) -> list[str]:
    th = f.th
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
    th = f.th
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
    out.append(f"Article: at least {bits(th.public_bandwidth_min_bits_per_second)} public for a "
               f"concurrent API service, {bits(th.internal_bandwidth_min_bits_per_second)} "
               "between front end and GPU workers; a 5 MB upload takes about 40 s at 1 Mbit/s "
               "and 0.4 s at 100 Mbit/s.")
    out.append("Send less over the link: compress or resize inputs before upload, pass "
               "references to object storage instead of payloads, stream results.")
    for nic, (direction, _) in f.saturated_nics:
        out.append(f"{nic.name} {direction} is full: a faster link or NIC, or spread the "
                   "traffic over more hosts.")
    rt = f.retransmit_ratio
    if rt is not None and rt > th.retransmit_high_ratio:
        out.append("Retransmits mean loss or congestion on the path: check MTU, duplex, "
                   "shapers and the busiest hop.")
    if mismatch:
        out.append("Resource mismatch: the GPU waits for data. Fix the link first; a bigger "
                   "GPU buys nothing here, and a smaller one would do until data arrives "
                   "faster.")
    if not f.r.throughputs:
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
            and h.busiest_core >= f.th.cpu_saturated_ratio:
        out.append("One core does the work: split that step across processes (threads do not "
                   "help Python code).")
    return out


def _balanced(f: Facts) -> list[str]:
    closest = []
    if f.gpu_busy is not None:
        closest.append((f.gpu_busy / f.gpu_busy_threshold, f"GPU {pct(f.gpu_busy)}"))
    if f.host is not None and f.host.cpu is not None:
        closest.append((f.host.cpu / f.th.cpu_saturated_ratio, f"CPU {pct(f.host.cpu)}"))
    for nic in f.nics:
        if nic.peak is not None:
            closest.append((nic.peak[1] / f.th.nic_saturation_ratio,
                            f"{nic.name} {pct(nic.peak[1])} of its link"))
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
        status = f.r.probe(name)
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
    if not f.r.http:
        out.append("Add an HTTP target (--url) so request latency can be judged.")
    return out or ["Not enough evidence for a label in this window."]
