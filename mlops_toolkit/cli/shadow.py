"""``mlops shadow``: copy one alias's traffic to another and compare the answers."""

from __future__ import annotations

import click

import mlops_toolkit as mt
from mlops_toolkit.cli.common import command, echo_json, echo_table, json_option
from mlops_toolkit.shadow import COMPARISONS

of_option = click.option("--of", "of", default="Production", show_default=True, metavar="ALIAS",
                         help="The alias whose requests are copied.")


@click.group()
def shadow() -> None:
    """Shadow traffic: a copy of an alias's requests goes to another alias, answers compared."""


@command(shadow, "set")
@click.argument("model")
@click.option("--alias", "-a", required=True, metavar="ALIAS", help="The alias that gets the copies (e.g. challenger).")
@of_option
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=100.0, show_default=True,
              help="Share of the requests that are copied.")
@click.option("--compare", type=click.Choice(COMPARISONS), default="auto", show_default=True,
              help="Equal-label rate (classification) or mean absolute difference (regression); auto picks by the answers.")
def set_cmd(model: str, alias: str, of: str, percent: float, compare: str) -> None:
    """Copy PERCENT of MODEL@OF's requests to MODEL@ALIAS (after answering the caller)."""
    click.echo(str(mt.set_shadow(model, alias, of, percent=percent, compare=compare)))


@command(shadow, "clear")
@click.argument("model")
@of_option
def clear_cmd(model: str, of: str) -> None:
    """Stop copying MODEL@OF's requests."""
    cleared = mt.clear_shadow(model, of)
    click.echo(f"{cleared.model}@{cleared.of}: shadow {cleared.alias} cleared")


@command(shadow, "list")
@click.option("--model", "-m", "model", metavar="NAME", help="Only this registered model (default: every model).")
@json_option
def list_cmd(model: str | None, as_json: bool) -> None:
    """Every shadow: which alias copies which alias's traffic, and how much."""
    shadows = mt.list_shadows(model)
    if as_json:
        echo_json(shadows)
    else:
        echo_table(["MODEL", "OF", "SHADOW", "PERCENT", "COMPARE"],
                   [(s.model, s.of, s.alias, f"{s.percent:g}", s.compare) for s in shadows], "no shadows")
