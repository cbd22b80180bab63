"""Gateway overhead by wrk: the same replica called directly and through the gateway with
one and with two instances (SO_REUSEPORT), at concurrency 1, 8, 32 and 128.

wrk (Debian package ``wrk``) is the load generator: a C client whose own cost is a small
fraction of a Python client's, so the difference it measures is the gateway's. Targets
take turns, cell by cell, and each figure is the median of ``--rounds`` runs.

The first table has a fourth target: haproxy (Debian package ``haproxy``) as a reverse proxy
in front of the same replica, what one more hop costs when no Python is in it.

A second table measures what the gateway itself can carry: the backend is haproxy answering
a fixed prediction (Debian package ``haproxy``, ``http-request return``), far faster than a
model server, so the gateway is the bottleneck; 1 instance against 2 at concurrency 32.

    python -m benchmarks.bench_gateway_wrk [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlops_autoserve.routetable import (
    Replica,
    RouteEntry,
    RouteTable,
    table_path,
    write,
)

import mlops_toolkit as mt
from benchmarks.support import ServingStack, print_table, write_json
from mlops_toolkit import http
from mlops_toolkit.ops.processes import port_is_open
from tests.harness import IRIS_SPLIT, Watcher, free_port, wait_for

ONE_ROW = {"dataframe_split": {**IRIS_SPLIT["dataframe_split"], "data": IRIS_SPLIT["dataframe_split"]["data"][:1]}}
LEVELS = (1, 8, 32, 128)


def wrk(url: str, concurrency: int, seconds: float, script: Path) -> tuple[float, float]:
    """(requests/s, p50 ms) of one wrk run; non-2xx answers make it fail loudly."""
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    print(f"  c={concurrency} {url}: " + " ".join(re.findall(r"Requests/sec:\s+[\d.]+|50%\s+\S+", out)), flush=True)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups()
    return rate, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def post_script(root: Path, body: dict, name: str = "post") -> Path:
    """A wrk script POSTing ``body`` as JSON, written to ``root/<name>.lua``."""
    script = root / f"{name}.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(json.dumps(body))}\n")
    return script


def require_tools(*tools: str) -> None:
    """Exit with one line when a Debian tool the benchmark runs is missing."""
    for tool in tools or ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: apt-get install {tool})")


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive free ports (instance i's admin port is the first + i)."""
    for _ in range(100):
        first = free_port()
        if all(port_is_free(first + i) for i in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Gateways:
    """``mlops gateway`` processes serving one route table, with 1 or N instances."""

    def __init__(self, state_dir: Path, instances: int) -> None:
        self.port, self.admin_port = free_port(), free_ports_in_a_row(instances)
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlops_autoserve.gateway", "--state-dir", str(state_dir), "--port",
             str(self.port), "--admin-port", str(self.admin_port), "--instances", str(instances)],
            stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        try:
            for i in range(instances):
                wait_for(lambda i=i: http.answers(f"http://127.0.0.1:{self.admin_port + i}/health"), 30,
                         what=f"gateway instance {i}")
        except Exception:
            self.log.seek(0)
            print(self.log.read().decode(errors="replace")[-3000:], file=sys.stderr)
            raise

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)


def side_by_side(targets: dict[str, str], levels: tuple[int, ...], seconds: float, rounds: int,
                 script: Path | dict[str, Path], meters: dict[str, Callable[[], float]] | None = None,
                 ) -> dict[tuple[int, str], tuple[float, float, float | None]]:
    """(req/s, p50 ms, cores the target's processes used) by (concurrency, target): the
    median of ``rounds``; cores only for targets with a CPU-seconds meter. ``script``: one
    wrk script for every target, or one per target."""
    meters = meters or {}
    scripts = script if isinstance(script, dict) else {name: script for name in targets}
    cells: dict[tuple[int, str], list[tuple[float, float, float | None]]] = {}
    for c in levels:
        for name, url in targets.items():  # warm connections and caches
            wrk(url, c, 1, scripts[name])
        for _ in range(rounds):
            for name, url in targets.items():
                meter = meters.get(name)
                cpu, wall = (meter() if meter else 0.0), time.monotonic()
                rate, p50 = wrk(url, c, seconds, scripts[name])
                cores = (meter() - cpu) / (time.monotonic() - wall) if meter else None
                cells.setdefault((c, name), []).append((rate, p50, cores))
    return {k: (statistics.median(r for r, _, _ in v), statistics.median(p for _, p, _ in v),
                statistics.median(u for _, _, u in v) if v[0][2] is not None else None) for k, v in cells.items()}


def cpu_seconds(group: int) -> float:
    """User + system CPU seconds of every live process in process group ``group``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp; utime and stime are fields 14 and 15 of stat(5)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def haproxy(root: Path, name: str, frontend: str) -> tuple[subprocess.Popen, int]:
    """haproxy (Debian's) on a free port with ``frontend`` as the rest of its config."""
    port = free_port()
    config = root / f"haproxy-{name}.cfg"
    config.write_text(f"""global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout client 30s
    timeout server 30s
    timeout connect 5s
frontend {name}
    bind 127.0.0.1:{port}
{frontend}""")
    process = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: port_is_open("127.0.0.1", port), 10, what="haproxy")
    return process, port


def haproxy_backend(root: Path, answer: bytes) -> tuple[subprocess.Popen, int]:
    """A backend answering every request with ``answer`` at once."""
    return haproxy(root, "fixed", f"    http-request return status 200 content-type application/json "
                                  f"string '{answer.decode()}'\n")


