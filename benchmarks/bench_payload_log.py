"""Payload-log overhead: what logging every request to the app-db costs the callers.

One watcher serving `Production` (1 replica, 1 worker), and two gateways on the same route
table and the same model server: the watcher's own (no payload log) and a second
`mlops gateway` with `--payload-log-rate 1` writing to a fresh PostgreSQL database. The
callers' latency through each, in alternating turns so the machine's drift hits both
alike; then the rows written against the requests sent.

    python -m benchmarks.bench_payload_log [--seconds 10] [--rounds 5] [--pg-dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import (
    ServingStack,
    closed_loop,
    print_table,
    side_by_side,
    write_json,
)
from mlops_toolkit.ops.processes import free_port, terminate
from tests.harness import IRIS_SPLIT, Watcher, wait_for


def fresh_database(dsn: str) -> tuple[str, Callable[[], None]]:
    import psycopg

    admin = psycopg.connect(dsn, autocommit=True)
    name = f"mlops_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg://{admin.info.user}@{admin.info.host}:{admin.info.port}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Per cell, split over the rounds.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    args = parser.parse_args()
    body = json.dumps({"dataframe_split": {**IRIS_SPLIT["dataframe_split"],
                                           "data": IRIS_SPLIT["dataframe_split"]["data"][:1]}}).encode()
    levels = [int(c) for c in args.concurrency.split(",")]
    cells: dict[tuple[int, str], tuple[list[float], int]] = {}
    db_url, drop = fresh_database(args.pg_dsn)
    try:
        with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
            model, (v1,) = stack.model, stack.versions
            mt.set_alias(model, "Production", v1)
            state = Path(tmp) / "autoserve"
            watcher = Watcher(stack.server.uri, state, [model], poll_interval=0.5).start()
            port, admin = free_port(), free_port()
            logging_gateway = subprocess.Popen(
                [sys.executable, "-m", "mlops_toolkit.cli", "gateway", "--state-dir", str(state), "--port", str(port),
                 "--admin-port", str(admin), "--payload-log-rate", "1"],
                env={**os.environ, "APP_DB_URL": db_url},
                stdout=open(Path(tmp) / "gateway-logging.log", "ab"), stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: watcher.endpoint_ready("Production", v1), 180, what="Production ready")
                urls = {"no payload log": f"{watcher.url}/serve/{model}/Production/invocations",
                        "payload log 100%": f"http://127.0.0.1:{port}/serve/{model}/Production/invocations"}
                wait_for(lambda: asyncio.run(closed_loop(urls["payload log 100%"], body, 1, 0.2))[0], 30,
                         what="the logging gateway serving")
                for c in levels:
                    for _ in range(args.rounds):
                        for name, url in urls.items():
                            asyncio.run(closed_loop(url, body, c, 0.5))
                            latencies, errors = asyncio.run(closed_loop(url, body, c, args.seconds / args.rounds))
                            done, failed = cells.get((c, name), ([], 0))
                            cells[(c, name)] = (done + latencies, failed + errors)
                time.sleep(2)  # the writer's last batch
                text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
                counts = {line.split('result="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                          for line in text.splitlines() if line.startswith("autoserve_payload_log_rows_total{")}
            finally:
                terminate(logging_gateway.pid)
                watcher.stop()
    finally:
        from sqlalchemy import create_engine

        from mlops_toolkit.batch import appdb

        engine = create_engine(db_url)
        rows = appdb.count_rows(engine, appdb.payload_log)
        engine.dispose()
        drop()
    sent = sum(len(cells[(c, "payload log 100%")][0]) for c in levels)
    table, results = side_by_side(cells, levels, list(urls), args.seconds)
    print(f"\nCallers of Production through a gateway without and with a 100% payload log, {args.seconds:.0f} s "
          f"per cell in {args.rounds} turns; rows by result: {counts}; rows in the table: {rows} "
          f"(answered through the logging gateway, warm-ups included: >= {sent})")
    print_table(["conc", "mode", "rps", "p50 ms", "added p50", "p99 ms", "caller errors"], table)
    print(f"written {write_json('bench_payload_log', {'seconds': args.seconds, 'rows': rows, 'counts': counts, 'results': results})}")


if __name__ == "__main__":
    main()
