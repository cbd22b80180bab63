"""What the Open Inference Protocol (V2) translation costs: the same gateway, the same
backend, ``POST /v2/models/{m}/infer`` against ``POST /serve/{m}/Production/invocations``,
1 and 100 rows of the iris columns, concurrency 1 and 8, by wrk (Debian package ``wrk``).

The backend is haproxy answering a fixed MLflow answer with as many predictions as rows
(Debian package ``haproxy``): no model time, so the difference is the gateway's
translation (request: V2 inputs to ``dataframe_split``; answer: ``predictions`` to V2
outputs), not a model server's noise. The metadata file is the one the watcher writes for
a real iris model's signature. A second table puts a real replica behind the watcher's
gateway (``mlflow models serve`` of the iris model; the metadata as the watcher publishes
it). Targets take turns; each figure is the median of ``--rounds``.

    python -m benchmarks.bench_v2 [--seconds 5] [--rounds 3] [--no-replica]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlops_autoserve.modelmeta import VersionMetadata, write_metadata
from mlops_autoserve.routetable import (
    Replica,
    RouteEntry,
    RouteTable,
    table_path,
    write,
)

from benchmarks.bench_gateway_wrk import (
    Gateways,
    haproxy_backend,
    post_script,
    require_tools,
    side_by_side,
)
from benchmarks.support import print_table, write_json
from tests.harness import IRIS_COLUMNS

ROWS = (1, 100)
LEVELS = (1, 8)


def iris_rows(n: int) -> list[list[float]]:
    base = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    return [base[i % 3] for i in range(n)]


def bodies(n: int) -> tuple[dict, dict]:
    """(the /invocations body, the V2 infer body) for ``n`` rows."""
    rows = iris_rows(n)
    split = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": rows}}
    v2 = {"inputs": [{"name": c, "shape": [n, 1], "datatype": "FP64", "data": [r[i] for r in rows]}
                     for i, c in enumerate(IRIS_COLUMNS)]}
    return split, v2


def measure(root: Path, base: str, model_for: dict[int, str], args: argparse.Namespace) -> dict:
    """Both targets side by side for every row count: {"rows/concurrency/target": figures}."""
    results = {}
    for n in ROWS:
        split, v2 = bodies(n)
        scripts = {"/invocations": post_script(root, split, f"split{n}"), "V2 infer": post_script(root, v2, f"v2{n}")}
        targets = {"/invocations": f"{base}/serve/{model_for[n]}/Production/invocations",
                   "V2 infer": f"{base}/v2/models/{model_for[n]}/infer"}
        cells = side_by_side(targets, LEVELS, args.seconds, args.rounds, scripts)  # taking turns
        results.update({f"{n}/{c}/{name}": {"rps": r, "p50_ms": p} for (c, name), (r, p, _) in cells.items()})
    return results


def table_rows(results: dict) -> list[list]:
    rows = []
    for n in ROWS:
        for c in LEVELS:
            plain, v2 = results[f"{n}/{c}//invocations"], results[f"{n}/{c}/V2 infer"]
            rows.append([n, c, f"{plain['rps']:,.0f}", f"{plain['p50_ms']:.2f}", f"{v2['rps']:,.0f}",
                         f"{v2['p50_ms']:.2f}", f"{v2['p50_ms'] - plain['p50_ms']:+.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Per wrk run.")
    parser.add_argument("--rounds", type=int, default=3, help="Runs per cell (the median is shown).")
    parser.add_argument("--no-replica", action="store_true", help="Only the fixed-answer backend.")
    args = parser.parse_args()
    require_tools()
    frame = pd.DataFrame(iris_rows(3), columns=IRIS_COLUMNS)
    signature = infer_signature(frame, np.array([0, 1, 2])).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "state"
        backends, routes = [], []
        for n in ROWS:
            answer = json.dumps({"predictions": [i % 3 for i in range(n)]}).encode()
            (root / f"b{n}").mkdir()
            process, port = haproxy_backend(root / f"b{n}", answer)
            backends.append(process)
            model = f"iris{n}"
            routes.append(RouteEntry(model, "Production", 1, 1, "ready", time.time(),
                                     replicas=(Replica(f"http://127.0.0.1:{port}", f"haproxy-{n}"),)))
            write_metadata(state, VersionMetadata(model, 1, None, ("python_function",), signature))
        state.mkdir(parents=True, exist_ok=True)
        write(table_path(state), RouteTable(serial=1, published_at=time.time(), routes=tuple(routes)))
        gateway = Gateways(state, 1)
        try:
            results = measure(root, f"http://127.0.0.1:{gateway.port}", {n: f"iris{n}" for n in ROWS}, args)
        finally:
            gateway.stop()
            for process in backends:
                process.terminate()
    headers = ["rows", "concurrency", "/invocations req/s", "p50 ms", "V2 req/s", "p50 ms", "added p50 ms"]
    print(f"\nV2 infer against /invocations through one gateway instance (wrk, median of {args.rounds} x "
          f"{args.seconds:g} s; backend: haproxy with a fixed answer)")
    print_table(headers, table_rows(results))
    replica_results = {} if args.no_replica else in_front_of_a_replica(args)
    if replica_results:
        print("\nThe same in front of a real replica (mlflow models serve of the iris model)")
        print_table(headers, table_rows(replica_results))
    print(f"\nfigures: {write_json('bench_v2', {'fixed': results, 'replica': replica_results})}")


def in_front_of_a_replica(args: argparse.Namespace) -> dict:
    """A real model server behind the watcher's gateway; the watcher publishes the metadata."""
    import mlops_toolkit as mt
    from benchmarks.support import ServingStack
    from tests.harness import Watcher, wait_for

    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        root = Path(tmp)
        mt.set_alias(stack.model, "Production", stack.versions[0])
        watcher = Watcher(stack.server.uri, root / "autoserve", [stack.model]).start()
        try:
            wait_for(lambda: (e := watcher.endpoints().get("Production")) and e["state"] == "ready", 180,
                     what="Production ready")
            wait_for(lambda: list((root / "autoserve" / "metadata").glob("*/*.json")), 60, what="metadata")
            return measure(root, watcher.url, {n: stack.model for n in ROWS}, args)
        finally:
            watcher.stop()


if __name__ == "__main__":
    main()
