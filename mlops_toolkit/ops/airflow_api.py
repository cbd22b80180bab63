"""A tiny client for Airflow 3's REST API (``/api/v2``): just what a one-shot job needs.

Login is ``POST /auth/token`` with a username and password (Airflow 3's simple auth
manager and the FAB one both answer it with a JWT); every other call sends that token
as a bearer. Plain urllib, so the toolkit gains no dependency and no Airflow install is
needed on the calling side. Every failure is one :class:`AirflowError` line naming the
URL, never the password or the token.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlops_toolkit import http
from mlops_toolkit.errors import MlopsError, ValidationError, one_line
from mlops_toolkit.waiting import WaitTimeout, wait_until

SUCCESS, FAILED = "success", "failed"
FINISHED_RUN_STATES = {SUCCESS, FAILED}
FAILED_TASK_STATES = {"failed", "upstream_failed"}
REQUIRED_COMPONENTS = ("metadatabase", "scheduler")  # without these no run ever starts


class AirflowError(MlopsError):
    """Airflow answered something unusable, or a DAG run did not succeed."""


class AirflowUnavailableError(AirflowError):
    """No answer from the API server (refused, timed out, DNS)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class AirflowAuthError(AirflowError):
    """The API server refused the credentials (401) or the user's role (403)."""


class AirflowNotFoundError(AirflowError):
    """404: an unknown DAG or DAG run."""


@dataclass(frozen=True)
class DagRun:
    dag_id: str
    run_id: str
    state: str
    logical_date: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    run_type: str = "manual"  # manual, scheduled, backfill, asset_triggered

    @classmethod
    def from_json(cls, data: dict) -> DagRun:
        return cls(data["dag_id"], data["dag_run_id"], data.get("state") or "queued", data.get("logical_date"),
                   data.get("start_date"), data.get("end_date"), data.get("run_type") or "manual")


