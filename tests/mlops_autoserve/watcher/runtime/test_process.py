"""Process runtime records: names for any model, and no trust in stale records."""

from __future__ import annotations

import json
import subprocess
import sys

from mlops_autoserve.watcher.runtime.base import DeploymentKey
from mlops_autoserve.watcher.runtime.process import ProcessRuntime, slug
from mlops_autoserve.settings import AutoserveSettings


def test_slugs_are_safe_and_distinct_for_awkward_names():
    names = ["iris", "iris model", "iris.model", "Ирис", "模型", "a/b"]
    slugs = [slug(DeploymentKey(n, 3)) for n in names]
    assert len(set(slugs)) == len(names)
    assert all(s.endswith("-v3") and all(c.isascii() and (c.isalnum() or c in "-_.") for c in s) for s in slugs)


def _record(runtime: ProcessRuntime, pid: int, tmp_dir) -> None:
    (runtime.records / "iris-x-v1.json").write_text(json.dumps({
        "model": "iris", "version": 1, "pid": pid, "port": 18555, "url": "http://127.0.0.1:18555",
        "tmp_dir": str(tmp_dir), "log": "", "started_at": 0,
    }))


def test_record_of_a_dead_process_is_cleaned_up(tmp_path):
    runtime = ProcessRuntime(AutoserveSettings(tracking_uri="http://127.0.0.1:1", state_dir=tmp_path))
    leftover = runtime.tmp / "iris-x-v1-18555"
    leftover.mkdir()
    _record(runtime, 2**22 + 12345, leftover)  # above Linux's pid_max: no such process
    assert runtime.list() == []
    assert not any(runtime.records.iterdir()) and not leftover.exists()


def test_record_whose_pid_was_reused_by_another_program_is_not_adopted(tmp_path):
    runtime = ProcessRuntime(AutoserveSettings(tracking_uri="http://127.0.0.1:1", state_dir=tmp_path))
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _record(runtime, stranger.pid, runtime.tmp / "gone")
        assert runtime.list() == []
    finally:
        stranger.kill()
        stranger.wait()
