"""uv's download cache counts toward ``--env-max-gb`` and is cleaned first when over it, with
the real ``uv`` binary, on a real (small) cache: an environment built by ProcessEnvs.build
from a wheel made here, offline (no index needed)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher import envstore
from mlops_autoserve.watcher.environments import Build, Environments
from mlops_autoserve.watcher.envstore import (
    DOWNLOAD_CACHE_KIND,
    READY_FILE,
    EnvInfo,
    ProcessEnvs,
    _tree_size,
)
from mlops_autoserve.watcher.runtime.base import DeploymentKey

KEY = "0123456789abcdef"
MiB = 1024 * 1024


def _environments(store: ProcessEnvs, max_bytes: int) -> Environments:
    settings = AutoserveSettings(tracking_uri="http://127.0.0.1:1", env_cache=store.cache_dir,
                                 env_max_gb=max_bytes / 1024 ** 3)
    return Environments(settings, AutoserveMetrics(), store)


def _cache_row(environments: Environments) -> EnvInfo | None:
    return next((e for e in environments.list(set()) if e.kind == DOWNLOAD_CACHE_KIND), None)


def test_the_cache_counts_the_bytes_only_it_holds_and_is_listed_with_the_environments(tmp_path):
    """A fake tree is enough for the count: 2 MiB only the cache holds, 1 MiB it shares with a
    built environment (a hard link, as uv installs), counted in the environment's size."""
    store = ProcessEnvs(tmp_path, 60)
    env_dir = tmp_path / KEY
    (env_dir / "lib").mkdir(parents=True)
    (store.download_cache / "archive-v0" / "x").mkdir(parents=True)
    (store.download_cache / "archive-v0" / "x" / "own.whl").write_bytes(os.urandom(2 * MiB))
    shared = store.download_cache / "archive-v0" / "x" / "shared.py"
    shared.write_bytes(os.urandom(MiB))
    os.link(shared, env_dir / "lib" / "shared.py")
    env_size = _tree_size(env_dir)
    (env_dir / READY_FILE).write_text(json.dumps(EnvInfo(KEY, str(env_dir), env_size, time.time(), 1.0,
                                                         time.time()).to_dict()))
    cache = store.download_cache_info()
    assert cache.kind == DOWNLOAD_CACHE_KIND and cache.location == str(store.download_cache)
    assert 2 * MiB <= cache.size_bytes < 2 * MiB + 64 * 1024 and env_size >= MiB
    environments = _environments(store, 10 * MiB)
    listed = environments.list({KEY})
    assert [(e.key, e.kind, e.in_use) for e in listed] == [(KEY, "env", True),
                                                           (".uv-cache", DOWNLOAD_CACHE_KIND, False)]
    assert listed[1].to_dict()["size_bytes"] == cache.size_bytes  # what `mlops serve envs` shows
    assert environments.metrics.env_cache_bytes._value.get() == env_size + cache.size_bytes


def test_no_cache_yet_is_no_row(tmp_path):
    assert ProcessEnvs(tmp_path, 60).download_cache_info() is None
    assert _environments(ProcessEnvs(tmp_path, 60), MiB).list(set()) == []


# -- the real uv --------------------------------------------------------------------------

def _wheel(folder: Path) -> Path:
    """A pure-Python wheel made by hand (no build backend, no index)."""
    name, version = "mlops_tiny", "0.1"
    files = {f"{name}/__init__.py": f"DATA = {os.urandom(150_000).hex()!r}\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def built(tmp_path, monkeypatch) -> ProcessEnvs:
    """One environment built the product's way (uv venv + uv pip install) into a real cache,
    plus 600 KB of dangling entries `uv cache prune` removes."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    store = ProcessEnvs(tmp_path / "envs", 120)
    store.build(KEY, [f"mlops-tiny @ {_wheel(tmp_path).as_uri()}"], (), lambda line: None)
    for name in ("orphan-1", "orphan-2"):
        (store.download_cache / "archive-v0" / name).write_bytes(os.urandom(300_000))
    return store


def _imports(store: ProcessEnvs) -> bool:
    python = store.get(KEY).python
    return subprocess.run([python, "-c", "import mlops_tiny; assert len(mlops_tiny.DATA) == 300_000"]).returncode == 0


def test_within_the_limit_nothing_is_cleaned(built):
    before = built.download_cache_info().size_bytes
    environments = _environments(built, 1024 * MiB)
    environments.maybe_prune({KEY})
    assert built.download_cache_info().size_bytes == before and before >= 600_000


def test_over_the_limit_uv_cache_prune_goes_first_and_keeps_what_entries_use(built, caplog):
    caplog.set_level(logging.INFO, logger="autoserve.environments")
    env_size = built.list()[0].size_bytes
    before = built.download_cache_info().size_bytes
    environments = _environments(built, env_size + before - 500_000)  # the orphans' room taken away
    environments.maybe_prune(set())
    after = built.download_cache_info()
    assert not (built.download_cache / "archive-v0" / "orphan-1").exists()
    assert after is not None and 0 < after.size_bytes <= before - 600_000
    assert any((built.download_cache / "archive-v0").iterdir())  # the wheel's entry stays: a rebuild reuses it
    assert [e.key for e in built.list()] == [KEY] and _imports(built)  # the environment was not touched
    cleaned = [r for r in caplog.records if r.getMessage() == "download cache cleaned"]
    assert [(r.how, r.size_bytes) for r in cleaned] == [("prune", after.size_bytes)]
    assert environments.metrics.env_cache_bytes._value.get() == env_size + after.size_bytes


def test_far_over_the_limit_the_whole_cache_goes_before_any_environment(built, caplog):
    caplog.set_level(logging.INFO, logger="autoserve.environments")
    env_size = built.list()[0].size_bytes
    environments = _environments(built, env_size + 1024)
    environments.maybe_prune(set())  # the environment was used a moment ago: kept
    after = built.download_cache_info()
    assert after is None or after.size_bytes < 64 * 1024
    assert [e.key for e in built.list()] == [KEY] and _imports(built)  # its files are its own (hard links)
    assert [r.how for r in caplog.records if r.getMessage() == "download cache cleaned"] == ["prune", "clean"]
    assert environments.metrics.env_removed_total.labels("size")._value.get() == 0


def test_the_cache_is_left_alone_while_this_watcher_builds(built):
    before = built.download_cache_info().size_bytes
    environments = _environments(built, 1024)
    environments._builds[DeploymentKey("other", 2)] = Build(2, "fedcba9876543210", time.time())  # in progress
    environments.maybe_prune({KEY})
    assert built.download_cache_info().size_bytes == before


def test_a_cache_another_watcher_s_build_holds_is_left_for_the_next_time(built, caplog, monkeypatch):
    """uv processes hold a shared lock on the cache while they run: `uv cache clean` waits,
    here for CACHE_LOCK_WAIT seconds, then the clean-up gives up with a warning."""
    monkeypatch.setattr(envstore, "CACHE_LOCK_WAIT", 1)
    before = built.download_cache_info().size_bytes
    environments = _environments(built, built.list()[0].size_bytes + 1024)
    with open(built.download_cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # as `uv pip install` does
        started = time.monotonic()
        environments.maybe_prune({KEY})
        waited = time.monotonic() - started
    assert built.download_cache_info().size_bytes == before and waited < 10
    failed = [r for r in caplog.records if r.getMessage() == "download cache clean-up failed"]
    assert len(failed) == 1 and "lock" in failed[0].error.lower()
    assert [e.key for e in built.list()] == [KEY]
