"""`ai-bottleneck fleet`: every host's current label, from the Prometheus that scrapes
the agents (the queries and the table live in agent/fleet.py; docs/deployment.md)."""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from ai_bottleneck.logs import stderr_is_journal


def _fail(message: str, code: int = 2) -> NoReturn:
    # The same one-line error as every other command (ai_bottleneck.cli).
    priority = "<3>" if stderr_is_journal() else ""
    click.echo(f"{priority}ai-bottleneck: error: {message}", err=True)
    sys.exit(code)


@click.command("fleet")
@click.option("--prometheus", "url", required=True, metavar="URL",
              help="Base URL of the Prometheus server that scrapes the agents.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def fleet_cmd(url: str, as_json: bool) -> None:
    """Every host's current label, confidence and top evidence, from Prometheus."""
    import httpx

    from ai_bottleneck.fleet import FleetError, check_url, collect, http_query, render_table

    problem = check_url(url)
    if problem:
        _fail(problem)
    try:
        with httpx.Client(timeout=10.0) as client:
            hosts = collect(http_query(url, client=client))
    except FleetError as exc:
        _fail(str(exc), code=1)
    if as_json:
        click.echo(json.dumps({"hosts": [h.to_json() for h in hosts]}))
    elif hosts:
        click.echo(render_table(hosts), nl=False)
    else:
        click.echo("no ai-bottleneck agents in this Prometheus (no ai_bottleneck_window_label "
                   "series)", err=True)
