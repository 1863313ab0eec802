"""The `ai-bottleneck` command line.

Exit codes: 0 ok; 2 bad usage, config or input file (one clear line, no
traceback); 1 only for real failures at run time.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import click

from ai_bottleneck import __version__
from ai_bottleneck.cli_params import DURATION, WINDOW, report_options
from ai_bottleneck.logs import setup_logging, stderr_is_journal
from ai_bottleneck.probes.sample import one_line


def _fail(message: str, code: int = 2) -> NoReturn:
    # Under systemd the line journald files is the reason the service failed: give it
    # the error priority, as the log lines carry theirs (ai_bottleneck.logs).
    priority = "<3>" if stderr_is_journal() else ""
    click.echo(f"{priority}ai-bottleneck: error: {message}", err=True)
    sys.exit(code)


def _fail_lines(lines: list[str], code: int = 2) -> NoReturn:
    for line in lines:
        click.echo(f"ai-bottleneck: error: {line}", err=True)
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

    #: Commands in modules of their own, imported when named (or listed by --help):
    #: `run` never loads the planner's model tables or the fleet's HTTP client.
    LAZY: ClassVar[dict[str, str]] = {"plan": "ai_bottleneck.plan_cli:plan_cmd",
                                      "fleet": "ai_bottleneck.fleet_cli:fleet_cmd"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, attr = self.LAZY[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list with each command's whole first sentence, wrapped, never
        cut with "..." as click's default does past 45 characters."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
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



@click.group(cls=_Group, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="ai-bottleneck")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """What is holding this AI service back right now: the GPU, the network, or neither?

    \b
    Shell completion (docs/cli.md), for bash:
      eval "$(_AI_BOTTLENECK_COMPLETE=bash_source ai-bottleneck)"
    (zsh_source for zsh, fish_source for fish)
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
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
    from ai_bottleneck.checkconfig import config_problems
    from ai_bottleneck.discovery import discover

    config, problems = config_problems(config_path)
    if problems or config is None:
        _fail_lines(problems)
    found = discover(config.probe_option_tables, strict_options=False)
    width = max((len(d.name) for d in found), default=5)
    click.echo(f"{'PROBE':<{width}}  {'STATUS':<10}  DETAIL")
    for d in found:
        status = "usable" if d.usable else "unusable"
        click.echo(f"{d.name:<{width}}  {status:<10}  {d.availability.reason}")
        if d.probe is not None:
            d.probe.close()


@main.command("check-config")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def check_config_cmd(file: Path | None) -> None:
    """Check a config file: exit 0, or 2 with one line per problem."""
    from ai_bottleneck.checkconfig import config_problems

    config, problems = config_problems(file)
    if problems or config is None:
        _fail_lines(problems)
    click.echo(f"{config.source}: ok")


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
@click.option("--engine", "engines", multiple=True, metavar="URL",
              help="Read this model server's metrics URL (vLLM, SGLang, TGI, Triton, "
                   "llama.cpp; repeatable).")
@click.option("--service", metavar="UNIT|CGROUP|CONTAINER|PROCESS",
              help="The service under diagnosis (systemd unit, cgroup, container ID, process "
                   "name or PID; default: the processes holding GPU memory).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default: $AI_BOTTLENECK_CONFIG or "
                   "/etc/ai-bottleneck/config.toml when present).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep the raw samples in this file (JSON Lines; .gz compresses).")
@click.option("--fail-on", "fail_on", metavar="LABEL,...",
              help="Exit 3 when the verdict is one of these labels (for scripts and CI).")
@report_options
def diagnose_cmd(duration: float, window: float | None, urls: tuple[str, ...],
                 iperf3: tuple[str, ...], download: str | None, engines: tuple[str, ...],
                 service: str | None,
                 config_path: Path | None, as_json: bool, record_path: Path | None,
                 fail_on: str | None, color: str, all_windows: bool,
                 html_path: Path | None) -> None:
    """Sample this host for a while and say what holds the service back."""
    from ai_bottleneck.assembly import build_probes
    from ai_bottleneck.cli_report import (
        FAIL_ON_EXIT,
        check_html_path,
        parse_fail_on,
        print_report,
        write_html,
    )
    from ai_bottleneck.config import ConfigError, load_config
    from ai_bottleneck.diagnose import FLAG_OPTIONS, flag_overrides, run_diagnose
    from ai_bottleneck.progress import ProgressLine
    from ai_bottleneck.record import RecordError

    fail_labels = parse_fail_on(fail_on)
    check_html_path(html_path)
    try:
        config = load_config(config_path)
        window_seconds = window or config.agent.window_seconds
        if window_seconds > duration:
            whose = ("the window" if window else
                     "the window from the config ([agent] window_seconds)")
            raise click.BadParameter(
                f"{whose}, {window_seconds:g}s, is longer than the duration "
                f"({duration:g}s)", param_hint="--window")
        probe_set = build_probes(config, flag_overrides(urls, iperf3, download, config,
                                                        service, engines), origins=FLAG_OPTIONS)
    except ConfigError as exc:
        _fail(str(exc))
    progress = ProgressLine() if not as_json else None
    try:
        result = run_diagnose(config, probe_set, duration_seconds=duration,
                              window_seconds=window_seconds, record_path=record_path,
                              progress=progress)
    except RecordError as exc:
        _fail(str(exc))
    finally:
        if progress is not None:
            progress.done()
    notes = list(result.notes)
    html_ok = True
    if html_path is not None:
        note, html_ok = write_html(html_path, result.windows, result.verdict,
                                   title=result.title(), not_measured=result.unavailable,
                                   notes=result.notes)
        notes.append(note)
    if as_json:
        click.echo(json.dumps({"windows": [w.to_json() for w in result.windows],
                               "verdict": result.verdict.to_json(),
                               "not_measured": result.unavailable,
                               "interrupted": result.interrupted}))
    else:
        print_report(result.windows, result.verdict, title=result.title(),
                     not_measured=result.unavailable, notes=notes, color=color,
                     all_windows=all_windows)
    if not html_ok:
        _fail(notes[-1], code=1)
    if result.verdict.label in fail_labels:
        sys.exit(FAIL_ON_EXIT)


