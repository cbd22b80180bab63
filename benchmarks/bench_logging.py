"""Logging one run (50 params, 100 metrics, a registered sklearn model): toolkit vs plain MLflow.

Both ways run against the same local tracking server in the same process, alternating,
behind a counting proxy, so time and HTTP requests are measured, not estimated.

Plain MLflow baseline: ``mlflow.log_params`` (already batched), one ``mlflow.log_metric``
per metric, and ``mlflow.sklearn.log_model`` with its default requirements inference.

    python -m benchmarks.bench_logging [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import mlops_toolkit as mt
from benchmarks.support import print_table, write_json
from mlops_toolkit.ops.local_server import LocalMlflowServer
from tests.harness import CountingProxy

PARAMS = {f"param_{i}": i for i in range(50)}
METRICS = {f"metric_{i}": i / 100 for i in range(100)}


def toolkit_way(model, X, name: str) -> None:
    with mt.start_run("toolkit", params=PARAMS) as run:
        run.log_metrics(METRICS)
        run.log_model(model, register_as=name, input_example=X[:5])


def plain_way(model, X, name: str) -> None:
    with mlflow.start_run(run_name="plain"):
        mlflow.log_params(PARAMS)
        for key, value in METRICS.items():
            mlflow.log_metric(key, value)
        mlflow.sklearn.log_model(model, name="model", input_example=X[:5], registered_model_name=name)


def measure(fn, proxy: CountingProxy, *args) -> tuple[float, int]:
    proxy.reset()
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started, proxy.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=300).fit(X, y)
    with tempfile.TemporaryDirectory() as tmp, LocalMlflowServer(
        backend_store_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}", artifacts_dir=Path(tmp) / "artifacts"
    ) as server, CountingProxy("127.0.0.1", server.port) as proxy:
        mt.configure(tracking_uri=proxy.uri, experiment="bench-logging")
        mlflow.set_experiment("bench-logging")
        suffix = uuid.uuid4().hex[:6]
        results: dict[str, list[tuple[float, int]]] = {"toolkit": [], "plain mlflow": []}
        measure(toolkit_way, proxy, model, X, f"warmup-{suffix}")  # imports, experiment creation
        for _ in range(args.repeat):
            results["plain mlflow"].append(measure(plain_way, proxy, model, X, f"plain-{suffix}"))
            results["toolkit"].append(measure(toolkit_way, proxy, model, X, f"toolkit-{suffix}"))

    summary = {
        way: {
            "median_seconds": statistics.median(t for t, _ in runs),
            "requests": statistics.median(n for _, n in runs),
            "seconds": [round(t, 3) for t, _ in runs],
        }
        for way, runs in results.items()
    }
    base, ours = summary["plain mlflow"], summary["toolkit"]
    print(f"\nLogging one run: 50 params, 100 metrics, registered sklearn model; median of {args.repeat}")
    print_table(
        ["way", "seconds", "HTTP requests"],
        [[way, f"{s['median_seconds']:.2f}", s["requests"]] for way, s in summary.items()],
    )
    print(
        f"toolkit vs plain: {base['median_seconds'] / ours['median_seconds']:.1f}x faster, "
        f"{base['requests'] / ours['requests']:.1f}x fewer requests"
    )
    path = write_json("bench_logging", {"repeat": args.repeat, "results": summary})
    print(f"written {path}")


if __name__ == "__main__":
    main()
