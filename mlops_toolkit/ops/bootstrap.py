"""``mlops bootstrap``: the compose stack's one-shot demo job, from running services to a
served prediction.

Wait for MLflow, Airflow and the autoserve gateway -> (optionally) reset the demo's MLflow
state -> through Airflow's REST API unpause and trigger each DAG (data load, then
training) and wait for that run -> wait until the gateway serves ``model@Production`` at
the version the registry names -> one prediction -> a summary. One deadline bounds the
whole job, so a stack that never comes up fails with a line instead of hanging.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlops_toolkit import http
from mlops_toolkit.connection import make_client, translated_errors
from mlops_toolkit.errors import MlopsError, one_line
from mlops_toolkit.ops import gateway_client
from mlops_toolkit.ops.airflow_api import (
    AirflowClient,
    AirflowError,
    AirflowUnavailableError,
    DagRun,
    components,
    ready,
)
from mlops_toolkit.ops.progress import Progress
from mlops_toolkit.registry import alias_version
from mlops_toolkit.waiting import WaitTimeout, wait_until

DEFAULT_DAGS = ("dag_data_load", "dag_training")
# Where the DAGs log: dags/dag_training.py (MLOPS_EXPERIMENT, default "scheduled-training")
# and drift.log_to_mlflow (dag_model_monitoring). tests/mlops_toolkit/ops/test_bootstrap.py
# checks that these stay in step with the code.
RESET_EXPERIMENTS = ("scheduled-training", "model-monitoring")
PROGRESS_EVERY_S = 10.0
SCHEDULER_PICKUP_S = 60.0  # how long a due scheduled run may take to appear after unpausing


@dataclass
class BootstrapOptions:
    airflow_password: str = field(repr=False)
    tracking_uri: str = "http://127.0.0.1:5000"
    airflow_url: str = "http://127.0.0.1:8080"
    airflow_user: str = "admin"
    gateway: str = "http://127.0.0.1:8000"
    gateway_admin: str = "http://127.0.0.1:8001"  # /endpoints: what is served, per alias
    model: str = "iris"
    alias: str = "Production"
    reset: bool = False
    reset_experiments: tuple[str, ...] = RESET_EXPERIMENTS
    timeout: float = 900.0  # the whole job
    dags: tuple[str, ...] = DEFAULT_DAGS
    poll_interval: float = 2.0


@dataclass(frozen=True)
class FinishedRun:
    run: DagRun
    seconds: float


@dataclass
class ResetResult:
    model_deleted: bool
    experiments: dict[str, str] = field(default_factory=dict)  # name -> what happened to it


@dataclass
class BootstrapResult:
    runs: list[FinishedRun]
    version: int
    prediction: gateway_client.Prediction
    reset: ResetResult | None
    seconds: float


class Deadline:
    """The job's single time budget: every wait takes what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.ends - time.monotonic())


def run(options: BootstrapOptions, echo: Callable[[str], None] = print) -> BootstrapResult:
    """The whole job; raises MlopsError with one readable line on any failure."""
    progress = Progress(echo)
    deadline = Deadline(options.timeout)
    airflow = AirflowClient(options.airflow_url, options.airflow_user, options.airflow_password)

    wait_for_services(options, airflow, deadline, progress)

    reset = None
    if options.reset:
        reset = reset_mlflow(options.tracking_uri, options.model, options.reset_experiments, progress)
        wait_until_unrouted(options.gateway_admin, options.model, deadline, progress)

    runs = [run_dag(airflow, dag_id, deadline, progress, options.poll_interval) for dag_id in options.dags]

    version = _alias_version(options.tracking_uri, options.model, options.alias)
    if version is None:
        raise MlopsError(f"{options.model} has no {options.alias} alias after {', '.join(options.dags)} succeeded: "
                         f"did the training gate promote nothing? (MLflow UI {options.tracking_uri})")
    progress(f"registry: {options.model}@{options.alias} -> v{version}")
    try:
        gateway_client.wait_until_served(
            options.gateway_admin, options.model, [options.alias], deadline.left(), progress,
            versions=lambda: {options.alias: _alias_version(options.tracking_uri, options.model, options.alias)},
            interval=1.0,
        )
    except MlopsError as exc:  # the time ran out: say which gateway
        raise MlopsError(f"gateway {options.gateway}: {exc} (GET {options.gateway_admin}/endpoints shows why)") from None
    prediction = gateway_client.predict(options.gateway, options.model, options.alias, gateway_client.iris_payload(2),
                                         timeout=max(5.0, min(30.0, deadline.left())))
    progress(f"prediction from {options.model}@{options.alias} (v{prediction.version}): {prediction.predictions}")
    result = BootstrapResult(runs, prediction.version or version, prediction, reset, progress.elapsed)
    echo(summary(options, result))
    return result


