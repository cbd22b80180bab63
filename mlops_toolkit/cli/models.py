"""``mlops models``: registered models and their versions."""

from __future__ import annotations

import click

import mlops_toolkit as mt
from mlops_toolkit.cli.common import command, echo_json, echo_table, json_option


@click.group()
def models() -> None:
    """List registered models and versions."""


@command(models, "list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Every registered model with its latest version and aliases."""
    summaries = mt.list_models()
    if as_json:
        echo_json(summaries)
        return
    echo_table(
        ["NAME", "LATEST", "ALIASES"],
        [
            (
                s.name,
                f"v{s.latest_version}" if s.latest_version else "-",
                ", ".join(f"{a}=v{v}" for a, v in sorted(s.aliases.items())),
            )
            for s in summaries
        ],
        "no registered models",
    )


@command(models, "versions")
@click.argument("name")
@json_option
def versions_cmd(name: str, as_json: bool) -> None:
    """Every version of model NAME, newest first."""
    infos = mt.list_versions(name)
    if as_json:
        echo_json(infos)
        return
    echo_table(
        ["VERSION", "STATUS", "CREATED", "ALIASES", "RUN"],
        [(f"v{i.version}", i.status, i.created, ", ".join(i.aliases), i.run_id or "-") for i in infos],
        f"model '{name}' has no versions",
    )
