"""``mlops bootstrap``: the compose stack's demo job (``demo-bootstrap``), configured by env."""

from __future__ import annotations

import click

from mlops_toolkit import config
from mlops_toolkit.cli.common import tracking_uri_option
from mlops_toolkit.ops.bootstrap import (
    DEFAULT_DAGS,
    RESET_EXPERIMENTS,
    BootstrapOptions,
    run,
)


def _http_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
        raise click.BadParameter(f"expected an http(s) URL such as http://127.0.0.1:8080, got {value!r}")
    return value.rstrip("/")


def _names(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    if not names and param.name == "dags":
        raise click.BadParameter("give at least one DAG id, e.g. dag_data_load,dag_training")
    return names


@click.command()
@tracking_uri_option()
@click.option("--airflow-url", envvar="AIRFLOW_API_URL", default="http://127.0.0.1:8080", show_default=True,
              callback=_http_url, metavar="URL", help="Airflow 3 API server ($AIRFLOW_API_URL).")
@click.option("--airflow-user", envvar="AIRFLOW_USERNAME", default="admin", show_default=True,
              help="Airflow user ($AIRFLOW_USERNAME).")
@click.option("--airflow-password", envvar="AIRFLOW_PASSWORD", required=True, metavar="PASSWORD",
              help="Airflow password ($AIRFLOW_PASSWORD; prefer the variable: options show in `ps`).")
@click.option("--gateway", envvar="MLOPS_GATEWAY_URL", default="http://127.0.0.1:8000", show_default=True,
              callback=_http_url, metavar="URL", help="autoserve gateway ($MLOPS_GATEWAY_URL).")
@click.option("--gateway-admin", envvar="MLOPS_GATEWAY_ADMIN_URL", default="http://127.0.0.1:8001", show_default=True,
              callback=_http_url, metavar="URL", help="autoserve gateway admin port ($MLOPS_GATEWAY_ADMIN_URL).")
@click.option("--model", envvar="MLOPS_MODEL_NAME", default="iris", show_default=True,
              help="Registered model the DAGs train ($MLOPS_MODEL_NAME).")
@click.option("--reset/--no-reset", envvar="BOOTSTRAP_RESET_MLFLOW", default=False, show_default=True,
              help="Delete the model and the DAGs' experiments first ($BOOTSTRAP_RESET_MLFLOW=true).")
@click.option("--reset-experiments", envvar="BOOTSTRAP_RESET_EXPERIMENTS", default=",".join(RESET_EXPERIMENTS),
              show_default=True, callback=_names, metavar="NAMES",
              help="Experiments --reset deletes, comma-separated ($BOOTSTRAP_RESET_EXPERIMENTS).")
@click.option("--timeout", envvar="BOOTSTRAP_TIMEOUT", type=click.FloatRange(min=1), default=900, show_default=True,
              metavar="SECONDS", help="Limit for the whole job ($BOOTSTRAP_TIMEOUT).")
@click.option("--dags", default=",".join(DEFAULT_DAGS), show_default=True, callback=_names, metavar="IDS",
              help="DAGs to run in order, comma-separated.")
def bootstrap(airflow_url: str, airflow_user: str, airflow_password: str, gateway: str, gateway_admin: str,
              model: str, reset: bool,
              reset_experiments: tuple[str, ...], timeout: float, dags: tuple[str, ...]) -> None:
    """Wait for MLflow, Airflow and the gateway; run the data-load and training DAGs through
    Airflow's API; wait until MODEL@Production serves; send one prediction."""
    run(BootstrapOptions(
        airflow_password=airflow_password, tracking_uri=config.settings().tracking_uri, airflow_url=airflow_url,
        airflow_user=airflow_user, gateway=gateway, gateway_admin=gateway_admin, model=model, reset=reset, reset_experiments=reset_experiments,
        timeout=timeout, dags=dags,
    ), echo=click.echo)
