"""Gateway overhead and replicas: one deployment called directly, through the gateway with
one replica, and through the gateway with two replicas.

Same model, same client, same run, one after the other, at concurrency 1, 8 and 32. The
client, the gateway and the model servers share the machine's two cores, as they would on
a small host: a second replica adds a process, not a core, so here it buys availability
more than throughput. Goals: >= 90% of direct throughput, < 1 ms added p50.

    python -m benchmarks.bench_gateway [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import IRIS_SPLIT, ServingStack, Watcher, closed_loop, percentile, print_table, wait_for, write_json


def measure(url: str, concurrency: int, seconds: float) -> dict:
    body = json.dumps({"dataframe_split": {**IRIS_SPLIT["dataframe_split"], "data": IRIS_SPLIT["dataframe_split"]["data"][:1]}}).encode()
    asyncio.run(closed_loop(url, body, concurrency, 1.0))  # warm connections
    latencies, errors = asyncio.run(closed_loop(url, body, concurrency, seconds))
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()

    levels = [int(c) for c in args.concurrency.split(",")]
    cells: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        mt.set_alias(stack.model, "Production", stack.versions[0])
        for replicas in (1, 2):
            watcher = Watcher(stack.server.uri, Path(tmp) / f"autoserve-{replicas}", [stack.model],
                              "--replicas", str(replicas)).start()
            try:
                endpoint = wait_for(lambda: (e := watcher.endpoints().get("Production")) and e["state"] == "ready"
                                    and e["ready_replicas"] == replicas and e, 180)
                gateway = f"{watcher.url}/serve/{stack.model}/Production/invocations"
                if replicas == 1:
                    cells["direct"] = {c: measure(endpoint["url"] + "/invocations", c, args.seconds) for c in levels}
                cells[f"gateway, {replicas} replica{'s' if replicas > 1 else ''}"] = {
                    c: measure(gateway, c, args.seconds) for c in levels}
            finally:
                watcher.stop()
    rows, results = [], []
    for c in levels:
        direct = cells["direct"][c]
        for name, by_level in cells.items():
            m = by_level[c]
            results.append({"concurrency": c, "target": name, **m})
            rows.append([c, name, f"{m['rps']:.0f}", f"{100 * m['rps'] / direct['rps']:.0f}%", f"{m['p50_ms']:.2f}",
                         f"{m['p50_ms'] - direct['p50_ms']:+.2f}", f"{m['p99_ms']:.2f}", m["errors"]])
    print(f"\nDirect vs gateway with 1 and 2 replicas (1 worker each), single-row requests, {args.seconds:.0f} s per cell")
    print_table(["conc", "target", "rps", "vs direct", "p50 ms", "added p50", "p99 ms", "errors"], rows)
    print(f"written {write_json('bench_gateway', {'seconds': args.seconds, 'results': results})}")


if __name__ == "__main__":
    main()
