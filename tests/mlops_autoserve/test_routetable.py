"""The route table under garbage: whatever ``routes.json`` holds, the gateway keeps its last
good table (one warning per distinct bad content) and follows the next good one; a watcher
starts without a seed rather than not at all."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlops_autoserve import routetable
from mlops_autoserve.routetable import (
    CanaryTarget,
    EnvBuild,
    Replica,
    RouteEntry,
    RouteTable,
    ScaleView,
    ShadowTarget,
    TableError,
    TableFile,
    TablePublisher,
    from_json,
    table_path,
    to_json,
    write,
)

from mlops_toolkit.ops.processes import free_port
from tests.harness import http_json, wait_for
from tests.mlops_autoserve import chatty

WARNING = "route table unusable"


def _entry(alias: str = "Production", url: str = "http://127.0.0.1:1", version: int = 3) -> RouteEntry:
    return RouteEntry("iris", alias, version, version, "ready", 1700000000.0, replicas=(Replica(url, "123"),))


def _full_table(serial: int = 7) -> RouteTable:
    """Every optional part filled in, so garbage can be planted at every depth."""
    entry = RouteEntry("iris", "Production", 4, 3, "switching", 1700000000.0, "v4 not ready",
                       (Replica("http://127.0.0.1:18001", "123", 0), Replica("http://127.0.0.1:18002", "124", 1)),
                       ShadowTarget("Staging", 5, 10.0, "auto", (Replica("http://127.0.0.1:18003", "125"),)),
                       CanaryTarget(4, 20, (Replica("http://127.0.0.1:18004", "126"),)),
                       EnvBuild(4, "abcd" * 4, 1700000001.0, "Resolved 3 packages"),
                       ScaleView(2, 1, 4, "up 1 -> 2: 9 in flight", 1700000002.0))
    return RouteTable(serial, 1700000003.5, (entry, _entry("Staging")))


def _with(change) -> str:
    """The full table's JSON with ``change(data)`` applied."""
    data = json.loads(to_json(_full_table()))
    change(data)
    return json.dumps(data)


def _route(data: dict) -> dict:
    return data["routes"][0]


