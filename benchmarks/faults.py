"""Fault suite: what each failure costs clients of the gateway.

Two replicas per version, a closed-loop client through the gateway (one request at a time,
back to back). For every fault: requests sent, failed, and the time from the fault to the
first good answer after the last failure.

    python -m benchmarks.faults [--outage 60] [--hang 30] [--request-timeout 5]
                                [--docker-image IMAGE] [--swarm-image IMAGE]

With ``--docker-image IMAGE`` (see ``make images``) a Docker-runtime watcher also runs and
the Docker daemon is restarted under load (root; systemd's ``docker`` service when it runs
one, else the running ``dockerd`` is stopped and started again with its command line). The
daemon should run with live-restore (``{"live-restore": true}`` in /etc/docker/daemon.json).
With ``--swarm-image IMAGE`` the engine then becomes a single-node swarm (and is put back):
one task's container is killed, then the watcher, under load.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import ServingStack, log_iris_versions, print_table, write_json
from mlops_toolkit import http
from tests.harness import (
    LoadClient,
    Watcher,
    live_restore_enabled,
    restart_docker_daemon,
    wait_for,
)
from tests.swarm import swarm_stack

REPLICAS = 2


def recovery(client: LoadClient, since: float) -> float | None:
    """Seconds from ``since`` to the first 200 that follows the last failure after it."""
    failures = [t for t, code, _ in client.events if t >= since and code != "200"]
    start = failures[-1] if failures else since
    ok = next((t for t, code, _ in client.events if t > start and code == "200"), None)
    return (ok - since) if (ok and failures) else 0.0


def row(name: str, client: LoadClient, since: float, note: str = "") -> dict:
    codes = {c: n for c, n in client.codes.items() if c != "200"}
    return {"fault": name, "sent": client.sent, "failed": client.failed, "recovery_s": recovery(client, since),
            "note": note + (f" (failures: {codes})" if codes else "")}


def replica_pids(watcher: Watcher, version: int) -> dict[int, int]:
    return {r.get("replica", 0): r["pid"] for r in watcher.records() if r["version"] == version}


def all_ready(watcher: Watcher, alias: str = "Production") -> bool:
    endpoint = watcher.endpoints().get(alias)
    return bool(endpoint) and endpoint["state"] == "ready" and endpoint["ready_replicas"] == REPLICAS


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def big_body(watcher: Watcher, path: str, megabytes: int = 200) -> dict:
    """POST a body announced as ``megabytes`` MB; the gateway should refuse it before reading."""
    pid = watcher.gateway_pid()
    before = rss_kb(pid)
    chunk = b"[" * (1024 * 1024)
    sock = socket.create_connection(("127.0.0.1", watcher.port), timeout=30)
    started = time.monotonic()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {megabytes * 1024 * 1024}\r\n\r\n".encode())
    sent = 0
    sock.setblocking(False)
    reply = b""
    while time.monotonic() - started < 60 and not reply:  # keep sending until the gateway answers
        try:
            sent += sock.send(chunk)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = sock.recv(4096)
        except BlockingIOError:
            time.sleep(0.001)
    seconds = time.monotonic() - started
    sock.close()
    status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/") else "none"
    return {"fault": f"{megabytes} MB body", "sent": 1, "failed": 0 if status == "413" else 1, "recovery_s": None,
            "note": f"HTTP {status} after {seconds:.2f} s, {sent / 1e6:.0f} MB sent by then; gateway RSS "
                    f"{before / 1024:.0f} -> {rss_kb(pid) / 1024:.0f} MB"}


def watcher_killed(watcher: Watcher, path: str) -> tuple[LoadClient, float]:
    """The watcher ``kill -9``ed under load and started again 10 s later: the load, and when."""
    with LoadClient(watcher.port, path) as load:
        time.sleep(2)
        killed = time.monotonic()
        watcher.stop(signal.SIGKILL)
        time.sleep(10)
        watcher.start()
        wait_for(lambda: all_ready(watcher), 60, what="adopted")
        time.sleep(2)
    return load, killed


def docker_daemon_fault(stack: ServingStack, root: Path, image: str, version: int) -> dict:
    watcher = Watcher(stack.server.uri, root / "docker", [stack.model], "--runtime", "docker", "--docker-image", image,
                      "--replicas", str(REPLICAS), poll_interval=2.0).start()
    try:
        wait_for(lambda: all_ready(watcher), 180, what="docker replicas ready")
        with LoadClient(watcher.port, f"/serve/{stack.model}/Production/invocations") as load:
            time.sleep(2)
            restarted = time.monotonic()
            restart_docker_daemon()
            wait_for(lambda: all_ready(watcher), 180, what="serving again")
            time.sleep(2)
        live = "live-restore on" if live_restore_enabled() else "live-restore OFF"
        return row("Docker daemon restarted", load, restarted, f"{live}; containers kept running")
    finally:
        watcher.stop()


CLIENTS = 4  # closed-loop clients: their connections spread over the gateway instances


def instance_pids(watcher: Watcher, instances: int) -> list[int | None]:
    """The pid each gateway instance reports on its admin port (instance i: admin port + i)."""
    pids = []
    for i in range(instances):
        data = http.get_json(f"http://127.0.0.1:{watcher.admin_port + i}/health", timeout=1)
        pids.append(data.get("pid") if isinstance(data, dict) else None)
    return pids


def several(watcher: Watcher, path: str, retry_reset: bool) -> list[LoadClient]:
    return [LoadClient(watcher.port, path, retry_reset=retry_reset) for _ in range(CLIENTS)]


def merged_row(name: str, clients: list[LoadClient], since: float, note: str) -> dict:
    codes: dict[str, int] = {}
    for c in clients:
        for code, n in c.codes.items():
            if code != "200":
                codes[code] = codes.get(code, 0) + n
    recoveries = [r for r in (recovery(c, since) for c in clients) if r is not None]
    return {"fault": name, "sent": sum(c.sent for c in clients), "failed": sum(c.failed for c in clients),
            "recovery_s": max(recoveries) if recoveries else None,
            "note": note + (f" (failures: {codes})" if codes else "")}


def gateway_faults(stack: ServingStack, root: Path, good: int) -> list[dict]:
    """The gateway itself failing: one of two instances killed, a rolling restart of both,
    and the only instance killed (the watcher starts it again)."""
    results = []
    path = f"/serve/{stack.model}/Production/invocations"
    two = Watcher(stack.server.uri, root / "autoserve-gw2", [stack.model], "--replicas", str(REPLICAS),
                  "--gateway-instances", "2").start()
    try:
        wait_for(lambda: all_ready(two), 180, what="two replicas ready")
        wait_for(lambda: all(instance_pids(two, 2)), 30, what="both gateway instances")
        for retry in (False, True):
            clients = several(two, path, retry)
            for c in clients:
                c.__enter__()
            time.sleep(2)
            killed = time.monotonic()
            victim = instance_pids(two, 2)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda v=victim: (p := instance_pids(two, 2)[0]) and p != v, 10, what="instance restarted")
            back = time.monotonic() - killed
            time.sleep(2)
            for c in clients:
                c.__exit__(None, None, None)
            who = "a client that retries a reset connection once" if retry else "clients that do not retry"
            retried = sum(c.retried for c in clients)
            results.append(merged_row(f"one of 2 gateway instances kill -9 ({who})", clients, killed,
                                      f"the other instance keeps serving; the dead one back after {back:.2f} s"
                                      + (f"; {retried} requests sent again" if retry else "")))
        clients = several(two, path, False)
        for c in clients:
            c.__enter__()
        time.sleep(2)
        started = time.monotonic()
        for i in range(2):
            old = instance_pids(two, 2)[i]
            os.kill(old, signal.SIGTERM)
            wait_for(lambda i=i, o=old: (p := instance_pids(two, 2)[i]) and p != o, 15, what=f"instance {i} back")
            time.sleep(1)
        took = time.monotonic() - started
        time.sleep(2)
        for c in clients:
            c.__exit__(None, None, None)
        results.append(merged_row("rolling restart of 2 gateway instances (SIGTERM one by one)", clients, started,
                                  f"each drains: answers in flight with Connection: close; {took:.1f} s in all"))
    finally:
        two.stop()
    one = Watcher(stack.server.uri, root / "autoserve-gw1", [stack.model], "--replicas", str(REPLICAS)).start()
    try:
        wait_for(lambda: all_ready(one), 180, what="two replicas ready")
        with LoadClient(one.port, path) as load:
            time.sleep(2)
            killed = time.monotonic()
            os.kill(one.gateway_pid(), signal.SIGKILL)
            wait_for(lambda: any(t > killed and code != "200" for t, code, _ in load.events)
                     and load.events[-1][1] == "200", 30, what="serving again")
            time.sleep(2)
        again = recovery(load, killed)  # the first answer after the last failure
        results.append(row("the only gateway kill -9 (1 instance)", load, killed,
                           f"the watcher starts it again: answering {again:.2f} s after the kill; the failures "
                           "are refused connections the client retried at once"))
    finally:
        one.stop()
    return results


def swarm_faults(image: str) -> list[dict]:
    """One task's container killed, and the watcher killed, on a single-node Docker Swarm."""
    import docker

    client = docker.from_env(timeout=30)
    results = []
    with tempfile.TemporaryDirectory() as tmp, swarm_stack(client, image) as stack:
        model = "bench-iris"
        [version] = log_iris_versions(stack.uri, model, 1)
        mt.set_alias(model, "Production", version)
        watcher = stack.watcher(Path(tmp) / "swarm", [model], "--replicas", str(REPLICAS), poll_interval=2.0).start()
        path = f"/serve/{model}/Production/invocations"
        try:
            wait_for(lambda: all_ready(watcher), 180, what="two swarm tasks ready")
            [service] = stack.services()
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                killed = time.monotonic()
                task = stack.running_tasks(service)[0]
                client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"]).kill()
                wait_for(lambda: task["ID"] not in {t["ID"] for t in stack.running_tasks(service)} and all_ready(watcher),
                         120, what="task replaced")
                time.sleep(2)
            results.append(row("Swarm: one task killed (kill -9)", load, killed,
                               "the other task answers; Swarm starts a new task"))
            load, killed = watcher_killed(watcher, path)
            same = "service adopted, not recreated" if [s.id for s in stack.services()] == [service.id] else "RECREATED"
            results.append(row("Swarm: watcher kill -9, restarted 10 s later", load, killed, same))
        finally:
            watcher.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="Seconds the tracking server stays down.")
    parser.add_argument("--hang", type=float, default=30.0, help="Seconds one replica stays SIGSTOPped.")
    parser.add_argument("--request-timeout", type=float, default=5.0, help="The gateway's --request-timeout.")
    parser.add_argument("--docker-image", help="Serving image: also restart the Docker daemon under load.")
    parser.add_argument("--swarm-image", help="Serving image: also kill a task and the watcher on a single-node "
                        "Docker Swarm (the engine is switched to swarm mode and back).")
    parser.add_argument("--gateway-only", action="store_true", help="Only the gateway's own faults (instances).")
    args = parser.parse_args()
    results = []
    if args.gateway_only:
        with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
            mt.set_alias(stack.model, "Production", stack.versions[0])
            results = gateway_faults(stack, Path(tmp), stack.versions[0])
        print_table(["fault", "sent", "failed", "recovery s", "note"],
                    [[r["fault"], r["sent"], r["failed"], f"{r['recovery_s']:.2f}" if r["recovery_s"] is not None
                      else "-", r["note"]] for r in results])
        print(f"written {write_json('faults_gateway', {'replicas': REPLICAS, 'results': results})}")
        return
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=2) as stack:
        from mlflow import MlflowClient

        client = MlflowClient(stack.server.uri, registry_uri=stack.server.uri)
        run = client.create_run(client.get_experiment_by_name("bench").experiment_id)
        broken = int(client.create_model_version(stack.model, source=f"{run.info.artifact_uri}/missing",
                                                 run_id=run.info.run_id).version)
        good, other = stack.versions
        mt.set_alias(stack.model, "Production", good)
        watcher = Watcher(stack.server.uri, Path(tmp) / "autoserve", [stack.model], "--replicas", str(REPLICAS),
                          "--request-timeout", str(args.request_timeout), poll_interval=2.0).start()
        path = f"/serve/{stack.model}/Production/invocations"
        try:
            wait_for(lambda: all_ready(watcher), 180, what="two replicas ready")

            # 1. one replica killed under load
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                killed = time.monotonic()
                os.killpg(replica_pids(watcher, good)[0], signal.SIGKILL)  # the one a lone client uses
                wait_for(lambda: all_ready(watcher), 120, what="replica restarted")
                time.sleep(2)
            results.append(row("one replica killed (kill -9)", load, killed, "the other replica answers; retried once"))

            # 2. one replica hung (SIGSTOP) under load
            pid = replica_pids(watcher, good)[0]
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                hung = time.monotonic()
                os.killpg(pid, signal.SIGSTOP)
                time.sleep(args.hang)
                os.killpg(pid, signal.SIGCONT)
                wait_for(lambda: all_ready(watcher), 60, what="re-admitted")
                time.sleep(2)
            results.append(row(f"one replica hung (SIGSTOP {args.hang:.0f} s)", load, hung,
                               f"504 after {args.request_timeout:.0f} s for what was in flight, then ejected"))

            # 3. the watcher killed, restarted 10 s later
            gateway_pid = watcher.gateway_pid()
            load, killed = watcher_killed(watcher, path)
            same = "gateway kept running, reused" if watcher.gateway_pid() == gateway_pid else "gateway was replaced"
            results.append(row("watcher kill -9, restarted 10 s later", load, killed, same))

            # 4. tracking server down under load
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                down = time.monotonic()
                stack.server.stop()
                time.sleep(args.outage)
                stack.server.start()
                wait_for(lambda: "registry reachable again" in watcher.log_tail(400), 120)
                back = time.monotonic() - down - args.outage
            results.append({**row(f"tracking server down {args.outage:.0f} s", load, down),
                            "note": f"watcher re-read the registry {back:.1f} s after the server returned"})

            # 5. a broken version promoted under load
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                promoted = time.monotonic()
                mt.set_alias(stack.model, "Production", broken)
                wait_for(lambda: watcher.endpoints()["Production"]["state"] == "failed", 120)
                time.sleep(5)
            results.append(row("broken version promoted", load, promoted, "old version kept serving"))
            mt.set_alias(stack.model, "Production", good)
            wait_for(lambda: all_ready(watcher), 60)

            # 6. an alias move (blue/green to two new replicas) under load
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                moved = time.monotonic()
                mt.set_alias(stack.model, "Production", other)
                wait_for(lambda: load.versions.get(str(other), 0) > 20, 180, what=f"v{other} answering")
            results.append(row("alias move (blue/green)", load, moved, "route moves once both new replicas answer"))

            # 7. a 200 MB body
            results.append(big_body(watcher, path))
        finally:
            watcher.stop()
        results += gateway_faults(stack, Path(tmp), good)
        if args.docker_image:
            results.append(docker_daemon_fault(stack, Path(tmp), args.docker_image, good))
    if not args.docker_image:
        results.append({"fault": "Docker daemon restarted", "sent": None, "failed": None, "recovery_s": None,
                        "note": "not run: pass --docker-image"})
    if args.swarm_image:
        results += swarm_faults(args.swarm_image)
    print(f"\nFault suite ({REPLICAS} replicas; closed-loop client through the gateway)")
    print_table(["fault", "sent", "failed", "recovery s", "note"],
                [[r["fault"], r["sent"] if r["sent"] is not None else "-", r["failed"] if r["failed"] is not None else "-",
                  f"{r['recovery_s']:.1f}" if r["recovery_s"] is not None else "-", r["note"]] for r in results])
    print(f"written {write_json('faults', {'outage_s': args.outage, 'replicas': REPLICAS, 'results': results})}")


if __name__ == "__main__":
    main()
