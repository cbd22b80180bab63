"""Watcher cost: CPU and memory of an idle watcher with 1 and with 100 endpoints.

100 endpoints = 100 aliases of one model version: 100 routes, one deployment (a real
``mlflow models serve`` each would need ~0.3 GB and minutes to start on 2 cores). The
watcher polls the registry every 10 s and checks deployments every 2 s, as by default.

    python -m benchmarks.bench_watcher_cost [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mlops_toolkit as mt
from benchmarks.support import ServingStack, print_table, write_json
from tests.harness import Watcher, wait_for

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(stack: ServingStack, root: Path, endpoints: int, seconds: float) -> dict:
    aliases = [f"a{i:03d}" for i in range(endpoints)]
    for alias in aliases:
        mt.set_alias(stack.model, alias, stack.versions[0])
    watcher = Watcher(stack.server.uri, root / f"cost-{endpoints}", [stack.model], "--aliases", ",".join(aliases),
                      poll_interval=10.0).start()
    try:
        wait_for(lambda: sum(e["state"] == "ready" for e in watcher.endpoints().values()) == endpoints, 120)
        time.sleep(3)
        pid = watcher.process.pid
        before = cpu_seconds(pid)
        time.sleep(seconds)
        used = cpu_seconds(pid) - before
        return {"endpoints": endpoints, "cpu_percent": 100 * used / seconds, "rss_mb": rss_mb(pid)}
    finally:
        watcher.stop()
        for alias in aliases:
            mt.delete_alias(stack.model, alias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=1) as stack:
        results = [measure(stack, Path(tmp), n, args.seconds) for n in (1, 100)]
    print(f"\nIdle watcher over {args.seconds:.0f} s (poll 10 s, health checks every 2 s)")
    print_table(["endpoints", "CPU %", "RSS MB"], [[r["endpoints"], f"{r['cpu_percent']:.2f}", f"{r['rss_mb']:.0f}"] for r in results])
    print(f"written {write_json('bench_watcher_cost', {'seconds': args.seconds, 'results': results})}")


if __name__ == "__main__":
    main()
