"""``mlops demo``: everything embedded, from nothing to a prediction, in one command."""

from __future__ import annotations

from pathlib import Path

import click

from mlops_toolkit.cli.common import port_range_option


@click.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".mlops"), show_default=True,
              help="Where the demo keeps MLflow's database, artifacts and logs.")
@click.option("--reset", is_flag=True, help="Start from an empty state folder.")
@click.option("--exit-after-smoke", is_flag=True, help="Stop everything after the first predictions (scripts, CI).")
@click.option("--tracking-uri", "demo_tracking_uri", metavar="URI",
              help="Use this running MLflow server instead of starting one.")
@click.option("--mlflow-port", type=click.IntRange(1024, 65535), default=5000, show_default=True)
@click.option("--gateway-port", type=click.IntRange(1024, 65535), default=8000, show_default=True)
@port_range_option("18100-18199")
@click.option("--model-name", default="iris", show_default=True)
def demo(state_dir: Path, reset: bool, exit_after_smoke: bool, demo_tracking_uri: str | None, mlflow_port: int,
         gateway_port: int, port_range: tuple[int, int], model_name: str) -> None:
    """Start MLflow, train and register models, promote, serve every alias, predict."""
    from mlops_toolkit.ops.demo import (  # pandas and scikit-learn: only when the demo runs
        Demo,
        DemoOptions,
    )

    Demo(DemoOptions(
        state_dir=state_dir, tracking_uri=demo_tracking_uri, mlflow_port=mlflow_port, gateway_port=gateway_port,
        port_range=port_range, model_name=model_name, reset=reset, exit_after_smoke=exit_after_smoke,
    ), echo=click.echo).run()