# -- steps -------------------------------------------------------------------------------
def wait_for_services(options: BootstrapOptions, airflow: AirflowClient, deadline: Deadline,
                      progress: Callable[[str], None]) -> None:
    """MLflow, then Airflow's API server (metadatabase and scheduler healthy) and a login,
    then the gateway."""
    if options.tracking_uri.startswith(("http://", "https://")):
        _wait_for_service("MLflow", options.tracking_uri, lambda t: _http_ok(f"{options.tracking_uri.rstrip('/')}/health", t),
                    deadline, progress)

    def airflow_ready(request_timeout: float) -> tuple[bool, str]:
        airflow.request_timeout = request_timeout
        try:
            health = airflow.health()
        except AirflowUnavailableError as exc:
            return False, exc.reason
        except AirflowError as exc:
            return False, str(exc)
        status = ", ".join(f"{name} {state or 'not running'}" for name, state in components(health).items())
        return ready(health), status

    _wait_for_service("Airflow API server", options.airflow_url, airflow_ready, deadline, progress)
    airflow.request_timeout = 10.0
    airflow.login()  # wrong credentials fail here: before waiting for the gateway or changing anything
    progress(f"logged in to Airflow as {options.airflow_user!r}")
    _wait_for_service("autoserve gateway", options.gateway,
                lambda t: _http_ok(f"{options.gateway.rstrip('/')}/health", t), deadline, progress)
    _wait_for_service("autoserve gateway admin", options.gateway_admin,
                lambda t: _http_ok(f"{options.gateway_admin.rstrip('/')}/health", t), deadline, progress)


def reset_mlflow(tracking_uri: str, model: str, experiments: tuple[str, ...],
                 progress: Callable[[str], None]) -> ResetResult:
    """Delete the registered model and the DAGs' experiments.

    MLflow only soft-deletes an experiment and then refuses a new one with the same name
    (``set_experiment`` fails on a deleted one), so each experiment is renamed before it
    is deleted: the name is free for the next training run and the old runs stay
    restorable until ``mlflow gc``. An experiment someone already deleted is restored,
    renamed and deleted again for the same reason.
    """
    from mlflow.exceptions import MlflowException

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = ResetResult(model_deleted=False)
    with translated_errors(tracking_uri):
        client = make_client(tracking_uri)
        try:
            client.delete_registered_model(model)
            result.model_deleted = True
            progress(f"reset: deleted registered model {model} (every version and alias)")
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            progress(f"reset: no registered model {model}")
        for name in experiments:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                result.experiments[name] = "absent"
                progress(f"reset: no experiment {name!r}")
                continue
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            archived = f"{name} (reset {stamp} id {experiment.experiment_id})"
            client.rename_experiment(experiment.experiment_id, archived)
            client.delete_experiment(experiment.experiment_id)
            result.experiments[name] = f"deleted as {archived!r}"
            progress(f"reset: experiment {name!r} renamed to {archived!r} and deleted")
    return result


def wait_until_unrouted(gateway: str, model: str, deadline: Deadline, progress: Callable[[str], None]) -> None:
    """After a reset, wait until autoserve has dropped the deleted model's routes.

    Version numbers restart at 1 in a recreated model, and autoserve keys deployments by
    (model, version): a deployment of the old v1 still running when the new v1 gets its
    alias would be routed to. Autoserve stops a deployment right after its route goes
    (drain), so waiting here keeps the old model out of the new one's way.
    """
    def routed() -> list[str]:
        return [e["alias"] for e in gateway_client.endpoints(gateway) or [] if e.get("model") == model]

    still_routed = routed()
    if not still_routed:
        return
    progress(f"reset: waiting for autoserve to stop serving the deleted {model} ({', '.join(still_routed)})")
    _wait_for_service("autoserve to drop the deleted model", gateway, lambda t: (not routed(), ""), deadline, progress)


def run_dag(airflow: AirflowClient, dag_id: str, deadline: Deadline, progress: Callable[[str], None],
            poll_interval: float = 2.0) -> FinishedRun:
    """Wait until Airflow knows the DAG, unpause it and follow one run to its success.

    Unpausing a scheduled DAG whose latest scheduled time has passed makes the scheduler
    start that run at once (what ``catchup=False`` means in Airflow 3): the job follows it.
    Triggering a run as well would load and train twice, one run queued behind the other.
    A DAG with nothing due (no schedule, already run, already unpaused) gets a triggered run.
    """
    started = time.monotonic()
    due = _due_scheduled_run(_wait_for_dag(airflow, dag_id, deadline, progress))
    airflow.unpause(dag_id)
    dag_run = None
    if due is not None:
        dag_run = wait_until(lambda: _scheduled_run(airflow, dag_id, due), min(SCHEDULER_PICKUP_S, deadline.left()),
                             interval=1.0, default=None)
    if dag_run is not None:
        progress(f"{dag_id}: unpaused; following the run the scheduler started for its due time, {dag_run.run_id}")
    else:
        dag_run = airflow.trigger(dag_id)
        progress(f"{dag_id}: unpaused, triggered run {dag_run.run_id}")
    finished = airflow.wait_for_run(dag_run, deadline.left(), progress, interval=poll_interval)
    seconds = time.monotonic() - started
    progress(f"{dag_id}: run {finished.run_id} succeeded in {seconds:.1f} s")
    return FinishedRun(finished, seconds)