@main.command("replay")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--window", type=WINDOW, default=None,
              help="Window length (default: the recording's).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per window per line.")
@click.option("--since", metavar="TIME",
              help="Only windows from this time (14:05, 2026-12-04T14:05 or unix seconds).")
@click.option("--until", metavar="TIME", help="Only windows before this time.")
@report_options
def replay_cmd(file: Path, window: float | None, as_json: bool, since: str | None,
               until: str | None, color: str, all_windows: bool,
               html_path: Path | None) -> None:
    """Label a recording with the same windows and classifier as a live run."""
    from ai_bottleneck.assembly import assemble_replay
    from ai_bottleneck.cli_report import check_html_path, parse_when, print_report, write_html
    from ai_bottleneck.figures import select
    from ai_bottleneck.probes.options import OptionError
    from ai_bottleneck.record import RecordError
    from ai_bottleneck.verdict import overall_verdict

    check_html_path(html_path)
    try:
        run = assemble_replay(file, window_seconds=window)
    except (RecordError, OptionError) as exc:
        _fail(f"{file}: {exc}" if isinstance(exc, OptionError) else str(exc))
    # A bad time is refused before reading; a clock time (14:05) is on the day of the
    # recording's first window, known once it is read.
    first = run.header.get("origin")
    day_of = float(first) if isinstance(first, int | float) else None
    since_t = parse_when(since, day_of, "--since") if since else None
    until_t = parse_when(until, day_of, "--until") if until else None
    results = []
    for r in run.results:
        if day_of is None:
            day_of = r.start
            since_t = parse_when(since, day_of, "--since") if since else None
            until_t = parse_when(until, day_of, "--until") if until else None
        if not select([r], since_t, until_t):
            continue
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
    span = (" between " + " and ".join(x for x in (since, until) if x) if since or until
            else "")
    title = (f"ai-bottleneck replay: {stats.samples} samples, {len(results)} windows{span} "
             f"(recorded on {header.get('host', 'an unknown host')}); file: {file}")
    html_ok = True
    if html_path is not None:
        note, html_ok = write_html(html_path, results, verdict, title=title,
                                   not_measured=run.labeller.unavailable, notes=notes)
        notes.append(note)
    print_report(results, verdict, title=title, not_measured=run.labeller.unavailable,
                 notes=notes, color=color, all_windows=all_windows)
    if not html_ok:
        _fail(notes[-1], code=1)


@main.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default: $AI_BOTTLENECK_CONFIG or "
                   "/etc/ai-bottleneck/config.toml when present).")
@click.option("--listen", metavar="ADDR:PORT",
              help="Serve /metrics here (default: the config's, :19466).")
@click.option("--web.config.file", "web_config_file",
              type=click.Path(dir_okay=False, path_type=Path),
              help="TLS and basic-auth settings, in the Prometheus exporter web config format.")
@click.option("--service", metavar="UNIT|CGROUP|CONTAINER|PROCESS",
              help="The service under diagnosis (over the config's [service]).")
@click.pass_context
def run_cmd(ctx: click.Context, config_path: Path | None, listen: str | None,
            web_config_file: Path | None, service: str | None) -> None:
    """Run the agent: sample continuously, label windows, serve Prometheus metrics."""
    from ai_bottleneck.config import ConfigError
    from ai_bottleneck.daemon import Agent
    from ai_bottleneck.endpoint import ListenError
    from ai_bottleneck.webconfig import WebConfigError

    setup_logging(ctx.obj.get("verbose", 0) if ctx.obj else 0, daemon=True)
    try:
        agent = Agent(config_path, listen=listen, web_config_file=web_config_file,
                      service=service)
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
