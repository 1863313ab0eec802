"""`ai-bottleneck plan`: will this model and load fit this host's GPUs and links?

The command reads its inputs (model files, the host, a recording), hands them to
the arithmetic in agent/plan.py and prints the answer. Bad input is one line and
exit 2, like every other command. Formulas and sources: docs/plan.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ai_bottleneck.modelinfo import PLAN_DTYPES
from ai_bottleneck.probes.options import parse_bytes, parse_duration


class PlanInputError(click.ClickException):
    """Bad input to plan (a file, a size): one line, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"ai-bottleneck: error: {self.format_message()}", err=True)


class _Size(click.ParamType[float]):
    """A byte size such as 5MB, 512k, 24GiB; finite, above zero, below ``most``."""

    name = "size"

    def __init__(self, most: float) -> None:
        self.most = most

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            size = parse_bytes(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not 0 < size <= self.most or not math.isfinite(size):
            self.fail(f"{value!r} must be above zero and at most {self.most:g} bytes",
                      param, ctx)
        return size


class _Seconds(click.ParamType[float]):
    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        return seconds


class _Params(click.ParamType[int]):
    name = "count"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        from ai_bottleneck.modelinfo import parse_parameters

        try:
            return parse_parameters(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("plan")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="A Hugging Face model folder (config.json, *.safetensors) or a .gguf file.")
@click.option("--params", "parameters", type=_Params(),
              help="Parameter count when no files are at hand (7B, 1.5B, 350M).")
@click.option("--dtype", type=click.Choice(PLAN_DTYPES),
              help="Weights stored as this (default: the model's own; fp16 for --params).")
@click.option("--kv-cache-dtype", type=click.Choice(("auto", "fp16", "bf16", "fp8")),
              default="auto", show_default=True,
              help="KV cache element type; auto is 16 bits, the engines' default.")
@click.option("--context", "context_tokens", type=click.IntRange(1, 10_000_000), default=None,
              help="Tokens per sequence, prompt and output (default 4096).")
@click.option("--concurrency", type=click.IntRange(1, 1_000_000), default=None,
              help="Sequences (users) served at once (default 1, or the recording's).")
@click.option("--payload", "payload_bytes", type=_Size(1e13),
              help="Request or response size that crosses the network (5MB, 512k).")
@click.option("--latency", "latency_seconds", type=_Seconds(),
              help="Seconds a request may take end to end (2, 500ms).")
@click.option("--gpu-memory", "gpu_memory", type=_Size(1e15),
              help="GPU memory to plan for, in all (24GB, 80GiB), instead of this host's.")
@click.option("--from", "recording", type=click.Path(dir_okay=False, path_type=Path),
              help="A recording: its request sizes, server times, concurrency, GPUs, links.")
@click.option("--measure", is_flag=True,
              help="Measure throughput now with the iperf3 and download probes.")
@click.option("--iperf3", "iperf3_targets", multiple=True, metavar="HOST",
              help="iperf3 server for --measure (repeatable).")
@click.option("--download", "download_url", metavar="URL", help="Large file for --measure.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan_cmd(model_path: Path | None, parameters: int | None, dtype: str | None,
             kv_cache_dtype: str, context_tokens: int | None, concurrency: int | None,
             payload_bytes: float | None, latency_seconds: float | None,
             gpu_memory: float | None, recording: Path | None, measure: bool,
             iperf3_targets: tuple[str, ...], download_url: str | None,
             as_json: bool) -> None:
    """Will this model and load fit this host's GPUs and links (and what would make it fit)?"""
    from ai_bottleneck import plan as p
    from ai_bottleneck import plan_host as host
    from ai_bottleneck.modelinfo import ModelError, from_parameters, load_model
    from ai_bottleneck.record import RecordError

    if model_path is not None and parameters is not None:
        raise click.UsageError("give --model or --params, not both")
    if model_path is None and parameters is None and payload_bytes is None and recording is None:
        raise click.UsageError("nothing to plan: give --model PATH, --params N, --payload SIZE "
                               "or --from RECORDING")
    if payload_bytes is not None and latency_seconds is None:
        raise click.UsageError("--payload needs --latency (the seconds a request may take)")
    if measure and not iperf3_targets and not download_url:
        raise click.UsageError("--measure needs --iperf3 HOST or --download URL to measure")
    try:
        model = (load_model(model_path) if model_path is not None
                 else from_parameters(parameters, dtype or "fp16") if parameters is not None
                 else None)
        recorded = host.read_recorded_load(recording) if recording is not None else None
    except (ModelError, RecordError) as exc:
        raise PlanInputError(str(exc)) from None
    if model is not None and dtype is not None and model_path is not None:
        model = model.with_dtype(dtype)
    if model is not None and kv_cache_dtype == "fp8":
        model = replace(model, kv_bytes_per_element=1.0)

    notes: list[str] = []
    if recorded is not None and payload_bytes is None:
        sizes = [b for b in (recorded.request_bytes, recorded.response_bytes) if b]
        payload_bytes = max(sizes) if sizes else None
    load = p.Load(
        context_tokens=context_tokens or p.DEFAULT_CONTEXT,
        concurrency=concurrency or (math.ceil(recorded.concurrency)
                                    if recorded is not None and recorded.concurrency else 1),
        payload_bytes=payload_bytes if latency_seconds is not None else None,
        latency_seconds=latency_seconds,
        server_seconds=recorded.server_seconds if recorded is not None else None)

    gpus: list[p.Gpu] = []
    if model is None:
        pass  # no VRAM question asked: NVML is not needed
    elif gpu_memory is not None:
        gpus = [p.Gpu("--gpu-memory", int(gpu_memory))]
    elif recorded is not None and recorded.gpus:
        gpus = recorded.gpus
    else:
        gpus, why = host.host_gpus()
        if why:
            notes.append(f"GPUs: {why}")

    link = recorded.link if recorded is not None else p.Link()
    if link.nic_bits_per_second is None:
        live = host.nic_link()
        link = p.Link(live.nic_bits_per_second, live.nic_source,
                      link.measured_bits_per_second, link.measured_source)
    if measure:
        measured, errors = host.measure_now(iperf3_targets, download_url)
        notes.extend(errors)
        link = host.with_measured(link, measured, "measured now")

    result = p.make_plan(model, load, gpus, link)
    result.evidence.extend(notes)
    out = result.to_json()
    if recorded is not None:
        sat, lines = p.saturation(
            server_seconds=recorded.server_seconds, concurrency=load.concurrency,
            request_bytes=recorded.request_bytes, response_bytes=recorded.response_bytes,
            link=link)
        out["saturation"] = sat | {"requests": recorded.requests,
                                   "request_bytes": recorded.request_bytes,
                                   "response_bytes": recorded.response_bytes,
                                   "server_seconds": recorded.server_seconds}
        out["evidence"].extend(lines)
        if sat["arrival_rate_per_second"] is None:
            out["unchecked"].append("saturation")
            out["fits"] = False
        if recorded.malformed_lines:
            out["evidence"].append(f"{recorded.malformed_lines} malformed lines in "
                                   f"{recorded.path} skipped")
    if model is not None:
        out["model"] = {"source": model.source, "architecture": model.architecture,
                        "parameters": model.parameters, "weight_format": model.weight_format,
                        "layers": model.layers, "kv_heads": model.kv_heads,
                        "head_dim": model.head_dim, "max_context": model.max_context}
    out["context_tokens"], out["concurrency"] = load.context_tokens, load.concurrency
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(render(out), nl=False)


def render(out: dict[str, Any]) -> str:
    """The plan for a person: the verdict first, then the evidence and the changes."""
    lines = []
    model = out.get("model")
    if model:
        lines.append(f"ai-bottleneck plan for {Path(model['source']).name} "
                     f"({model['weight_format']}), {out['concurrency']} x "
                     f"{out['context_tokens']} tokens")
    else:
        lines.append(f"ai-bottleneck plan for {out['concurrency']} concurrent requests")
    verdict = "FITS" if out["fits"] else "DOES NOT FIT"
    if out["unchecked"] and out["vram_fits"] is not False and out["bandwidth_fits"] is not False:
        verdict = f"CANNOT TELL ({' and '.join(out['unchecked'])} not checked)"
    sat = out.get("saturation")
    if sat is not None and sat["arrival_rate_per_second"] is not None:
        lines.append(f"saturates at: about {sat['arrival_rate_per_second']:.3g} requests/s, "
                     f"limited by the {'GPU' if sat['limited_by'] == 'gpu' else 'link'}")
    if model or out["bandwidth_fits"] is not None or out["unchecked"] or sat is None:
        lines.append(f"verdict: {verdict}")
    for e in out["evidence"]:
        lines.append(f"  - {e}")
    if out["changes"]:
        lines.append(f"cheapest change: {out['changes'][0]['change']}")
        for c in out["changes"][1:]:
            lines.append(f"  or: {c['change']}")
    return "\n".join(lines) + "\n"
