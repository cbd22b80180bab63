"""Autoscaling: how fast replicas follow a load, and what the load sees meanwhile.

One served version starts with 1 replica (floor 1, ceiling 3, target 30 req/s per replica,
up window 3 s, cool-down 4 s). A client sends 80 req/s through the gateway; measured: from
the load's start to the third replica ready, and from the load's stop to one replica again,
with every request's outcome. Repeated per round on a fresh watcher.

    python -m benchmarks.bench_autoscale [--rounds 3] [--docker-image IMAGE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import ServingStack, print_table, write_json
from tests.harness import LoadClient, Watcher, wait_for

FLAGS = ["--max-replicas", "3", "--scale-target-rps", "30", "--scale-target-inflight", "0", "--scale-up-window", "3",
         "--scale-down-cooldown", "4"]
RATE = 80


def one_round(stack: ServingStack, root: Path, docker_image: str | None) -> dict:
    extra = ["--runtime", "docker", "--docker-image", docker_image] if docker_image else []
    root.mkdir(parents=True, exist_ok=True)
    watcher = Watcher(stack.server.uri, root / "state", [stack.model], "--aliases", "Production", *FLAGS,
                      *extra).start()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docker-image", help="Also measure the Docker runtime with this serving image.")
    args = parser.parse_args()
    runtimes = {"process": None, **({"docker": args.docker_image} if args.docker_image else {})}
    results = {}
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        for runtime, image in runtimes.items():
            results[runtime] = []
            for i in range(args.rounds):
                results[runtime].append(one_round(stack, Path(tmp) / f"{runtime}-{i}", image))
                print(f"{runtime} round {i + 1}: {results[runtime][-1]}", flush=True)
    rows = [[runtime, f"{statistics.median(r['up_s'] for r in rounds):.1f}",
             f"{statistics.median(r['down_s'] for r in rounds):.1f}", sum(r["failed"] for r in rounds),
             sum(r["sent"] for r in rounds)] for runtime, rounds in results.items()]
    print_table(["runtime", "load -> 3 replicas p50 s", "stop -> 1 replica p50 s", "failed", "sent"], rows)
    print(f"written {write_json('autoscale', {'rate': RATE, 'flags': FLAGS, 'results': results})}")


if __name__ == "__main__":
    main()
