"""``mlops demo`` end to end, as a user runs it from an empty folder."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops_toolkit.ops.processes import free_port, pid_running, port_is_open

pytestmark = pytest.mark.slow


def _ports() -> list[str]:
    base = 21000 + free_port() % 8000
    return ["--mlflow-port", str(free_port()), "--gateway-port", str(free_port()), "--port-range", f"{base}-{base + 9}"]


def _demo(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "mlops"
    return subprocess.run([str(script), "demo", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _nothing_left(state: Path, ports: list[str]) -> None:
    mine = [p for p in Path("/proc").iterdir() if p.name.isdigit() and pid_running(int(p.name))
            and str(state) in _cmdline(p)]
    assert mine == [], [(_cmdline(p)) for p in mine]
    for option, value in zip(ports[::2], ports[1::2]):
        if option != "--port-range":
            assert not port_is_open("127.0.0.1", int(value)), option


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _aliases(state: Path) -> dict[str, int]:
    from mlflow import MlflowClient

    db = f"sqlite:///{state / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=db, registry_uri=db)  # not the global registry URI of other tests
    return {alias: int(v) for alias, v in client.get_registered_model("iris").aliases.items()}


def test_demo_after_a_killed_run_cleans_up_reuses_its_state_and_leaves_nothing_running(tmp_path):
    """Two runs on one state folder: the first killed with -9 once it serves (its server,
    watcher, gateway and deployments live on), the second one stops those, registers three
    more candidates in the same MLflow state and runs the whole demo."""
    ports = _ports()
    script = Path(sys.executable).parent / "mlops"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([str(script), "demo", *ports], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while "Ready in" not in (tmp_path / "first.log").read_text() and time.monotonic() < deadline:
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)  # no clean-up
    first.wait()

    second = _demo(tmp_path, "--exit-after-smoke", *ports)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "left by an earlier demo run" in out
    assert "-> iris v6" in out  # the state was reused: three more candidates registered
    assert re.search(r"prediction from iris@Production \(v\d+\): \[\d, \d\]", out)
    assert re.search(r"prediction from iris@challenger \(v\d+\): \[\d, \d\]", out)
    assert "curl -s -X POST http://127.0.0.1:" in out and "stopped; nothing left running" in out
    # The challenger shadows Production: 10 copies, 2 values each, compared by the gateway.
    shadow = re.search(r"shadow: challenger \(v\d+\) agreed with Production \(v\d+\) on (\d+) of (\d+) values", out)
    assert shadow and int(shadow.group(2)) >= 20 and int(shadow.group(1)) <= int(shadow.group(2)), out
    ready = float(re.search(r"Ready in ([\d.]+) s", out).group(1))
    assert ready > 0
    # Then a canary rollout of the challenger over Production: both versions answer during
    # it, each step's verdict is printed, and Production ends on the challenger's version.
    assert re.search(r"step 1/2 at 50% passed \(\d+ requests, error rate 0.00%, p95 [\d.]+ ms, agreement "
                     r"100.00% of \d+ values\)", out), out
    moved = re.search(r"rollout passed: Production is on v(\d+) now \(requests answered during the rollout: "
                      r"v(\d+) (\d+), v(\d+) (\d+)\)", out)
    assert moved and int(moved.group(3)) > 0 and int(moved.group(5)) > 0, out
    state = tmp_path / ".mlops"
    aliases = _aliases(state)
    assert set(aliases) == {"Production", "challenger"}
    assert aliases["Production"] == aliases["challenger"] == int(moved.group(1)) >= 4
    assert "mlops alias rollback Production --model iris   # back to the gate's champion" in out
    _nothing_left(state, ports)


def test_demo_names_the_process_holding_its_port(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stale = tmp_path / ".mlops" / "from-an-earlier-run"
        stale.parent.mkdir()
        stale.write_text("")
        result = _demo(tmp_path, "--exit-after-smoke", "--reset", "--mlflow-port", str(port), timeout=60)
    assert "reset: removed" in result.stdout and not stale.exists()  # --reset empties the state first
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[0].startswith(f"Error: port {port} is in use by pid ")
    assert "--mlflow-port" in lines[0] and "Traceback" not in result.stderr
