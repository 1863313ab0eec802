"""The `ai-bottleneck` command line."""

from __future__ import annotations

import click

from agent import __version__
from agent.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ai-bottleneck")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """What is holding this AI service back right now: the GPU, the network, or neither?"""
    setup_logging(verbose)


@main.command("probes")
def probes_cmd() -> None:
    """List every discovered probe: usable on this host or not, and why not."""
    from agent.discovery import discover

    found = discover(strict_options=False)
    width = max((len(d.name) for d in found), default=5)
    click.echo(f"{'PROBE':<{width}}  {'STATUS':<10}  DETAIL")
    for d in found:
        status = "usable" if d.usable else "unusable"
        click.echo(f"{d.name:<{width}}  {status:<10}  {d.availability.reason}")
        if d.probe is not None:
            d.probe.close()
