"""Gateway overhead and replicas: one deployment called directly, through the gateway with
one replica, and through the gateway with two replicas.

Same model, same client, same run, at concurrency 1, 8 and 32; the three targets take turns
in short rounds so that the machine's drift hits each alike. The
client, the gateway and the model servers share the machine's two cores, as they would on
a small host: a second replica adds a process, not a core, so here it buys availability
more than throughput. Goals: >= 90% of direct throughput, < 1 ms added p50.

    python -m benchmarks.bench_gateway [--seconds 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import (
    ServingStack,
    closed_loop,
    percentile,
    print_table,
    write_json,
)
from tests.harness import IRIS_SPLIT, Watcher, wait_for


def measure(url: str, concurrency: int, seconds: float) -> tuple[list[float], int]:
    body = json.dumps({"dataframe_split": {**IRIS_SPLIT["dataframe_split"], "data": IRIS_SPLIT["dataframe_split"]["data"][:1]}}).encode()
    asyncio.run(closed_loop(url, body, concurrency, 0.5))  # warm connections
    return asyncio.run(closed_loop(url, body, concurrency, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Per cell, split over the rounds.")
    parser.add_argument("--rounds", type=int, default=5, help="Targets take turns this many times per cell.")
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        mt.set_alias(stack.model, "Production", stack.versions[0])
        watchers = {n: Watcher(stack.server.uri, Path(tmp) / f"autoserve-{n}", [stack.model], "--replicas", str(n)).start()
                    for n in (1, 2)}
        try:
            endpoints = {n: wait_for(lambda w=w, n=n: (e := w.endpoints().get("Production")) and e["state"] == "ready"
                                     and e["ready_replicas"] == n and e, 180) for n, w in watchers.items()}
            targets = {"direct": endpoints[1]["url"] + "/invocations"}
            for n, w in watchers.items():
                targets[f"gateway, {n} replica{'s' if n > 1 else ''}"] = f"{w.url}/serve/{stack.model}/Production/invocations"
            cells: dict[tuple[int, str], tuple[list[float], int]] = {}
            for c in levels:
                for _ in range(args.rounds):  # take turns: the machine's drift hits every target alike
                    for name, url in targets.items():
                        latencies, errors = measure(url, c, args.seconds / args.rounds)
                        done, failed = cells.get((c, name), ([], 0))
                        cells[(c, name)] = (done + latencies, failed + errors)
        finally:
            for w in watchers.values():
                w.stop()
    rows, results = [], []
    for c in levels:
        direct = _summary(*cells[(c, "direct")], args.seconds)
        for name in targets:
            m = _summary(*cells[(c, name)], args.seconds)
            results.append({"concurrency": c, "target": name, **m})
            rows.append([c, name, f"{m['rps']:.0f}", f"{100 * m['rps'] / direct['rps']:.0f}%", f"{m['p50_ms']:.2f}",
                         f"{m['p50_ms'] - direct['p50_ms']:+.2f}", f"{m['p99_ms']:.2f}", m["errors"]])
    print(f"\nDirect vs gateway with 1 and 2 replicas (1 worker each), single-row requests, {args.seconds:.0f} s per "
          f"cell in {args.rounds} turns")
    print_table(["conc", "target", "rps", "vs direct", "p50 ms", "added p50", "p99 ms", "errors"], rows)
    print(f"written {write_json('bench_gateway', {'seconds': args.seconds, 'rounds': args.rounds, 'results': results})}")


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
    return {"rps": len(latencies) / seconds, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "errors": errors}


if __name__ == "__main__":
    main()