def summary(options: BootstrapOptions, result: BootstrapResult) -> str:
    lines = ["", f"Bootstrap done in {result.seconds:.1f} s."]
    if result.reset is not None:
        lines.append(f"  reset            model {'deleted' if result.reset.model_deleted else 'absent'}; "
                     + ", ".join(f"{k}: {v}" for k, v in result.reset.experiments.items()))
    for finished in result.runs:
        run_ = finished.run
        lines.append(f"  {run_.dag_id:<16} {run_.run_id}  {run_.state} ({finished.seconds:.1f} s)")
    url = gateway_client.serve_url(options.gateway, options.model, options.alias)
    lines += [
        f"  {options.model}@{options.alias}  v{result.version}  {url}",
        f"  prediction       {result.prediction.predictions}  (X-Model-Version: {result.prediction.version})",
        f"  Airflow UI       {options.airflow_url}",
        f"  MLflow UI        {options.tracking_uri}",
        f"  gateway          {options.gateway}   (/serve/..., /health)",
        f"  gateway admin    {options.gateway_admin}   (GET /endpoints, /metrics)",
    ]
    return "\n".join(lines)


# -- helpers -----------------------------------------------------------------------------
def _wait_for_service(what: str, url: str, probe: Callable[[float], tuple[bool, str] | bool], deadline: Deadline,
                      progress: Callable[[str], None]) -> None:
    """Poll ``probe`` until it says ready; a progress line at once and every 10 s; one error
    line naming the URL and the last answer when the job's time runs out."""
    started = time.monotonic()
    seen = {"detail": "", "next_line": started}

    def ready() -> bool:
        answer = probe(max(0.5, min(5.0, deadline.left())))
        ok, seen["detail"] = answer if isinstance(answer, tuple) else (answer, "")
        if not ok and time.monotonic() >= seen["next_line"]:
            progress(f"waiting for {what} at {url}" + (f": {seen['detail']}" if seen["detail"] else ""))
            seen["next_line"] = time.monotonic() + PROGRESS_EVERY_S
        return ok

    try:
        wait_until(ready, max(0.0, deadline.left()), interval=1.0)
    except WaitTimeout:
        detail = seen["detail"]
        raise MlopsError(f"{what} at {url} not ready after {time.monotonic() - started:.0f} s (bootstrap timeout "
                         f"{deadline.seconds:.0f} s)" + (f": {detail}" if detail else "")) from None
    progress(f"{what} ready at {url}" + (f" ({seen['detail']})" if seen["detail"] else ""))


def _wait_for_dag(airflow: AirflowClient, dag_id: str, deadline: Deadline, progress: Callable[[str], None]) -> dict:
    """A fresh Airflow parses the DAGs folder a few seconds after it starts: wait for it.
    Returns the DAG's details."""
    details = airflow.dag(dag_id)
    if details is not None:
        return details
    progress(f"{dag_id}: waiting for Airflow to parse it")
    details = wait_until(lambda: airflow.dag(dag_id), max(0.0, deadline.left()), interval=2.0, default=None)
    if details is not None:
        return details
    errors = "; ".join(one_line(f"{e.get('filename')}: {e.get('stack_trace', '')}", 200)
                       for e in airflow.import_errors())
    raise AirflowError(f"Airflow at {airflow.base_url} does not know DAG {dag_id}"
                       + (f" (import errors: {errors})" if errors else " (is it in the DAGs folder?)"))


def _due_scheduled_run(details: dict) -> str | None:
    """The logical date of the run the scheduler will start as soon as this paused DAG is
    unpaused (its next run was due in the past), or None."""
    run_after, logical_date = details.get("next_dagrun_run_after"), details.get("next_dagrun_logical_date")
    if not details.get("is_paused") or not run_after or not logical_date:
        return None
    due = dt.datetime.fromisoformat(run_after)
    return logical_date if due <= dt.datetime.now(dt.timezone.utc) else None


def _scheduled_run(airflow: AirflowClient, dag_id: str, logical_date: str) -> DagRun | None:
    when = dt.datetime.fromisoformat(logical_date)
    return next((run for run in airflow.dag_runs(dag_id, limit=5) if run.run_type == "scheduled" and run.logical_date
                 and dt.datetime.fromisoformat(run.logical_date) == when), None)


def _alias_version(tracking_uri: str, model: str, alias: str) -> int | None:
    """The registry's version for ``model@alias`` now, or None (no model, no alias, no answer)."""
    from mlflow.exceptions import MlflowException

    try:
        return alias_version(make_client(tracking_uri), model, alias)
    except (MlflowException, MlopsError, OSError, ValueError):
        return None


def _http_ok(url: str, timeout: float) -> tuple[bool, str]:
    try:
        status = http.get(url, timeout).status
    except http.Unreachable as exc:
        return False, one_line(exc.reason)
    return status == 200, f"HTTP {status}"