def haproxy_proxy(root: Path, backend_url: str) -> tuple[subprocess.Popen, int]:
    """A C reverse proxy in front of ``backend_url``: what one more hop costs without Python."""
    host_port = backend_url.removeprefix("http://").rstrip("/")
    return haproxy(root, "proxy", f"    default_backend replica\nbackend replica\n    server r {host_port}\n")


def fixed_table(state_dir: Path, backend_port: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    route = RouteEntry("fixed", "Production", 1, 1, "ready", time.time(),
                       replicas=(Replica(f"http://127.0.0.1:{backend_port}", "haproxy"),))
    write(table_path(state_dir), RouteTable(serial=1, published_at=time.time(), routes=(route,)))


def capacity(root: Path, script: Path, args: argparse.Namespace) -> dict:
    """What the gateway itself carries: haproxy with a fixed answer behind it, 1 vs 2 instances."""
    answer = json.dumps({"predictions": [0]}).encode()
    backend, backend_port = haproxy_backend(root, answer)
    try:
        fixed_table(root / "fixed", backend_port)
        one = Gateways(root / "fixed", 1)
        try:
            two = Gateways(root / "fixed", 2)
        except BaseException:
            one.stop()
            raise
        try:
            path = "/serve/fixed/Production/invocations"
            targets = {"direct (haproxy)": f"http://127.0.0.1:{backend_port}/invocations",
                       "gateway, 1 instance": f"http://127.0.0.1:{one.port}{path}",
                       "gateway, 2 instances": f"http://127.0.0.1:{two.port}{path}"}
            meters = {"gateway, 1 instance": lambda: cpu_seconds(one.process.pid),
                      "gateway, 2 instances": lambda: cpu_seconds(two.process.pid)}
            cells = side_by_side(targets, LEVELS, args.seconds, args.rounds, script, meters)
        finally:
            one.stop()
            two.stop()
    finally:
        backend.terminate()
    print("\nWhat the gateway carries (backend: haproxy with a fixed answer)")
    rows = []
    for c in LEVELS:
        direct_p50 = cells[(c, "direct (haproxy)")][1]
        one_rate = cells[(c, "gateway, 1 instance")][0]
        for name in targets:
            rate, p50, cores = cells[(c, name)]
            gw = not name.startswith("direct")
            rows.append([c, name, f"{rate:,.0f}", f"{p50:.2f}", f"{p50 - direct_p50:+.2f}" if gw else "",
                         f"{rate / one_rate:.2f}x" if gw else "", f"{cores:.2f}" if gw else "",
                         f"{cores / rate * 1e6:.0f}" if gw else ""])
    print_table(["concurrency", "target", "req/s", "p50 ms", "added p50 ms", "of 1 instance", "gateway cores",
                 "gateway CPU us/req"], rows)
    return {f"{c}/{n}": {"rps": r, "p50_ms": p, "gateway_cores": u} for (c, n), (r, p, u) in cells.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="Per wrk run.")
    parser.add_argument("--rounds", type=int, default=3, help="Runs per cell (the median is shown).")
    parser.add_argument("--capacity-only", action="store_true", help="Only the second table (haproxy backend).")
    args = parser.parse_args()
    require_tools()
    results: dict = {}
    if args.capacity_only:
        with tempfile.TemporaryDirectory() as tmp:
            results["capacity"] = capacity(Path(tmp), post_script(Path(tmp), ONE_ROW), args)
        print(f"\nfigures: {write_json('gateway_wrk_capacity', results)}")
        return
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        root = Path(tmp)
        script = post_script(root, ONE_ROW)
        mt.set_alias(stack.model, "Production", stack.versions[0])
        watcher = Watcher(stack.server.uri, root / "autoserve", [stack.model]).start()
        gateways: list[Gateways] = []
        try:
            endpoint = wait_for(lambda: (e := watcher.endpoints().get("Production")) and e["state"] == "ready" and e,
                                180, what="Production ready")
            path = f"/serve/{stack.model}/Production/invocations"
            two = Gateways(root / "autoserve", instances=2)
            gateways.append(two)
            proxy, proxy_port = haproxy_proxy(root, endpoint["url"])
            targets = {"direct": endpoint["url"] + "/invocations",
                       "haproxy in front (C proxy)": f"http://127.0.0.1:{proxy_port}/invocations",
                       "gateway, 1 instance": watcher.url + path,
                       "gateway, 2 instances": f"http://127.0.0.1:{two.port}{path}"}
            try:
                cells = side_by_side(targets, LEVELS, args.seconds, args.rounds, script)
            finally:
                proxy.terminate()
            rows = []
            for c in LEVELS:
                direct_rate, direct_p50, _ = cells[(c, "direct")]
                for name in targets:
                    rate, p50, _ = cells[(c, name)]
                    rows.append([c, name, f"{rate:,.0f}", f"{p50:.2f}",
                                 "" if name == "direct" else f"{rate / direct_rate:.0%}",
                                 "" if name == "direct" else f"{p50 - direct_p50:+.2f}"])
            print("\nGateway overhead, one replica of the iris model (wrk, median of "
                  f"{args.rounds} x {args.seconds:g} s, single-row requests)")
            print_table(["concurrency", "target", "req/s", "p50 ms", "of direct", "added p50 ms"], rows)
            results["overhead"] = {f"{c}/{n}": {"rps": r, "p50_ms": p} for (c, n), (r, p, _) in cells.items()}
        finally:
            for g in gateways:
                g.stop()
            watcher.stop()

        results["capacity"] = capacity(root, script, args)
    print(f"\nfigures: {write_json('gateway_wrk', results)}")


if __name__ == "__main__":
    main()
