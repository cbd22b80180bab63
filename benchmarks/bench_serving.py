"""Serving throughput: one ``mlflow models serve`` deployment vs in-process ``predict`` (the ceiling).

For 1 and 2 uvicorn workers and 1, 100 and 10,000 rows per request: rows per second at
concurrency 1 and 4, and p50 latency at concurrency 1 (extra uvicorn workers cost every
keep-alive request ~44 ms on the 2-core dev machine). Deployments are started by autoserve's process runtime.

    python -m benchmarks.bench_serving [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.runtime.base import DeploymentKey, Health
from mlops_autoserve.watcher.runtime.process import ProcessRuntime

from benchmarks.support import (
    ServingStack,
    closed_loop,
    percentile,
    print_table,
    write_json,
)
from mlops_toolkit.batch.training import load_iris_split
from tests.harness import wait_for

ROWS = (1, 100, 10_000)


def frame(rows: int) -> pd.DataFrame:
    X_train, *_ = load_iris_split()
    return pd.concat([X_train] * (rows // len(X_train) + 1), ignore_index=True).head(rows)


def in_process(model_uri: str, rows: int, seconds: float) -> dict:
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    data = frame(rows)
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        model.predict(data)
        latencies.append(time.perf_counter() - started)
    return {"rows_per_s": rows * len(latencies) / seconds, "p50_ms": percentile(latencies, 50) * 1000}


def over_http(url: str, rows: int, concurrency: int, seconds: float) -> dict:
    body = json.dumps({"dataframe_split": json.loads(frame(rows).to_json(orient="split", index=False))}).encode()
    asyncio.run(closed_loop(url, body, concurrency, 1.0))
    latencies, errors = asyncio.run(closed_loop(url, body, concurrency, seconds))
    return {"rows_per_s": rows * len(latencies) / seconds, "p50_ms": percentile(latencies, 50) * 1000, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    results, rows_out = [], []
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        key = DeploymentKey(stack.model, stack.versions[0])
        model_uri = f"models:/{stack.model}/{stack.versions[0]}"
        import os

        os.environ["MLFLOW_TRACKING_URI"] = stack.server.uri
        ceiling = {rows: in_process(model_uri, rows, args.seconds) for rows in ROWS}
        for workers in (1, 2):
            runtime = ProcessRuntime(AutoserveSettings(tracking_uri=stack.server.uri, workers=workers,
                                                       state_dir=Path(tmp) / f"w{workers}", port_range=(23100, 23199)))
            deployment = runtime.start(key)
            try:
                wait_for(lambda: runtime.health(deployment) is Health.READY, 120)
                for rows in ROWS:
                    c1 = over_http(deployment.url + "/invocations", rows, 1, args.seconds)
                    c4 = over_http(deployment.url + "/invocations", rows, 4, args.seconds)
                    results.append({"workers": workers, "rows": rows, "c1": c1, "c4": c4, "in_process": ceiling[rows]})
                    rows_out.append([workers, rows, f"{ceiling[rows]['rows_per_s']:.0f}", f"{c1['rows_per_s']:.0f}",
                                     f"{c4['rows_per_s']:.0f}", f"{100 * max(c1['rows_per_s'], c4['rows_per_s']) / ceiling[rows]['rows_per_s']:.0f}%",
                                     f"{ceiling[rows]['p50_ms']:.2f}", f"{c1['p50_ms']:.2f}", c1["errors"] + c4["errors"]])
            finally:
                runtime.stop(deployment)
    print(f"\nServing throughput (rows/s), {args.seconds:.0f} s per cell; client on the same cores")
    print_table(["workers", "rows/req", "in-process", "http c=1", "http c=4", "best vs ceiling",
                 "in-process p50 ms", "http c=1 p50 ms", "errors"], rows_out)
    print(f"written {write_json('bench_serving', {'seconds': args.seconds, 'results': results})}")


if __name__ == "__main__":
    main()
