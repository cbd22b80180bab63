"""Test helpers for autoserve: shared with the benchmarks (benchmarks/support.py)."""

from benchmarks.support import IRIS_COLUMNS, IRIS_SPLIT, LoadClient, Watcher, http_json, move_alias_under_load, wait_for
from mlops_toolkit.local_server import pid_running as pid_alive

__all__ = ["IRIS_COLUMNS", "IRIS_SPLIT", "LoadClient", "Watcher", "http_json", "move_alias_under_load", "pid_alive",
           "wait_for"]
