"""Gateway overhead: one deployment called directly vs through the autoserve gateway.

Same deployment, same client, same run, alternating, at concurrency 1, 8 and 32. The
client, the gateway and the model server share the machine's cores, as they would on a
small host. Goals (issue): >= 90% of direct throughput, < 1 ms added p50.

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

    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        mt.set_alias(stack.model, "Production", stack.versions[0])
        watcher = Watcher(stack.server.uri, Path(tmp) / "autoserve", [stack.model]).start()
        try:
            endpoint = wait_for(lambda: watcher.endpoint_ready("Production", stack.versions[0]), 120)
            direct = endpoint["url"] + "/invocations"
            gateway = f"{watcher.url}/serve/{stack.model}/Production/invocations"
            rows, results = [], []
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                d = measure(direct, concurrency, args.seconds)
                g = measure(gateway, concurrency, args.seconds)
                results.append({"concurrency": concurrency, "direct": d, "gateway": g})
                rows.append([concurrency, f"{d['rps']:.0f}", f"{g['rps']:.0f}", f"{100 * g['rps'] / d['rps']:.0f}%",
                             f"{d['p50_ms']:.2f}", f"{g['p50_ms']:.2f}", f"{g['p50_ms'] - d['p50_ms']:+.2f}",
                             f"{d['p99_ms']:.2f}", f"{g['p99_ms']:.2f}", d["errors"] + g["errors"]])
        finally:
            watcher.stop()
    print(f"\nGateway overhead, 1 deployment (1 worker), single-row requests, {args.seconds:.0f} s per cell")
    print_table(["conc", "direct rps", "gateway rps", "ratio", "direct p50 ms", "gw p50 ms", "added p50",
                 "direct p99 ms", "gw p99 ms", "errors"], rows)
    print(f"written {write_json('bench_gateway', {'seconds': args.seconds, 'results': results})}")


if __name__ == "__main__":
    main()
