"""Process runtime records: names for any model, no trust in stale or corrupt records, and
bounded output."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.runtime import logcap
from mlops_autoserve.watcher.runtime.base import DeploymentKey, Health
from mlops_autoserve.watcher.runtime.process import ProcessRuntime, slug

from mlops_toolkit.ops.processes import free_port
from tests.harness import http_json, wait_for
from tests.mlops_autoserve import chatty


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


# -- records that are not ours -----------------------------------------------------------

def _good_record(port: int = 18555) -> dict:
    return {"model": "iris", "version": 1, "pid": 4242, "port": port, "url": f"http://127.0.0.1:{port}",
            "tmp_dir": None, "log": None, "started_at": 1700000000.5, "aliases": ["Production"], "replica": 0,
            "env": None}


def _with(**changes) -> str:
    record = {**_good_record(), **changes}
    return json.dumps({k: v for k, v in record.items() if v is not _DROP})


_DROP = object()
BAD_RECORDS = {
    "empty": "",
    "truncated": json.dumps(_good_record())[:40],
    "not JSON": "pid=4242\n",
    "a JSON list": "[4242, 18555]",
    "null": "null",
    "a number": "4242",
    "nested too deep": "[" * 100_000,
    "not UTF-8": b"\xff\xfe\x00garbage",
    "no pid": _with(pid=_DROP),
    "no model": _with(model=_DROP),
    "no version": _with(version=_DROP),
    "no port": _with(port=_DROP),
    "no url": _with(url=_DROP),
    "no started_at": _with(started_at=_DROP),
    "pid a string": _with(pid="4242"),
    "pid a boolean": _with(pid=True),
    "pid 0": _with(pid=0),  # signal_group(0) would be the watcher's own process group
    "pid negative": _with(pid=-1),
    "pid past any pid_t": _with(pid=10 ** 30),
    "version a string": _with(version="one"),
    "version a float": _with(version=1.5),
    "port null": _with(port=None),
    "model a number": _with(model=7),
    "started_at a string": _with(started_at="yesterday"),
    "started_at past any float": _with(started_at=10 ** 400),
    "aliases a string": _with(aliases="Production"),
    "aliases of numbers": _with(aliases=[1, 2]),
    "replica a string": _with(replica="0"),
    "tmp_dir a number": _with(tmp_dir=5),
}


def _runtime(tmp_path) -> ProcessRuntime:
    return ProcessRuntime(AutoserveSettings(tracking_uri="http://127.0.0.1:1", state_dir=tmp_path))


def test_unusable_records_are_set_aside_with_one_warning_and_the_good_one_is_adopted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="autoserve.process")
    runtime = _runtime(tmp_path)
    # argv carries what the record names (models:/iris/1, port 18555): the adoption check's match
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "models:/iris/1", "18555"])
    try:
        (runtime.records / "good.json").write_text(json.dumps({**_good_record(), "pid": stand_in.pid}))
        for i, content in enumerate(BAD_RECORDS.values()):
            path = runtime.records / f"bad-{i}.json"
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        for _ in range(3):  # every cycle: the good one, and no new warning
            listed = runtime.list()
            assert [(d.key, d.ident, d.port, d.aliases) for d in listed] == [
                (DeploymentKey("iris", 1), str(stand_in.pid), 18555, ("Production",))]
        warnings = [r for r in caplog.records if r.getMessage() == "deployment record unusable: skipped"]
        assert len(warnings) == len(BAD_RECORDS)
        assert all("\n" not in r.error and r.moved_to.endswith(".json.bad") for r in warnings)
        assert sorted(p.name for p in runtime.records.iterdir()) == sorted(
            ["good.json", *(f"bad-{i}.json.bad" for i in range(len(BAD_RECORDS)))])
        assert stand_in.poll() is None  # a bad record's pid is never signalled
        errors = {list(BAD_RECORDS)[int(Path(r.record).stem.split("-")[1])]: r.error for r in warnings}
        assert "missing 'pid'" in errors["no pid"] and "pid 0 is not a serve process" in errors["pid 0"]
        assert "version: expected int, got str" in errors["version a string"]
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_dead_record_never_removes_a_directory_outside_the_runtime_s_temp_dir(tmp_path):
    runtime = _runtime(tmp_path / "state")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    _record(runtime, 2**22 + 12345, precious)  # dead pid, tmp_dir pointing elsewhere
    assert runtime.list() == []
    assert (precious / "data").read_text() == "keep me" and not any(runtime.records.iterdir())


# -- bounded output ----------------------------------------------------------------------

def _copy_through_logcap(log: Path, script: str) -> None:
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    copier = subprocess.run([sys.executable, "-I", "-S", logcap.__file__, str(log)], stdin=writer.stdout, timeout=60)
    writer.wait(10)
    assert copier.returncode == 0 and writer.returncode == 0


def test_logcap_keeps_a_flood_under_the_cap_with_the_newest_output(tmp_path):
    log = tmp_path / "serve.log"
    flood = ("import sys\nfor i in range(30_000): sys.stdout.write(f'line {i} ' + 'x' * 1000 + '\\n')\n"
             "print('the last words')")
    _copy_through_logcap(log, flood)  # ~30 MB
    rotated = log.with_name(log.name + ".1")
    sizes = log.stat().st_size, rotated.stat().st_size
    assert max(sizes) <= logcap.CAP_BYTES // 2 and sum(sizes) <= logcap.CAP_BYTES, sizes
    assert sum(sizes) > logcap.CAP_BYTES // 2  # it keeps as much as it may, not less
    assert log.read_text().endswith("the last words\n")
    older, newer = rotated.read_text().splitlines(), log.read_text().splitlines()
    assert int(older[-1].split()[1]) + 1 == int(newer[0].split()[1])  # no line lost at the rotation


def test_logcap_cuts_a_log_from_before_the_cap(tmp_path):
    log = tmp_path / "serve.log"
    log.write_bytes(b"old\n" * (3 * logcap.CAP_BYTES // 4))  # 3x the cap, unbounded before
    _copy_through_logcap(log, "print('started again')")
    assert log.read_text() == "started again\n"
    assert log.with_name(log.name + ".1").stat().st_size == logcap.CAP_BYTES // 2


def _copiers_of(log: Path) -> list[int]:
    """Pids of the log copiers writing ``log`` (from /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if logcap.__file__.encode() in argv and str(log).encode() in argv:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
def test_a_deployment_flooding_its_output_stays_under_the_cap_after_its_watcher_exited(tracking_uri, tmp_path):
    """A real `mlflow models serve`, started by a watcher process that then exits (the log
    copier is not a thread of the watcher), adopted by the next watcher and made to print
    16 MB: its log stays under the cap, keeps the newest output, and logs no request line."""
    key = chatty.logged(tracking_uri)
    state, port = tmp_path / "state", free_port()
    settings = AutoserveSettings(tracking_uri=tracking_uri, state_dir=state, port_range=(port, port))
    starter = ("import sys; from pathlib import Path; from mlops_autoserve.settings import AutoserveSettings; "
               "from mlops_autoserve.watcher.runtime.base import DeploymentKey; "
               "from mlops_autoserve.watcher.runtime.process import ProcessRuntime; "
               f"ProcessRuntime(AutoserveSettings(tracking_uri={tracking_uri!r}, state_dir=Path({str(state)!r}), "
               f"port_range=({port}, {port}))).start(DeploymentKey({key.model!r}, {key.version}))")
    subprocess.run([sys.executable, "-c", starter], check=True, timeout=60)
    runtime = ProcessRuntime(settings)
    deployment = wait_for(lambda: next(iter(runtime.list()), None), 10, what="the deployment adopted")
    log = Path(deployment.log_path)
    rotated = log.with_name(log.name + ".1")
    try:
        chatty.wait_ready(runtime, deployment)
        # 16 MB of output, then small requests whose lines (and access log lines, if any) stay in LOG
        for size in [1_000_000 + i for i in range(16)] + [0] * 5 + [7]:
            status, _, body = http_json("POST", deployment.url + "/invocations", chatty.payload(size))
            assert status == 200 and body == {"predictions": [size]}
        wait_for(lambda: log.read_text(errors="replace").endswith("chatty 7 xxxxxxx\n"), 10,
                 what="the last output in the log")
        sizes = log.stat().st_size, rotated.stat().st_size
        assert max(sizes) <= logcap.CAP_BYTES // 2 and sum(sizes) <= logcap.CAP_BYTES, sizes
        assert sum(sizes) > logcap.CAP_BYTES // 2  # the newest 5-10 MB kept
        text = log.read_text(errors="replace")
        assert text.count("chatty 0 \n") == 5 and "POST /invocations" not in text  # uvicorn's access log is off
        assert len(_copiers_of(log)) == 1
    finally:
        runtime.stop(deployment)
    wait_for(lambda: not _copiers_of(log), 10, what="the log copier gone with its server")


@pytest.mark.slow
def test_a_server_dead_at_start_has_its_last_words_on_disk_once_it_is_seen_dead(tracking_uri, tmp_path):
    """The deploy error quotes the log the moment health says DEAD: the copier has written it."""
    from mlops_autoserve.watcher.deployer import last_words

    key = chatty.logged(tracking_uri)
    runtime = chatty.runtime(tracking_uri, tmp_path / "state")
    deployment = runtime.start(DeploymentKey(key.model, key.version + 100))  # no such version
    try:
        wait_for(lambda: runtime.health(deployment) is Health.DEAD, 60, interval=0.05, what="the server dead")
        said = last_words(Path(deployment.log_path).read_text().splitlines())
        assert "RESOURCE_DOES_NOT_EXIST" in said or "not found" in said.lower(), said
    finally:
        runtime.stop(deployment)
    assert not _copiers_of(Path(deployment.log_path))
