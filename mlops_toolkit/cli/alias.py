"""``mlops alias``: set, get, list, delete, history and rollback of registry aliases."""

from __future__ import annotations

import click

import mlops_toolkit as mt
from mlops_toolkit.cli.common import (
    command,
    echo_json,
    echo_table,
    json_option,
    model_option,
)

reason_option = click.option("--reason", "-r", metavar="TEXT", help="Why: stored in the alias history.")


@click.group()
def alias() -> None:
    """Move and inspect registered-model aliases (Production, champion, ...)."""


@command(alias, "set")
@click.argument("alias_name", metavar="ALIAS")
@model_option()
@click.option("--version", "-v", "version", metavar="N", help="Model version (default: the latest).")
@reason_option
def set_cmd(alias_name: str, model: str | None, version: str | None, reason: str | None) -> None:
    """Point ALIAS at a version of the model (default: its latest version)."""
    change = mt.set_alias(model, alias_name, version, reason=reason)
    click.echo(f"{change} (unchanged)" if change.action == "unchanged" else str(change))


@command(alias, "get")
@click.argument("alias_name", metavar="ALIAS")
@model_option()
@json_option
def get_cmd(alias_name: str, model: str | None, as_json: bool) -> None:
    """Show the version ALIAS points at."""
    target = mt.get_alias(model, alias_name)
    if as_json:
        echo_json(target)
    else:
        click.echo(f"{target.model}@{target.alias}: v{target.version} (run {target.run_id or '-'})")


@command(alias, "list")
@model_option()
@json_option
def list_cmd(model: str | None, as_json: bool) -> None:
    """List aliases of one model, or of every model."""
    targets = mt.list_aliases(model)
    if as_json:
        echo_json(targets)
    else:
        echo_table(["MODEL", "ALIAS", "VERSION"], [(t.model, t.alias, t.version) for t in targets], "no aliases")


@command(alias, "delete")
@click.argument("alias_name", metavar="ALIAS")
@model_option()
@reason_option
def delete_cmd(alias_name: str, model: str | None, reason: str | None) -> None:
    """Remove ALIAS (the version itself stays)."""
    click.echo(str(mt.delete_alias(model, alias_name, reason=reason)))


@command(alias, "history")
@click.argument("alias_name", metavar="ALIAS")
@model_option()
@json_option
def history_cmd(alias_name: str, model: str | None, as_json: bool) -> None:
    """Show every recorded move of ALIAS, oldest first."""
    events = mt.alias_history(model, alias_name)
    if as_json:
        echo_json(events)
        return
    echo_table(
        ["WHEN", "ACTION", "FROM", "TO", "USER", "REASON"],
        [
            (e.timestamp, e.action, _v(e.from_version), _v(e.to_version),
             e.user + (f" (requested by {e.requested_by})" if e.requested_by else ""), e.reason or "")
            for e in events
        ],
        "no recorded history",
    )


@command(alias, "rollback")
@click.argument("alias_name", metavar="ALIAS")
@model_option()
@reason_option
def rollback_cmd(alias_name: str, model: str | None, reason: str | None) -> None:
    """Move ALIAS back to the version it had before its last recorded move."""
    click.echo(str(mt.rollback_alias(model, alias_name, reason=reason)))


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"
