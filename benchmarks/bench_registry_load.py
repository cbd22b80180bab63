"""Registry load of one reconcile cycle: autoserve's reader vs the naive per-alias look-up.

Models with two aliases each (1, 10, 100, 500). Requests are counted on the wire by a
proxy in front of the tracking server; cycle time is the median of 3 reads.
Naive: list models, then ``get_model_version_by_alias`` for every model and alias.

    python -m benchmarks.bench_registry_load [--sizes 1,10,100,500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.desired import RegistryReader

from benchmarks.support import print_table, write_json
from mlops_toolkit.ops.local_server import LocalMlflowServer
from mlops_toolkit.registry import iter_registered_models
from tests.harness import CountingProxy

ALIASES = ("Production", "challenger")


def naive_read(client: MlflowClient) -> dict:
    desired = {}
    for model in iter_registered_models(client):
        for alias in ALIASES:
            desired[(model.name, alias)] = int(client.get_model_version_by_alias(model.name, alias).version)
    return desired


def timed(fn, proxy: CountingProxy, repeat: int = 3) -> tuple[int, float, dict]:
    times, counts, result = [], [], None
    for _ in range(repeat):
        proxy.reset()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        counts.append(proxy.total)
    return counts[-1], statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,500")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp, LocalMlflowServer(
        f"sqlite:///{Path(tmp) / 'mlflow.db'}", Path(tmp) / "artifacts"
    ) as server, CountingProxy("127.0.0.1", server.port) as proxy:
        setup = MlflowClient(server.uri, registry_uri=server.uri)
        run = setup.create_run(setup.create_experiment("registry-load"))
        client = MlflowClient(proxy.uri, registry_uri=proxy.uri)
        reader = RegistryReader(AutoserveSettings(tracking_uri=proxy.uri), AutoserveMetrics())
        created = 0
        for size in sizes:
            while created < size:
                name = f"model-{created:04d}"
                setup.create_registered_model(name)
                setup.create_model_version(name, source=f"{run.info.artifact_uri}/m", run_id=run.info.run_id)
                for alias in ALIASES:
                    setup.set_registered_model_alias(name, alias, "1")
                created += 1
            ours_n, ours_s, ours = timed(reader.read, proxy)
            naive_n, naive_s, naive = timed(lambda: naive_read(client), proxy)
            assert ours == naive, "both approaches must see the same desired state"
            results.append({"models": size, "aliases": len(ours), "autoserve": {"requests": ours_n, "seconds": ours_s},
                            "naive": {"requests": naive_n, "seconds": naive_s}})
            rows.append([size, len(ours), ours_n, f"{ours_s * 1000:.0f}", naive_n, f"{naive_s * 1000:.0f}",
                         f"{naive_n / ours_n:.0f}x"])
    print("\nRegistry requests and time per reconcile cycle (two aliases per model)")
    print_table(["models", "aliases", "autoserve req", "autoserve ms", "naive req", "naive ms", "fewer requests"], rows)
    print(f"written {write_json('bench_registry_load', {'results': results})}")


if __name__ == "__main__":
    main()
