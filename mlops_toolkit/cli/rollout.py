"""``mlops rollout``: shift an alias's traffic to a candidate in steps, gated on its figures."""

from __future__ import annotations

import click

from mlops_toolkit import rollout as rollouts
from mlops_toolkit.cli.common import command, echo_json, json_option

alias_option = click.option("--alias", "-a", default="Production", show_default=True, metavar="ALIAS",
                            help="The alias whose traffic is shifted.")


def _steps(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected percentages like 5,25,50,100, got {value!r}") from None


@click.group()
def rollout() -> None:
    """Canary rollouts: a growing share of an alias's traffic to a candidate, then the alias moves."""


@command(rollout, "start")
@click.argument("model")
@click.option("--to", "to", required=True, metavar="ALIAS", help="The alias naming the candidate version (e.g. challenger).")
@alias_option
@click.option("--steps", default="5,25,50,100", show_default=True, callback=_steps, metavar="P,P,...",
              help="The candidate's share of the traffic per step, ending at 100.")
@click.option("--step-seconds", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="How long each step runs before it is judged.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Highest share of 5xx answers from the candidate in a step.")
@click.option("--max-p95-ms", type=click.FloatRange(min=0, min_open=True), default=500.0, show_default=True,
              help="Highest p95 latency of the candidate in a step (through the gateway).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None, metavar="SHARE",
              help="Also require this share of equal labels between the candidate and the current version "
                   "(the current version's requests are copied to the candidate and compared).")
@click.option("--max-mean-abs-diff", type=click.FloatRange(min=0), default=None, metavar="D",
              help="For numeric outputs: also require a mean absolute difference from the current version of at most D.")
def start_cmd(model: str, to: str, alias: str, steps: tuple[int, ...], step_seconds: float, max_error_rate: float,
              max_p95_ms: float, min_agreement: float | None, max_mean_abs_diff: float | None) -> None:
    """Shift MODEL@ALIAS's traffic to the version MODEL@TO points at, step by step."""
    click.echo(str(rollouts.start_rollout(model, to, alias, steps=steps, step_seconds=step_seconds,
                                          max_error_rate=max_error_rate, max_p95_ms=max_p95_ms,
                                          min_agreement=min_agreement, max_mean_abs_diff=max_mean_abs_diff)))


@command(rollout, "status")
@click.argument("model")
@alias_option
@json_option
def status_cmd(model: str, alias: str, as_json: bool) -> None:
    """Where MODEL@ALIAS's rollout stands (or how it ended, and why)."""
    current = rollouts.rollout_status(model, alias)
    if as_json:
        echo_json(current)
    else:
        click.echo(str(current))
        if current.reason and current.state == rollouts.RUNNING:
            click.echo(f"  last step: {current.reason}")


@command(rollout, "abort")
@click.argument("model")
@alias_option
def abort_cmd(model: str, alias: str) -> None:
    """Send all of MODEL@ALIAS's traffic back to its version at once."""
    click.echo(str(rollouts.abort_rollout(model, alias)))
