"""The `ai-bottleneck` command line.

Exit codes: 0 ok; 2 bad usage, config or input file (one clear line, no
traceback); 1 only for real failures at run time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ai_bottleneck import __version__
from ai_bottleneck.logs import setup_logging, stderr_is_journal
from ai_bottleneck.options import parse_duration
from ai_bottleneck.samples import one_line


class Duration(click.ParamType[float]):
    """A duration such as 20s, 500ms, 2m, 1h (a bare number is seconds)."""

    name = "duration"

    def __init__(self, shortest: float = 1e-3, longest: float = 366 * 86400.0) -> None:
        self.shortest, self.longest = shortest, longest

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not seconds > 0:
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        # Checked here, before any arithmetic: 1e-320 s windows overflowed it, and a
        # duration past a year overflows the waits.
        if not math.isfinite(seconds) or seconds > self.longest:
            self.fail(f"{value!r} is longer than {self.longest:g}s", param, ctx)
        if seconds < self.shortest:
            self.fail(f"{value!r} is shorter than {self.shortest:g}s", param, ctx)
        return seconds


DURATION = Duration()
#: Windows as the config takes them ([agent] window_seconds): 1 s to a day.
WINDOW = Duration(shortest=1.0, longest=86400.0)


def _fail(message: str, code: int = 2) -> NoReturn:
    # Under systemd the line journald files is the reason the service failed: give it
    # the error priority, as the log lines carry theirs (ai_bottleneck.logs).
    priority = "<3>" if stderr_is_journal() else ""
    click.echo(f"{priority}ai-bottleneck: error: {message}", err=True)
    sys.exit(code)


class _UsageLine(click.ClickException):
    """A usage error shown as one line, like every other error of this command."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"ai-bottleneck: error: {self.format_message()}", err=True)


def _one_line(exc: click.UsageError) -> click.ClickException:
    # The group with no command still shows its help (click >= 8.2 raises this for it).
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)
    shows_help = no_args is not None and isinstance(exc, no_args)
    if shows_help:
        return exc
    ctx = exc.ctx
    where = f"{ctx.info_name}: " if ctx is not None and ctx.parent is not None else ""
    see = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return _UsageLine(where + one_line(exc.format_message(), limit=500).rstrip(".") + see)


class _Group(click.Group):
    """Bad arguments give one line and exit 2, as the design asks of every bad input;
    click's default prints a usage block, a hint and the error over four lines."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:
            if not _stdout_broken():
                raise
            _output_lost(exc)


def _stdout_broken() -> bool:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


def _output_lost(exc: OSError) -> NoReturn:
    """Standard output went to a full disk or a reader that left: one line on stderr,
    exit 1, and the unwritten rest dropped so the exit does not try again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    if exc.errno != errno.EPIPE:  # a reader that left knows; a full disk must be said
        reason = exc.strerror or str(exc)
        with contextlib.suppress(OSError):
            click.echo(f"ai-bottleneck: error: cannot write the output: {reason}", err=True)
    sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ai-bottleneck")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """What is holding this AI service back right now: the GPU, the network, or neither?"""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    # Text from outside (a recorded label, a process name read with surrogateescape)
    # may hold lone surrogates, which strict UTF-8 cannot write: shown escaped.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    setup_logging(verbose)


@main.command("probes")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default: $AI_BOTTLENECK_CONFIG or "
                   "/etc/ai-bottleneck/config.toml when present).")
def probes_cmd(config_path: Path | None) -> None:
    """List every discovered probe: usable on this host or not, and why not."""
    from ai_bottleneck.config import ConfigError, load_config
    from ai_bottleneck.discovery import discover

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
    found = discover(config.probe_option_tables, strict_options=False)
    width = max((len(d.name) for d in found), default=5)
    click.echo(f"{'PROBE':<{width}}  {'STATUS':<10}  DETAIL")
    for d in found:
        status = "usable" if d.usable else "unusable"
        click.echo(f"{d.name:<{width}}  {status:<10}  {d.availability.reason}")
        if d.probe is not None:
            d.probe.close()


#: The probe option each target flag replaces, for errors that name the flag.
FLAG_OPTIONS = {("http", "targets"): "--url", ("iperf3", "targets"): "--iperf3",
                ("download", "url"): "--download"}


def _cli_overrides(urls: tuple[str, ...], iperf3: tuple[str, ...], download: str | None,
                   config: Any) -> dict[str, dict[str, Any]]:
    """Command-line targets replace the config's targets for that probe."""
    out: dict[str, dict[str, Any]] = {}
    if urls:
        out["http"] = {"targets": [{"url": u} for u in urls]}
    if iperf3:
        out["iperf3"] = {"targets": list(iperf3)}
    if download:
        out["download"] = {"url": download}
    # A short diagnosis needs denser HTTP calls than the daemon's default, unless the
    # config chose an interval itself.
    if "interval_seconds" not in config.probe_options("http"):
        out.setdefault("http", {})["interval_seconds"] = config.agent.interval_seconds
    return out