@dataclass
class AirflowClient:
    """One API server, one user. The token is fetched on first use and again after a 401."""

    base_url: str
    username: str
    password: str = field(repr=False)
    request_timeout: float = 10.0
    _token: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    # -- health and login ------------------------------------------------------------------
    def health(self) -> dict:
        """``GET /api/v2/monitor/health`` (no login needed): status per component."""
        return self._call("GET", "/api/v2/monitor/health", auth=False)

    def login(self) -> None:
        """Exchange username and password for a JWT (``POST /auth/token``)."""
        try:
            data = self._call("POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False)
        except AirflowAuthError:
            raise AirflowAuthError(
                f"Airflow at {self.base_url} rejected the credentials of user {self.username!r} "
                f"(HTTP 401 from POST /auth/token): check the Airflow username and password"
            ) from None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not token:
            raise AirflowError(f"POST {self.base_url}/auth/token answered without an access_token: is it Airflow 3?")
        self._token = token

    # -- DAGs and runs ---------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict | None:
        """The DAG's details, or None while Airflow does not know it (not parsed yet)."""
        try:
            return self._call("GET", f"/api/v2/dags/{_q(dag_id)}")
        except AirflowNotFoundError:
            return None

    def import_errors(self) -> list[dict]:
        """Files the DAG processor could not import (why a DAG may never appear)."""
        return self._call("GET", "/api/v2/importErrors").get("import_errors", [])

    def unpause(self, dag_id: str) -> None:
        """Unpause (idempotent): runs of a paused DAG stay queued forever."""
        self._call("PATCH", f"/api/v2/dags/{_q(dag_id)}", {"is_paused": False})

    def trigger(self, dag_id: str, logical_date: dt.datetime | None | str = "now", conf: dict | None = None) -> DagRun:
        """Start a manual run. ``logical_date`` "now" (UTC) gives the DAGs today's batch date;
        None sends null, which Airflow 3 accepts (a run without a logical date)."""
        if logical_date == "now":
            logical_date = dt.datetime.now(dt.timezone.utc)
        body = {"logical_date": logical_date.isoformat() if isinstance(logical_date, dt.datetime) else None,
                "conf": conf or {}}
        return DagRun.from_json(self._call("POST", f"/api/v2/dags/{_q(dag_id)}/dagRuns", body))

    def dag_runs(self, dag_id: str, limit: int = 20) -> list[DagRun]:
        """The DAG's newest runs first (by the time each was due to run)."""
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns?order_by=-run_after&limit={int(limit)}"
        return [DagRun.from_json(run) for run in self._call("GET", path).get("dag_runs", [])]

    def dag_run(self, dag_id: str, run_id: str) -> DagRun:
        return DagRun.from_json(self._call("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances"
        return self._call("GET", path).get("task_instances", [])

    def wait_for_run(self, run: DagRun, timeout: float, on_progress: Callable[[str], None],
                     interval: float = 2.0) -> DagRun:
        """Poll until the run finishes; return it on success, raise one line naming the DAG,
        the run and the failed task otherwise (or when ``timeout`` seconds pass first)."""
        seen = {"line": "", "run": run, "tasks": []}

        def finished() -> DagRun | None:
            current = seen["run"] = self.dag_run(run.dag_id, run.run_id)
            tasks = seen["tasks"] = self.task_instances(run.dag_id, run.run_id) if current.state != SUCCESS else []
            line = f"{current.dag_id} {current.run_id}: {current.state}" + (f" ({_task_summary(tasks)})" if tasks else "")
            if line != seen["line"]:
                on_progress(line)
                seen["line"] = line
            if current.state == SUCCESS:
                return current
            if current.state in FINISHED_RUN_STATES or current.state not in {"queued", "running"}:
                failed = [t for t in tasks if t.get("state") in FAILED_TASK_STATES]
                where = "; ".join(f"task {t['task_id']} {t['state']} (try {t.get('try_number', '?')})" for t in failed)
                raise AirflowError(
                    f"DAG {current.dag_id} run {current.run_id} ended {current.state}"
                    + (f": {where}" if where else "")
                    + f"; task logs: {self.base_url}/dags/{_q(current.dag_id)}/runs/{_q(current.run_id)}"
                )
            return None

        try:
            return wait_until(finished, timeout, interval)
        except WaitTimeout:
            current, tasks = seen["run"], seen["tasks"]
            raise AirflowError(f"DAG {current.dag_id} run {current.run_id} still {current.state} after {timeout:.0f} s"
                               + (f" ({_task_summary(tasks)})" if tasks else "")) from None

    # -- HTTP ------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        if auth and self._token is None:
            self.login()
        try:
            return self._send(method, path, body, auth)
        except AirflowAuthError:
            if not auth:
                raise
            self.login()  # tokens expire (default 24 h): one fresh login, then give up
            return self._send(method, path, body, auth)

    def _send(self, method: str, path: str, body: Any, auth: bool) -> Any:
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = http.request(method, url, json_body=body, headers=headers, timeout=self.request_timeout)
        except (http.Unreachable, ValidationError) as exc:  # refused, timeout, DNS, bad URL
            reason = f"{method} {path}: {one_line(getattr(exc, 'reason', exc))}"
            raise AirflowUnavailableError(f"Airflow API at {self.base_url} did not answer {reason}", reason) from None
        if not response.ok:
            detail = _detail(response.text())
            message = f"{method} {url} answered HTTP {response.status}" + (f": {detail}" if detail else "")
            if response.status in (401, 403):
                if response.status == 403:
                    message += f" (user {self.username!r} lacks the permission: give it the Admin or Op role)"
                raise AirflowAuthError(message)
            if response.status == 404:
                raise AirflowNotFoundError(message)
            raise AirflowError(message)
        payload = response.body
        try:
            return json.loads(payload) if payload else {}
        except ValueError:
            raise AirflowError(f"{method} {url} answered something that is not JSON: "
                               "is it Airflow's API server?") from None


def components(health: dict) -> dict[str, str | None]:
    """``{"scheduler": "healthy", "triggerer": None, ...}`` from a health answer."""
    return {name: (value or {}).get("status") for name, value in health.items() if isinstance(value, dict)}


def ready(health: dict, required: tuple[str, ...] = REQUIRED_COMPONENTS) -> bool:
    """True when every required component reports healthy (the triggerer may be absent)."""
    status = components(health)
    return all(status.get(name) == "healthy" for name in required)


def _task_summary(tasks: list[dict]) -> str:
    return ", ".join(f"{t['task_id']}={t.get('state') or 'none'}" for t in tasks)


def _detail(raw: str) -> str:
    """FastAPI's ``{"detail": ...}`` as one line. Validation errors (422) carry the request
    body in ``input``: only their ``loc`` and ``msg`` are kept, so a password never shows."""
    try:
        detail = json.loads(raw).get("detail", raw)
    except (ValueError, AttributeError):
        detail = raw
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}"
            if isinstance(item, dict) else "invalid request"
            for item in detail
        )
    elif not isinstance(detail, str):
        detail = "(details omitted)"
    return one_line(detail, 200)


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


__all__ = ["AirflowAuthError", "AirflowClient", "AirflowError", "AirflowNotFoundError", "AirflowUnavailableError",
           "DagRun", "components", "ready"]
