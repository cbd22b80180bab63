"""``mlops demo``: the whole product on one machine, from an empty folder to a prediction.

Local MLflow server (SQLite + local artifacts in the state folder) -> train candidates ->
champion/challenger gate -> autoserve (process runtime + gateway) -> a prediction from
every alias -> a summary. Child processes are recorded in the state folder, so a later run
finds and stops what a killed earlier run left behind instead of failing on busy ports.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlops_toolkit as mt
from mlops_toolkit.batch.training import (
    METRIC,
    champion_challenger,
    load_iris_split,
    train_candidates,
)
from mlops_toolkit.errors import MlopsError, ValidationError
from mlops_toolkit.ops import gateway_client
from mlops_toolkit.ops.local_server import LocalMlflowServer
from mlops_toolkit.ops.processes import (
    pid_running,
    port_is_open,
    signal_group,
    who_listens,
)
from mlops_toolkit.ops.progress import Progress
from mlops_toolkit.rollout import Rollout
from mlops_toolkit.waiting import WaitTimeout, wait_until

ALIASES = ("Production", "challenger")
ROLLOUT_STEPS = (50, 100)
ROLLOUT_STEP_SECONDS = 2.0


@dataclass
class DemoOptions:
    state_dir: Path = Path(".mlops")
    tracking_uri: str | None = None  # an MLflow server that already runs: start none
    mlflow_port: int = 5000
    gateway_port: int = 8000
    port_range: tuple[int, int] = (18100, 18199)
    model_name: str = "iris"
    reset: bool = False
    exit_after_smoke: bool = False
    ready_timeout: float = 180.0


@dataclass
class DemoResult:
    tracking_uri: str
    gateway: str
    gateway_admin: str
    endpoints: list[dict] = field(default_factory=list)
    predictions: dict[str, dict] = field(default_factory=dict)
    shadow: dict[str, float] = field(default_factory=dict)  # the challenger shadowing Production
    rollout: Rollout | None = None  # the challenger's canary rollout over Production, as it ended
    answered: dict[int, int] = field(default_factory=dict)  # during the rollout: version -> requests answered
    seconds_to_first_prediction: float = 0.0


class Demo:
    def __init__(self, options: DemoOptions, echo: Callable[[str], None] = print) -> None:
        self.options = options
        self.state = options.state_dir.resolve()
        self.progress = Progress(echo)
        self.echo = echo
        self.server: LocalMlflowServer | None = None
        self.autoserve: subprocess.Popen | None = None

    # -- entry point ---------------------------------------------------------------------
    def run(self) -> DemoResult:
        try:
            result = self._run()
            if not self.options.exit_after_smoke:
                self.echo("\nServing. Press Ctrl-C to stop everything.")
                _wait_for_signal()
            return result
        finally:
            self.stop()

    def _run(self) -> DemoResult:
        self._prepare_state()
        tracking_uri = self._tracking_server()
        mt.configure(tracking_uri=tracking_uri, experiment="mlops-demo", model_name=self.options.model_name)
        self._train_and_promote()
        gateway, admin = self._start_autoserve(tracking_uri)
        endpoints = self._wait_until_served(admin)
        result = DemoResult(tracking_uri, gateway, admin, endpoints)
        for alias in ALIASES:
            result.predictions[alias] = self._predict(gateway, alias)
        result.seconds_to_first_prediction = self.progress.elapsed
        result.shadow = self._shadow(gateway, admin, result)
        result.rollout, result.answered = self._rollout(gateway, admin)
        result.endpoints = gateway_client.endpoints(admin) or result.endpoints
        self._summary(result)
        return result

    # -- steps ---------------------------------------------------------------------------
    def _prepare_state(self) -> None:
        self._stop_leftovers()
        if self.options.reset and self.state.exists():
            shutil.rmtree(self.state)
            self.progress(f"reset: removed {self.state}")
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        self.progress(f"state folder {self.state}")

    def _tracking_server(self) -> str:
        if self.options.tracking_uri:
            from mlops_toolkit.connection import ensure_reachable

            ensure_reachable(self.options.tracking_uri)
            self.progress(f"using the MLflow server at {self.options.tracking_uri}")
            return self.options.tracking_uri
        self._check_port(self.options.mlflow_port, "--mlflow-port")
        self.server = LocalMlflowServer(
            backend_store_uri=f"sqlite:///{self.state / 'mlflow.db'}",
            artifacts_dir=self.state / "artifacts",
            port=self.options.mlflow_port,
            log_path=self.state / "logs" / "mlflow-server.log",
        )
        self.progress(f"starting MLflow server on 127.0.0.1:{self.options.mlflow_port} (SQLite in the state folder)")
        self.server.start()
        self._record_children()
        self.progress(f"MLflow server ready: {self.server.uri}")
        return self.server.uri

    def _train_and_promote(self) -> None:
        X_train, X_val, y_train, y_val = load_iris_split()
        model = self.options.model_name
        self.progress(f"training candidates on iris ({len(X_train)} train / {len(X_val)} validation rows)")
        chatter = io.StringIO()  # MLflow's "Created version ..." lines: the progress says it better
        with contextlib.redirect_stderr(chatter):
            new = train_candidates(
                X_train, X_val, y_train, y_val, register_as=model,
                on_trained=lambda c: self.progress(f"  {c.name:<14} {METRIC}={c.metrics[METRIC]:.4f} -> {model} v{c.version}"),
            )
        gate = champion_challenger(model, new)
        self.progress(str(gate.decision))
        if gate.challenger is not None:
            self.progress(str(gate.challenger))

    def _start_autoserve(self, tracking_uri: str) -> tuple[str, str]:
        """The watcher, which starts the gateway (admin on gateway port + 1, watcher on + 2)."""
        port = self.options.gateway_port
        for taken in (port, port + 1, port + 2):
            self._check_port(taken, "--gateway-port")
        low, high = self.options.port_range
        log = open(self.state / "logs" / "autoserve.log", "ab")
        self.autoserve = subprocess.Popen(
            [sys.executable, "-m", "mlops_toolkit.cli", "autoserve",
             "--tracking-uri", tracking_uri, "--models", self.options.model_name,
             "--aliases", ",".join(ALIASES), "--poll-interval", "2",
             "--port", str(port), "--admin-port", str(port + 1), "--watcher-port", str(port + 2),
             "--port-range", f"{low}-{high}",
             "--state-dir", str(self.state / "autoserve")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._record_children()
        gateway, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
        self.progress(f"autoserve starting: gateway {gateway} (log {self.state / 'logs' / 'autoserve.log'})")
        return gateway, admin

    def _wait_until_served(self, admin: str) -> list[dict]:
        return gateway_client.wait_until_served(
            admin, self.options.model_name, ALIASES, self.options.ready_timeout, self.progress,
            alive=self._autoserve_alive,
        )

    def _autoserve_alive(self) -> None:
        if self.autoserve.poll() is not None:
            raise MlopsError(f"autoserve exited with code {self.autoserve.returncode}; "
                             f"see {self.state / 'logs' / 'autoserve.log'}")

    def _shadow(self, gateway: str, admin: str, result: DemoResult, copies: int = 10) -> dict[str, float]:
        """Put the challenger in Production's shadow and show how often it agrees."""
        model = self.options.model_name
        mt.set_shadow(model, "challenger", of="Production")
        wait_until(lambda: any(e.get("alias") == "Production" and e.get("shadow")
                               for e in gateway_client.endpoints(admin) or []),
                   30, interval=0.2, what="the shadow in the gateway's route table")
        payload = gateway_client.iris_payload(rows=2)
        for _ in range(copies):
            gateway_client.predict(gateway, model, "Production", payload)
        figures = wait_until(lambda: (f := gateway_client.shadow_figures(admin, model)) and f["ok"] >= copies and f,
                             15, interval=0.2, what=f"{copies} shadow copies answered")
        versions = {alias: answer["version"] for alias, answer in result.predictions.items()}
        self.progress(f"shadow: challenger (v{versions['challenger']}) agreed with Production (v{versions['Production']}) "
                      f"on {figures['agreement']:.0f} of {figures['compared']:.0f} values")
        return figures

    def _rollout(self, gateway: str, admin: str) -> tuple[Rollout, dict[int, int]]:
        """A short canary rollout of the challenger over Production, under a steady request
        stream: half the traffic, then all of it, each step gated on errors, p95 and agreement."""
        model = self.options.model_name
        started = mt.start_rollout(model, "challenger", steps=ROLLOUT_STEPS, step_seconds=ROLLOUT_STEP_SECONDS,
                                   max_error_rate=0.01, max_p95_ms=1000, min_agreement=0.9)
        self.progress(f"rollout: challenger (v{started.candidate}) over Production (v{started.baseline}), steps "
                      f"{'%, '.join(map(str, started.steps))}%, {ROLLOUT_STEP_SECONDS:g} s each")
        payload = gateway_client.iris_payload(rows=2)
        answered: dict[int, int] = {}
        said: set[str] = set()

        def ended() -> Rollout | None:
            self._autoserve_alive()
            version = gateway_client.predict(gateway, model, "Production", payload).version
            answered[version] = answered.get(version, 0) + 1
            current = mt.rollout_status(model)
            if current.reason and current.reason not in said:  # each step's verdict, once
                said.add(current.reason)
                self.progress(f"  {current.reason}")
            return current if current.state != "running" else None

        done = wait_until(ended, 60, interval=0.02, what="the rollout to end")
        shares = ", ".join(f"v{v} {n}" for v, n in sorted(answered.items()))
        if done.state == "passed":
            self.progress(f"rollout passed: Production is on v{done.candidate} now (requests answered during the "
                          f"rollout: {shares})")
            wait_until(lambda: any(e.get("alias") == "Production" and e.get("version") == done.candidate
                                   for e in gateway_client.endpoints(admin) or []),
                       30, interval=0.2, what="the gateway routing Production to the candidate")
        else:
            self.progress(f"rollout {done.state}: Production stays on v{done.baseline} ({shares})")
        return done, answered

    def _predict(self, gateway: str, alias: str) -> dict:
        payload = gateway_client.iris_payload(rows=2)
        answer = gateway_client.predict(gateway, self.options.model_name, alias, payload)
        self.progress(f"prediction from {self.options.model_name}@{alias} (v{answer.version}): {answer.predictions}")
        return {"version": answer.version, "predictions": answer.predictions, "payload": payload}

    def _summary(self, result: DemoResult) -> None:
        model = self.options.model_name
        sample = json.dumps(result.predictions["Production"]["payload"])
        lines = [
            "",
            f"Ready in {result.seconds_to_first_prediction:.1f} s.",
            f"  MLflow UI        {result.tracking_uri}",
            f"  gateway          {result.gateway}   (/serve/..., /health)",
            f"  gateway admin    {result.gateway_admin}   (GET /endpoints, /metrics)",
            f"  shadow           {model}@challenger gets a copy of every {model}@Production request; agreed on "
            f"{result.shadow.get('agreement', 0):.0f} of {result.shadow.get('compared', 0):.0f} values so far "
            f"(mlops shadow clear {model} stops it)",
        ]
        if result.rollout is not None:
            lines.append(f"  rollout          {result.rollout}")
        for endpoint in result.endpoints:
            lines.append(
                f"  {model}@{endpoint['alias']:<11} v{endpoint['version']}  "
                f"{result.gateway}/serve/{urllib.parse.quote(model)}/{endpoint['alias']}/invocations  (direct {endpoint['url']})"
            )
        lines += [
            "",
            "Try it:",
            f"  curl -s -X POST {result.gateway}/serve/{urllib.parse.quote(model)}/Production/invocations \\",
            f"       -H 'Content-Type: application/json' -d '{sample}'",
            f"  {result.gateway}/docs   # in a browser: each served model's API, with its example to try",
            *self._next_step(result),
        ]
        self.echo("\n".join(lines))

    def _next_step(self, result: DemoResult) -> list[str]:
        model, env = self.options.model_name, f"MLFLOW_TRACKING_URI={result.tracking_uri}"
        if result.rollout is not None and result.rollout.state == "passed":
            return [f"  {env} mlops alias rollback Production --model {model}   # back to the gate's champion "
                    f"(v{result.rollout.baseline})"]
        return [f"  {env} mlops alias set Production --model {model} --version "
                f"{result.predictions['challenger']['version']}   # promote the challenger"]

    # -- shutdown and leftovers ----------------------------------------------------------
    def stop(self) -> None:
        """Stop autoserve (which stops its deployments), then the MLflow server."""
        if self.autoserve is not None and self.autoserve.poll() is None:
            self.progress("stopping autoserve and its deployments")
            self.autoserve.send_signal(signal.SIGTERM)
            try:
                self.autoserve.wait(60)
            except subprocess.TimeoutExpired:
                _kill_group(self.autoserve.pid)
        if self.server is not None:
            self.progress("stopping the MLflow server")
            self.server.stop()
        pid_file = self.state / "demo-pids.json"
        pid_file.unlink(missing_ok=True)
        gateway = self.options.gateway_port
        ports = [gateway, gateway + 1, gateway + 2] + ([self.options.mlflow_port] if self.server else [])
        busy = [p for p in ports if port_is_open("127.0.0.1", p)]
        if self.autoserve is not None or self.server is not None:
            self.progress("stopped; nothing left running" if not busy else f"ports still bound: {busy}")

    def _record_children(self) -> None:
        pids = {"mlflow": self.server.process.pid if self.server and self.server.process else None,
                "autoserve": self.autoserve.pid if self.autoserve else None}
        (self.state / "demo-pids.json").write_text(json.dumps(pids))

    def _stop_leftovers(self) -> None:
        """A killed earlier run may have left its server and watcher: stop ours, only ours."""
        pid_file = self.state / "demo-pids.json"
        try:
            pids = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError, ValueError):  # a gateway outlives a watcher killed with -9
            pids["gateway"] = json.loads((self.state / "autoserve" / "gateway.json").read_text())["pid"]
        for name, pid in pids.items():
            if pid and _cmdline_mentions(pid, str(self.state)):
                self.progress(f"stopping {name} (pid {pid}) left by an earlier demo run")
                _kill_group(pid, signal.SIGTERM if name in ("autoserve", "gateway") else signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

    def _check_port(self, port: int, option: str) -> None:
        """Fail at once on a stranger's port; give our own just-stopped processes time to exit."""
        def free() -> bool:
            if not port_is_open("127.0.0.1", port):
                return True
            holder = who_listens(port) or "an unknown process"
            if str(self.state) not in holder:
                raise ValidationError(f"port {port} is in use by {holder}; stop it or choose another with {option}")
            return False

        try:
            wait_until(free, 10, interval=0.2)
        except WaitTimeout:
            holder = who_listens(port) or "an unknown process"
            raise ValidationError(f"port {port} is in use by {holder}; stop it or choose another with {option}") from None


def _cmdline_mentions(pid: int, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a leftover process group and wait (up to 30 s) for its leader to go."""
    signal_group(pid, sig)
    wait_until(lambda: not pid_running(pid), 30, default=False)


def _wait_for_signal() -> None:
    """Block until Ctrl-C or SIGTERM (turned into KeyboardInterrupt for one code path)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