GOOD = to_json(_full_table())
GARBAGE = {
    "empty": "",
    "list": "[]",
    "empty object": "{}",
    "null": "null",
    "number": "42",
    "string": '"routes"',
    "truncated": GOOD[: len(GOOD) // 2],
    "truncated by one byte": GOOD[:-1],
    "not JSON": "routes: none\n",
    "not UTF-8": "\udcff\udcfe{}",
    "nested too deep": "[" * 100_000,
    "serial a string": _with(lambda d: d.update(serial="7")),
    "serial a boolean": _with(lambda d: d.update(serial=True)),
    "serial a float": _with(lambda d: d.update(serial=7.5)),
    "format newer": _with(lambda d: d.update(format=99)),
    "routes an object": _with(lambda d: d.update(routes={})),
    "routes null": _with(lambda d: d.update(routes=None)),
    "route a string": _with(lambda d: d.update(routes=["iris"])),
    "route missing alias": _with(lambda d: _route(d).pop("alias")),
    "route missing since": _with(lambda d: _route(d).pop("since")),
    "version a string": _with(lambda d: _route(d).update(version="3")),
    "model a number": _with(lambda d: _route(d).update(model=5)),
    "since NaN": _with(lambda d: _route(d).update(since=float("nan"))),
    "since past any float": _with(lambda d: _route(d).update(since=10 ** 400)),
    "replicas an object": _with(lambda d: _route(d).update(replicas={"url": "x"})),
    "replica a string": _with(lambda d: _route(d).update(replicas=["http://127.0.0.1:1"])),
    "replica missing url": _with(lambda d: _route(d)["replicas"][0].pop("url")),
    "replica index a string": _with(lambda d: _route(d)["replicas"][0].update(index="0")),
    "shadow a list": _with(lambda d: _route(d).update(shadow=[])),
    "shadow percent a string": _with(lambda d: _route(d)["shadow"].update(percent="10")),
    "canary missing version": _with(lambda d: _route(d)["canary"].pop("version")),
    "building a string": _with(lambda d: _route(d).update(building="yes")),
    "scale wanted a boolean": _with(lambda d: _route(d)["scale"].update(wanted=True)),
}


def _put(path: Path, text: str, stamp: list[int] = [1_700_000_000_000_000_000]) -> None:  # noqa: B006 - a counter
    """Replace the file atomically (as the watcher does), with an mtime of its own: every
    write is a change the follower sees, however fast the clock ticks."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(text.encode("utf-8", "surrogateescape"))
    stamp[0] += 1_000_000
    os.utime(partial, ns=(stamp[0], stamp[0]))
    partial.replace(path)


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(WARNING)]


def test_a_full_table_round_trips_and_fields_a_newer_watcher_adds_are_ignored():
    assert from_json(GOOD) == _full_table()
    newer = json.loads(GOOD)
    newer["future"] = 1
    _route(newer)["future"] = {"x": 1}
    _route(newer)["replicas"][0]["weight"] = 2
    _route(newer)["canary"]["future"] = []
    assert from_json(json.dumps(newer)) == _full_table()
    minimal = from_json('{"serial": 1, "routes": [{"model": "m", "alias": "a", "desired_version": 1, "version": null,'
                        ' "state": "starting", "since": 0}]}')
    assert minimal.routes[0] == RouteEntry("m", "a", 1, None, "starting", 0.0)


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_every_kind_of_garbage_is_one_clear_error(garbage):
    with pytest.raises(TableError) as caught:
        from_json(garbage.encode("utf-8", "surrogateescape"))
    message = str(caught.value)
    assert message and "\n" not in message and len(message) < 300


def test_the_follower_keeps_the_last_good_table_warns_once_per_content_and_follows_the_next(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="autoserve.routetable")
    path = table_path(tmp_path)
    follower = TableFile(path)
    _put(path, GOOD)
    assert follower.refresh() and follower.table.serial == 7 and follower.error is None
    for name, garbage in GARBAGE.items():
        _put(path, garbage)
        assert follower.refresh() is False, name
        assert follower.table == _full_table(), name  # still serving the last good one
        assert follower.table.get("iris", "Staging") is not None
        assert "routes.json is unusable" in follower.error and "serving table 7" in follower.error, name
    assert len(_warnings(caplog)) == len(GARBAGE)  # one per distinct content
    assert all(r.serial == 7 and r.path == str(path) for r in _warnings(caplog))
    _put(path, GARBAGE["truncated"])
    _put(path, GARBAGE["truncated"])
    assert follower.refresh() is False and follower.refresh() is False
    assert len(_warnings(caplog)) == len(GARBAGE) + 1  # the same content again: no new warning
    for _ in range(3):
        _put(path, GARBAGE["truncated"])
        follower.refresh()
    assert len(_warnings(caplog)) == len(GARBAGE) + 1
    _put(path, to_json(RouteTable(8, time.time(), (_entry("Production", version=5),))))
    assert follower.refresh() is True and follower.error is None
    assert follower.table.serial == 8 and follower.table.get("iris", "Production").version == 5
    assert follower.table.get("iris", "Staging") is None


def test_an_unchanged_bad_file_is_not_read_again(tmp_path, caplog, monkeypatch):
    path = table_path(tmp_path)
    _put(path, GARBAGE["list"])
    follower = TableFile(path)
    reads = []
    real = routetable._read_bytes
    monkeypatch.setattr(routetable, "_read_bytes", lambda p: reads.append(p) or real(p))
    for _ in range(5):
        assert follower.refresh() is False
    assert len(reads) == 1 and len(_warnings(caplog)) == 1


def test_an_oversized_table_is_refused_unread(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(routetable, "MAX_TABLE_BYTES", 1024)
    path = table_path(tmp_path)
    follower = TableFile(path)
    _put(path, to_json(RouteTable(1, 0.0, (_entry(),))))
    assert follower.refresh()
    _put(path, to_json(RouteTable(2, 0.0, tuple(_entry(f"a{i}") for i in range(20)))))
    assert follower.refresh() is False and follower.table.serial == 1 and "over 1024 bytes" in follower.error
    assert len(_warnings(caplog)) == 1


def test_a_missing_table_is_no_error(tmp_path):
    follower = TableFile(table_path(tmp_path))
    assert follower.refresh() is False and follower.error is None and follower.table.serial == 0


@pytest.mark.parametrize("name", ["empty", "list", "null", "truncated", "route missing alias", "version a string"])
def test_a_watcher_ignores_a_corrupt_seed_with_a_warning_and_publishes_a_good_table(tmp_path, caplog, name):
    path = table_path(tmp_path)
    _put(path, GARBAGE[name])
    publisher = TablePublisher(path)
    assert publisher.last is None and publisher.serial == 0
    warnings = [r for r in caplog.records if "starting without the last published table" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    table = publisher.publish((_entry(),))
    assert routetable.read(path) == table and table.serial == 1


def test_a_good_seed_is_the_next_watcher_s_start(tmp_path):
    path = table_path(tmp_path)
    write(path, _full_table(serial=41))
    publisher = TablePublisher(path)
    assert publisher.last == _full_table(serial=41)
    assert publisher.publish((_entry(),)).serial == 42  # the serial never goes back


# -- a real gateway ----------------------------------------------------------------------

LIVE_GARBAGE = ("list", "empty object", "null", "truncated", "route missing alias", "version a string")


def _gateway_health(admin: str) -> dict | None:
    try:
        return http_json("GET", admin + "/health")[2]
    except OSError:
        return None


@pytest.mark.slow
def test_a_running_gateway_serves_through_garbage_and_follows_the_next_good_table(tracking_uri, tmp_path):
    """`mlops gateway` in front of a real `mlflow models serve`: garbage written to routes.json
    costs no request, and the next good table is served."""
    key = chatty.logged(tracking_uri)
    backend = chatty.runtime(tracking_uri, tmp_path / "backend")
    state = tmp_path / "gateway"
    path = table_path(state)
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    gateway_log = tmp_path / "gateway.log"

    def invoke(alias: str):
        return http_json("POST", f"http://127.0.0.1:{port}/serve/{key.model}/{alias}/invocations", chatty.payload(0))

    def route(alias: str, deployment) -> RouteEntry:
        return RouteEntry(key.model, alias, key.version, key.version, "ready", time.time(),
                          replicas=(Replica(deployment.url, deployment.ident),))

    with chatty.serving(backend, key) as deployment:
        write(path, RouteTable(1, time.time(), (route("Production", deployment),)))
        with open(gateway_log, "ab") as out:
            gateway = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlops"), "gateway", "--state-dir", str(state),
                 "--port", str(port), "--admin-port", str(admin_port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: (_gateway_health(admin) or {}).get("table_serial") == 1, 30, what="gateway up")
            status, headers, body = invoke("Production")
            assert status == 200 and headers["X-Model-Version"] == str(key.version) and body == {"predictions": [0]}
            for name in LIVE_GARBAGE:
                before = _gateway_health(admin)["table_error"]
                _put(path, GARBAGE[name])
                health = wait_for(lambda: (h := _gateway_health(admin)) and h["table_error"] not in (None, before)
                                  and h, 10, what=f"the gateway saw {name}")
                assert health["table_serial"] == 1 and health["routes"] == 1, name
                status, headers, _ = invoke("Production")
                assert status == 200 and headers["X-Model-Version"] == str(key.version), name
            assert gateway.poll() is None
            both = (route("Production", deployment), route("Staging", deployment))
            _put(path, to_json(RouteTable(2, time.time(), both)))
            health = wait_for(lambda: (h := _gateway_health(admin)) and h["table_serial"] == 2 and h, 10,
                              what="the good table followed")
            assert health["table_error"] is None and health["routes"] == 2
            assert invoke("Staging")[0] == 200 and invoke("Production")[0] == 200
        finally:
            gateway.terminate()
            code = gateway.wait(15)
    text = gateway_log.read_text()
    assert code == 0, text[-2000:]
    warnings = [json.loads(line) for line in text.splitlines() if WARNING in line]
    assert len(warnings) == len(LIVE_GARBAGE), text[-3000:]
    assert all(w["level"] == "WARNING" and w["serial"] == 1 for w in warnings)
