"""``mlops promote``: the champion/challenger gate from the command line."""

from __future__ import annotations

import click

import mlops_toolkit as mt
from mlops_toolkit.cli.common import (
    echo_json,
    json_option,
    model_option,
    tracking_uri_option,
)


@click.command()
@tracking_uri_option()
@model_option()
@click.option("--metric", required=True, metavar="M", help="Run metric to rank versions by.")
@click.option("--alias", "alias_name", default="Production", show_default=True, metavar="A")
@click.option("--lower-is-better", is_flag=True, help="Smaller metric values win (losses, errors).")
@click.option("--min-delta", type=float, default=0.0, show_default=True, metavar="X",
              help="Required improvement over the current holder.")
@click.option("--dry-run", is_flag=True, help="Decide and report, move nothing.")
@json_option
def promote(model: str | None, metric: str, alias_name: str, lower_is_better: bool,
            min_delta: float, dry_run: bool, as_json: bool) -> None:
    """Move an alias to the best version by METRIC if it beats the holder by --min-delta."""
    decision = mt.promote_best(
        model, metric, alias_name, higher_is_better=not lower_is_better, min_delta=min_delta, dry_run=dry_run
    )
    if as_json:
        echo_json(decision)
        return
    click.echo(str(decision))
    if decision.change is not None:
        click.echo(str(decision.change))
