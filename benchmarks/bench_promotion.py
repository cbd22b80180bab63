"""Promotion: alias call -> new version answering, and requests lost, under continuous load.

Four watcher configurations in the same run, against the same MLflow server and model:
blue-green vs recreate (stop old, then start new), each with poll-only (every 10 s) and
with the webhook fast path (real MLflow registry webhook deliveries, signed). Two clients
run through every switch: closed loop (back to back) and fixed rate (20 req/s).

    python -m benchmarks.bench_promotion [--switches 3] [--docker-image IMAGE] [--swarm-image IMAGE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlops_autoserve.watcher import webhook

import mlops_toolkit as mt
from benchmarks.support import (
    Registry,
    ServingStack,
    log_iris_versions,
    percentile,
    print_table,
    write_json,
)
from mlops_toolkit.ops.processes import free_port
from tests.harness import LoadClient, Watcher, wait_for
from tests.swarm import swarm_stack

SECRET = "bench-webhook-secret"
CONFIGS = [("blue-green", "poll"), ("blue-green", "webhook"), ("recreate", "poll"), ("recreate", "webhook")]


def run_config(stack: ServingStack | Registry, root: Path, strategy: str, trigger: str, webhook_port: int,
               switches: int, runtime: str = "process", runtime_args: tuple[str, ...] = ()) -> dict:
    mt.set_alias(stack.model, "Production", stack.versions[0])
    extra = ["--strategy", strategy, *runtime_args]
    watcher = Watcher(stack.uri, root / f"{strategy}-{trigger}-{runtime}", [stack.model], *extra,
                      poll_interval=10.0, secret=SECRET if trigger == "webhook" else None,
                      watcher_port=webhook_port if trigger == "webhook" else None).start()
    latencies, lost_closed, lost_rate = [], [], []
    try:
        wait_for(lambda: watcher.endpoint_ready("Production", stack.versions[0]), 120)
        path = f"/serve/{stack.model}/Production/invocations"
        with LoadClient(watcher.port, path) as closed, LoadClient(watcher.port, path, rate=20) as paced:
            time.sleep(1)
            for i in range(switches):
                target = stack.versions[(i + 1) % len(stack.versions)]
                called = time.monotonic()
                mt.set_alias(stack.model, "Production", target)
                answered = wait_for(lambda: closed.first_answer(target, called), 180, interval=0.05)
                latencies.append(answered - called)
                time.sleep(3)  # let the old deployment drain and stop before the next move
                window_end = time.monotonic()
                lost_closed.append(closed.failures_between(called, window_end))
                lost_rate.append(paced.failures_between(called, window_end))
        sent = closed.sent + paced.sent
    finally:
        watcher.stop()
    return {
        "runtime": runtime, "strategy": strategy, "trigger": trigger, "switches": switches, "seconds": latencies,
        "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 95),
        "failed_closed_loop": sum(lost_closed), "failed_fixed_rate": sum(lost_rate), "requests_sent": sent,
        "failed_per_switch": [c + r for c, r in zip(lost_closed, lost_rate)],
    }


def swarm_config(image: str, switches: int) -> dict:
    """Blue/green on the Swarm runtime: the registry is an MLflow server on the swarm's
    network (tasks cannot reach the host's loopback), so the alias moves are polled, not
    pushed by webhook."""
    import docker

    client = docker.from_env(timeout=30)
    with tempfile.TemporaryDirectory() as tmp, swarm_stack(client, image) as stack:
        registry = Registry(stack.uri, "bench-iris", log_iris_versions(stack.uri, "bench-iris", 3))
        return run_config(registry, Path(tmp), "blue-green", "poll", 0, switches, "swarm", tuple(stack.runtime_args()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=3)
    parser.add_argument("--docker-image", help="Also run blue-green on the Docker runtime with this serving image.")
    parser.add_argument("--swarm-image", help="Also run blue-green (poll) on a single-node Docker Swarm with this "
                        "serving image (root: the engine is switched to swarm mode and back).")
    parser.add_argument("--only-docker", action="store_true", help="Skip the process-runtime configurations.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=3, webhooks=True) as stack:
        webhook_port = free_port()
        # Registered before any alias event: MLflow caches the webhook list for 60 s per worker.
        webhook.register(stack.server.uri, f"http://127.0.0.1:{webhook_port}/webhooks/mlflow", SECRET)
        results = [] if args.only_docker else [
            run_config(stack, Path(tmp), s, t, webhook_port, args.switches) for s, t in CONFIGS
        ]
        if args.docker_image:
            docker = ("--runtime", "docker", "--docker-image", args.docker_image)
            results += [run_config(stack, Path(tmp), "blue-green", t, webhook_port, args.switches, "docker", docker)
                        for t in ("poll", "webhook")]
    if args.swarm_image:
        results.append(swarm_config(args.swarm_image, args.switches))
    print(f"\nAlias moved {args.switches} times per configuration under load (closed loop + 20 req/s)")
    print_table(
        ["runtime", "strategy", "trigger", "alias->serving p50 s", "p95 s", "failed (closed)", "failed (20/s)", "sent"],
        [[r["runtime"], r["strategy"], r["trigger"], f"{r['p50_s']:.1f}", f"{r['p95_s']:.1f}", r["failed_closed_loop"],
          r["failed_fixed_rate"], r["requests_sent"]] for r in results],
    )
    print(f"written {write_json('bench_promotion', {'switches': args.switches, 'results': results})}")


if __name__ == "__main__":
    main()
