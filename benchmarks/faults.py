"""Fault suite: what each failure costs clients of the gateway (and of a deployment directly).

Each fault runs under a closed-loop client through the gateway; the watcher restart also
runs one straight against the deployment. For every fault: requests sent, failed, and the
time from the fault to the first good answer after it.

    python -m benchmarks.faults [--outage 60]

With ``--docker-image IMAGE`` (see ``make images``) a fifth fault runs a Docker-runtime
watcher and restarts the Docker daemon under load (root; systemd's ``docker`` service when
it runs one, else the running ``dockerd`` is stopped and started again with its command line).
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import (
    LoadClient, ServingStack, Watcher, print_table, restart_docker_daemon, wait_for, write_json,
)


def recovery(client: LoadClient, since: float) -> float | None:
    """Seconds from ``since`` to the first 200 that follows the last failure after it."""
    failures = [t for t, code, _ in client.events if t >= since and code != "200"]
    start = failures[-1] if failures else since
    ok = next((t for t, code, _ in client.events if t > start and code == "200"), None)
    return (ok - since) if (ok and failures) else 0.0


def row(name: str, client: LoadClient, since: float, note: str = "") -> dict:
    return {"fault": name, "sent": client.sent, "failed": client.failed, "recovery_s": recovery(client, since), "note": note}


def docker_daemon_fault(stack: ServingStack, root: Path, image: str, version: int) -> dict:
    watcher = Watcher(stack.server.uri, root / "docker", [stack.model], "--runtime", "docker", "--docker-image", image,
                      poll_interval=2.0).start()
    try:
        wait_for(lambda: watcher.endpoint_ready("Production", version), 120)
        with LoadClient(watcher.port, f"/serve/{stack.model}/Production/invocations") as load:
            time.sleep(2)
            restarted = time.monotonic()
            restart_docker_daemon()
            wait_for(lambda: load.first_answer(version, time.monotonic() - 0.5), 180, what="serving again")
            time.sleep(2)
        return row("Docker daemon restarted", load, restarted, "containers come back by policy or are replaced")
    finally:
        watcher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="Seconds the tracking server stays down.")
    parser.add_argument("--docker-image", help="Serving image: also restart the Docker daemon under load.")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=2) as stack:
        from mlflow import MlflowClient

        client = MlflowClient(stack.server.uri, registry_uri=stack.server.uri)
        run = client.create_run(client.get_experiment_by_name("bench").experiment_id)
        broken = int(client.create_model_version(stack.model, source=f"{run.info.artifact_uri}/missing",
                                                 run_id=run.info.run_id).version)
        good = stack.versions[0]
        mt.set_alias(stack.model, "Production", good)
        watcher = Watcher(stack.server.uri, Path(tmp) / "autoserve", [stack.model], poll_interval=2.0).start()
        path = f"/serve/{stack.model}/Production/invocations"
        try:
            wait_for(lambda: watcher.endpoint_ready("Production", good), 120)

            # 1. a deployment killed under load
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                pid = next(r["pid"] for r in watcher.records() if r["version"] == good)
                killed = time.monotonic()
                os.killpg(pid, signal.SIGKILL)
                wait_for(lambda: watcher.endpoint_ready("Production", good) and load.first_answer(good, killed + 0.5), 120)
                time.sleep(2)
            results.append(row("deployment killed (kill -9)", load, killed, "single replica: down until restarted"))

            # 2. tracking server down under load
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

            # 3. a broken version promoted under load
            with LoadClient(watcher.port, path) as load:
                time.sleep(2)
                promoted = time.monotonic()
                mt.set_alias(stack.model, "Production", broken)
                wait_for(lambda: watcher.endpoints()["Production"]["state"] == "failed", 120)
                time.sleep(5)
            results.append(row("broken version promoted", load, promoted, "old version kept serving"))
            mt.set_alias(stack.model, "Production", good)
            wait_for(lambda: watcher.endpoint_ready("Production", good), 60)

            # 4. the watcher killed and restarted under load (gateway lives in the watcher)
            direct = watcher.endpoints()["Production"]["url"]
            direct_port = int(direct.rsplit(":", 1)[1])
            with LoadClient(watcher.port, path) as load, LoadClient(direct_port, "/invocations") as straight:
                time.sleep(2)
                killed = time.monotonic()
                watcher.stop(signal.SIGKILL)
                time.sleep(1)
                watcher.start()
                wait_for(lambda: watcher.endpoint_ready("Production", good), 60)
                time.sleep(2)
            results.append(row("watcher killed + restarted (gateway)", load, killed, "gateway is down while the watcher is"))
            results.append(row("watcher killed + restarted (direct)", straight, killed, "deployment untouched, adopted"))
        finally:
            watcher.stop()
        if args.docker_image:
            results.append(docker_daemon_fault(stack, Path(tmp), args.docker_image, good))
    if not args.docker_image:
        results.append({"fault": "Docker daemon restarted", "sent": None, "failed": None, "recovery_s": None,
                        "note": "not run: pass --docker-image"})
    print("\nFault suite (closed-loop client through the gateway unless noted)")
    print_table(["fault", "sent", "failed", "recovery s", "note"],
                [[r["fault"], r["sent"] if r["sent"] is not None else "-", r["failed"] if r["failed"] is not None else "-",
                  f"{r['recovery_s']:.1f}" if r["recovery_s"] is not None else "-", r["note"]] for r in results])
    print(f"written {write_json('faults', {'outage_s': args.outage, 'results': results})}")


if __name__ == "__main__":
    main()