class _ProgressLine:
    """One self-rewriting line on stderr while sampling (only on a terminal)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, elapsed: float, total: float, last: Any) -> None:
        if not self.enabled:
            return
        width = 30
        done = min(1.0, elapsed / total)
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        label = (f"{last.label} ({last.confidence:.2f})" if last is not None
                 else "first window pending")
        sys.stderr.write(f"\rsampling [{bar}] {elapsed:4.0f}/{total:.0f} s  current: {label}   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


@main.command("diagnose")
@click.option("--duration", type=DURATION, default="60s", show_default=True,
              help="How long to sample.")
@click.option("--window", type=WINDOW, default=None,
              help="Window length (default: the config's, 10s).")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="Time HTTP calls to this URL (repeatable).")
@click.option("--iperf3", "iperf3", multiple=True, metavar="HOST",
              help="Measure throughput to this iperf3 server (repeatable).")
@click.option("--download", metavar="URL", help="Measure download throughput from this URL.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default: $AI_BOTTLENECK_CONFIG or "
                   "/etc/ai-bottleneck/config.toml when present).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep the raw samples in this file (JSON Lines; .gz compresses).")
def diagnose_cmd(duration: float, window: float | None, urls: tuple[str, ...],
                 iperf3: tuple[str, ...], download: str | None, config_path: Path | None,
                 as_json: bool, record_path: Path | None) -> None:
    """Sample this host for a while and say what holds the service back."""
    from ai_bottleneck.config import ConfigError, load_config
    from ai_bottleneck.diagnose import run_diagnose
    from ai_bottleneck.record import RecordError
    from ai_bottleneck.report import render
    from ai_bottleneck.session import build_probes

    try:
        config = load_config(config_path)
        window_seconds = window or config.agent.window_seconds
        if window_seconds > duration:
            whose = ("the window" if window else
                     "the window from the config ([agent] window_seconds)")
            raise click.BadParameter(
                f"{whose}, {window_seconds:g}s, is longer than the duration "
                f"({duration:g}s)", param_hint="--window")
        probe_set = build_probes(config, _cli_overrides(urls, iperf3, download, config),
                                 origins=FLAG_OPTIONS)
    except ConfigError as exc:
        _fail(str(exc))
    progress = _ProgressLine() if not as_json else None
    try:
        result = run_diagnose(config, probe_set, duration_seconds=duration,
                              window_seconds=window_seconds, record_path=record_path,
                              progress=progress)
    except RecordError as exc:
        _fail(str(exc))
    finally:
        if progress is not None:
            progress.done()
    windows = [w.to_json() for w in result.windows]
    if as_json:
        click.echo(json.dumps({"windows": windows, "verdict": result.verdict.to_json(),
                               "not_measured": result.unavailable,
                               "interrupted": result.interrupted}))
    else:
        click.echo(render(windows, result.verdict.to_json(), title=result.title(),
                          not_measured=result.unavailable, notes=result.notes), nl=False)


@main.command("replay")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--window", type=WINDOW, default=None,
              help="Window length (default: the recording's).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per window per line.")
def replay_cmd(file: Path, window: float | None, as_json: bool) -> None:
    """Label a recording with the same windows and classifier as a live run."""
    from ai_bottleneck.options import OptionError
    from ai_bottleneck.pipeline import overall_verdict, replay
    from ai_bottleneck.record import RecordError
    from ai_bottleneck.report import render

    try:
        run = replay(file, window_seconds=window)
    except (RecordError, OptionError) as exc:
        _fail(f"{file}: {exc}" if isinstance(exc, OptionError) else str(exc))
    results = []
    for r in run.results:
        results.append(r)
        if as_json:
            click.echo(json.dumps(r.to_json()))
    stats = run.stats
    notes = []
    if stats.malformed:
        notes.append(f"{stats.malformed} malformed lines skipped (first at line "
                     f"{stats.first_bad_lines[0]})")
    if run.labeller.late_samples:
        notes.append(f"{run.labeller.late_samples} samples out of time order were counted in "
                     f"the oldest open window")
    if stats.implausible_times:
        notes.append(f"{stats.implausible_times} samples dropped: their time is more than a "
                     f"day away from the samples around them")
    if as_json:
        for n in notes:
            click.echo(f"ai-bottleneck: {n}", err=True)
        return
    verdict = overall_verdict(results, run.labeller.transitions)
    header = run.header
    title = (f"ai-bottleneck replay of {file}: {stats.samples} samples, {len(results)} windows"
             f" (recorded on {header.get('host', 'an unknown host')})")
    click.echo(render([r.to_json() for r in results], verdict.to_json(), title=title,
                      not_measured=run.labeller.unavailable, notes=notes), nl=False)


@main.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default: $AI_BOTTLENECK_CONFIG or "
                   "/etc/ai-bottleneck/config.toml when present).")
@click.option("--listen", metavar="ADDR:PORT",
              help="Serve /metrics here (default: the config's, :19466).")
@click.option("--web.config.file", "web_config_file",
              type=click.Path(dir_okay=False, path_type=Path),
              help="TLS and basic-auth settings, in the Prometheus exporter web config format.")
@click.pass_context
def run_cmd(ctx: click.Context, config_path: Path | None, listen: str | None,
            web_config_file: Path | None) -> None:
    """Run the agent: sample continuously, label windows, serve Prometheus metrics."""
    from ai_bottleneck.config import ConfigError
    from ai_bottleneck.daemon import Agent
    from ai_bottleneck.endpoint import ListenError
    from ai_bottleneck.webconfig import WebConfigError

    setup_logging(ctx.obj.get("verbose", 0) if ctx.obj else 0, daemon=True)
    try:
        agent = Agent(config_path, listen=listen, web_config_file=web_config_file)
    except (ConfigError, WebConfigError) as exc:
        _fail(str(exc))
    try:
        agent.serve()
    except (ConfigError, WebConfigError) as exc:
        _fail(str(exc))
    except ListenError as exc:
        _fail(str(exc), code=1)


if __name__ == "__main__":  # pragma: no cover
    main()
