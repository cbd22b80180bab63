"""Shadow overhead: what a 100% shadow costs the callers of the alias it mirrors.

One watcher, `Production` on v1 and `challenger` on v2 of the same model (1 replica, 1
worker each). The callers' latency and throughput through the gateway with no shadow and
with `challenger` shadowing 100% of `Production`, taking turns in short rounds so that
the machine's drift hits both alike. The copies share the machine's two cores with
everything else, so under load they compete for CPU: that is the honest cost here.

    python -m benchmarks.bench_shadow [--seconds 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import (
    ServingStack,
    closed_loop,
    print_table,
    side_by_side,
    write_json,
)
from tests.harness import IRIS_SPLIT, Watcher, wait_for


def shadow_counts(watcher: Watcher) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in watcher.metrics_text().splitlines():
        if line.startswith("autoserve_shadow_requests_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = counts.get(result, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Per cell, split over the rounds.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    body = json.dumps({"dataframe_split": {**IRIS_SPLIT["dataframe_split"],
                                           "data": IRIS_SPLIT["dataframe_split"]["data"][:1]}}).encode()
    levels = [int(c) for c in args.concurrency.split(",")]
    cells: dict[tuple[int, str], tuple[list[float], int]] = {}
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=2) as stack:
        model, (v1, v2) = stack.model, stack.versions
        mt.set_alias(model, "Production", v1)
        mt.set_alias(model, "challenger", v2)
        watcher = Watcher(stack.server.uri, Path(tmp) / "autoserve", [model], poll_interval=0.5).start()
        try:
            for alias, version in (("Production", v1), ("challenger", v2)):
                wait_for(lambda a=alias, v=version: watcher.endpoint_ready(a, v), 180, what=f"{alias} ready")
            url = f"{watcher.url}/serve/{model}/Production/invocations"

            def shadow(on: bool) -> None:
                if on:
                    mt.set_shadow(model, "challenger", percent=100)
                elif mt.list_shadows(model):
                    mt.clear_shadow(model)
                wait_for(lambda: bool(watcher.endpoints()["Production"].get("shadow")) == on, 10, what=f"shadow {on}")
                time.sleep(0.5)  # queued copies of the previous turn drain

            for c in levels:
                for _ in range(args.rounds):
                    for name, on in (("no shadow", False), ("shadow 100%", True)):
                        shadow(on)
                        asyncio.run(closed_loop(url, body, c, 0.5))
                        latencies, errors = asyncio.run(closed_loop(url, body, c, args.seconds / args.rounds))
                        done, failed = cells.get((c, name), ([], 0))
                        cells[(c, name)] = (done + latencies, failed + errors)
            shadow(False)
            copies = shadow_counts(watcher)
        finally:
            watcher.stop()
    rows, results = side_by_side(cells, levels, ["no shadow", "shadow 100%"], args.seconds)
    print(f"\nCallers of Production with and without a 100% shadow, {args.seconds:.0f} s per cell in "
          f"{args.rounds} turns; shadow copies by result: {copies}")
    print_table(["conc", "mode", "rps", "p50 ms", "added p50", "p99 ms", "caller errors"], rows)
    print(f"written {write_json('bench_shadow', {'seconds': args.seconds, 'copies': copies, 'results': results})}")


if __name__ == "__main__":
    main()
