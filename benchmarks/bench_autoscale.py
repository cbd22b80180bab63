"""Autoscaling: how fast replicas follow a load, and what the load sees meanwhile.

One served version starts with 1 replica (floor 1, ceiling 3, target 30 req/s per replica,
up window 3 s, cool-down 4 s). A client sends 80 req/s through the gateway; measured: from
the load's start to the third replica ready, and from the load's stop to one replica again,
with every request's outcome. Repeated per round on a fresh watcher.

    python -m benchmarks.bench_autoscale [--rounds 3] [--docker-image IMAGE] [--swarm-image IMAGE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import (
    Registry,
    ServingStack,
    log_iris_versions,
    print_table,
    write_json,
)
from tests.harness import LoadClient, Watcher, wait_for
from tests.swarm import swarm_stack

FLAGS = ["--max-replicas", "3", "--scale-target-rps", "30", "--scale-target-inflight", "0", "--scale-up-window", "3",
         "--scale-down-cooldown", "4"]
RATE = 80


def one_round(stack: ServingStack | Registry, root: Path, runtime_args: list[str]) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    watcher = Watcher(stack.uri, root / "state", [stack.model], "--aliases", "Production", *FLAGS,
                      *runtime_args).start()
    try:
        mt.set_alias(stack.model, "Production", stack.versions[0])
        ready = lambda n: watcher.endpoints().get("Production", {}).get("ready_replicas") == n  # noqa: E731
        wait_for(lambda: ready(1), 180, what="one replica")
        with LoadClient(watcher.port, f"/serve/{stack.model}/Production/invocations", rate=RATE) as load:
            started = time.monotonic()
            wait_for(lambda: ready(3), 300, interval=0.2, what="three replicas")
            up_s = time.monotonic() - started
            time.sleep(3)
        stopped = time.monotonic()
        wait_for(lambda: ready(1) and len(watcher.records()) in (0, 1), 120, interval=0.2, what="one replica again")
        down_s = time.monotonic() - stopped
        return {"up_s": up_s, "down_s": down_s, "sent": sum(load.codes.values()), "failed": load.failed}
    finally:
        watcher.stop()
        mt.delete_alias(stack.model, "Production")


def rounds(stack: ServingStack | Registry, root: Path, runtime: str, runtime_args: list[str], count: int) -> list[dict]:
    results = []
    for i in range(count):
        results.append(one_round(stack, root / f"{runtime}-{i}", runtime_args))
        print(f"{runtime} round {i + 1}: {results[-1]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docker-image", help="Also measure the Docker runtime with this serving image.")
    parser.add_argument("--swarm-image", help="Also measure a single-node Docker Swarm with this serving image.")
    args = parser.parse_args()
    runtimes = {"process": [], **({"docker": ["--runtime", "docker", "--docker-image", args.docker_image]}
                                  if args.docker_image else {})}
    results = {}
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        for runtime, runtime_args in runtimes.items():
            results[runtime] = rounds(stack, Path(tmp), runtime, runtime_args, args.rounds)
    if args.swarm_image:
        import docker

        with tempfile.TemporaryDirectory() as tmp, swarm_stack(docker.from_env(timeout=30), args.swarm_image) as swarm:
            registry = Registry(swarm.uri, "bench-iris", log_iris_versions(swarm.uri, "bench-iris", 1))
            results["swarm"] = rounds(registry, Path(tmp), "swarm", swarm.runtime_args(), args.rounds)
    rows = [[runtime, f"{statistics.median(r['up_s'] for r in rounds):.1f}",
             f"{statistics.median(r['down_s'] for r in rounds):.1f}", sum(r["failed"] for r in rounds),
             sum(r["sent"] for r in rounds)] for runtime, rounds in results.items()]
    print_table(["runtime", "load -> 3 replicas p50 s", "stop -> 1 replica p50 s", "failed", "sent"], rows)
    print(f"written {write_json('autoscale', {'rate': RATE, 'flags': FLAGS, 'results': results})}")


if __name__ == "__main__":
    main()
