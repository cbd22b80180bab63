"""The audit trail's background writer: ``record()`` returns at once whatever the store does,
and an event the store cannot take waits in the spool until it can (at-least-once).

Real stores: a directory, and moto's S3 server (standing in for MinIO, which cannot run
here), stopped and started again on the same port. A "hung" store is a loopback socket that
accepts connections and never answers, as a stuck object store does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlops_toolkit import audit
from mlops_toolkit.ops.processes import free_port
from tests.daemons import Daemon, binary
from tests.harness import wait_for

ARRIVES_S = 15  # back-off is capped at 5 s: a store that is back gets the spool well within this
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "moto-test", "AWS_SECRET_ACCESS_KEY": "moto-test", "AWS_DEFAULT_REGION": "us-east-1"}


def moto_on(port: int, log_path: Path, bucket: str) -> Daemon:
    """moto's S3 server on ``port`` with an empty ``bucket`` (moto keeps its state in memory:
    a restarted server has to be given the bucket again)."""
    import boto3

    daemon = Daemon([binary("moto_server", path=os.path.dirname(sys.executable)), "-H", "127.0.0.1", "-p", str(port)],
                    port, log_path, ready_path="/")
    boto3.session.Session(**_credentials()).client("s3", endpoint_url=daemon.url).create_bucket(Bucket=bucket)
    return daemon


def s3_keys(url: str, bucket: str) -> list[str]:
    import boto3

    client = boto3.session.Session(**_credentials()).client("s3", endpoint_url=url)
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _credentials() -> dict[str, str]:
    return {"aws_access_key_id": DUMMY_AWS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key":
            DUMMY_AWS["AWS_SECRET_ACCESS_KEY"], "region_name": DUMMY_AWS["AWS_DEFAULT_REGION"]}


@pytest.fixture
def background(tmp_path) -> Iterator[Callable[..., object]]:
    """Start the process's background writer over ``tmp_path/spool``; always stopped after."""
    yield lambda **options: audit.start_background(tmp_path / "spool", **options)
    audit.stop_background(0.5)


@pytest.fixture
def blocked_trail(tmp_path, monkeypatch) -> Path:
    """A file trail that cannot be written (its parent is a file: unwritable for root too);
    unlinking the returned path brings the store back."""
    blocker = tmp_path / "trail"
    blocker.write_text("a file where the trail's directory should be")
    monkeypatch.setenv("MLOPS_AUDIT_URI", (blocker / "audit").as_uri())
    return blocker


@pytest.fixture
def hung_s3(monkeypatch) -> Iterator[int]:
    """An S3 endpoint that takes connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    for key, value in DUMMY_AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("MLOPS_AUDIT_URI", "s3://hung/audit")
    yield listener.getsockname()[1]
    listener.close()


def spool_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool").glob("*.json"))


def timed_record(*args, **fields) -> tuple[audit.AuditEvent, float]:
    started = time.monotonic()
    event = audit.record(*args, **fields)
    return event, time.monotonic() - started


def test_an_event_the_store_refuses_waits_in_the_spool_and_arrives_when_it_is_back(
        tmp_path, blocked_trail, background, caplog):
    background()
    event, took = timed_record("autoserve.switch", model="iris", alias="Production", from_version=1, to_version=2)
    assert took < 0.1 and "-autoserve.switch-" in event.key  # the key is made now, once
    wait_for(lambda: audit.background_stats()["spooled"] == 1, 10, what="the event in the spool")
    [spooled] = spool_files(tmp_path)
    kept = json.loads(spooled.read_text())
    assert kept["key"] == event.key and json.loads(kept["body"])["to_version"] == 2
    assert "audit store unavailable; events wait in the spool" in caplog.text

    blocked_trail.unlink()  # the store is back
    [arrived] = wait_for(lambda: audit.list_events(model="iris"), ARRIVES_S, what="the spooled event in the trail")
    assert (arrived.key, arrived.action, arrived.from_version, arrived.to_version) == (
        event.key, "autoserve.switch", 1, 2)
    assert spool_files(tmp_path) == []
    assert audit.background_stats() == {"queued": 0, "spooled": 0, "sent": 1, "dropped": 0}


def test_a_new_writer_sends_what_the_last_one_spooled_and_a_resend_is_recognised_by_its_key(
        tmp_path, blocked_trail, background):
    background()
    keys = [audit.record("autoserve.deploy", model="iris", version=v).key for v in (1, 2, 3)]
    wait_for(lambda: len(spool_files(tmp_path)) == 3, 10, what="three events in the spool")
    audit.stop_background(1)  # the watcher stops with the store still away
    assert [json.loads(p.read_text())["key"] for p in spool_files(tmp_path)] == keys  # oldest first
    resend = tmp_path / "copy.json"
    shutil.copy(spool_files(tmp_path)[0], resend)
    (tmp_path / "spool" / "garbage.json").write_text("{not json")

    blocked_trail.unlink()
    background()  # the next run, over the same spool
    wait_for(lambda: len(audit.list_events(model="iris")) == 3, ARRIVES_S, what="the last run's events")
    assert [e.key for e in audit.list_events(model="iris")] == keys
    assert [e.version for e in audit.list_events(model="iris")] == [1, 2, 3]
    assert spool_files(tmp_path) == [] and (tmp_path / "spool" / "garbage.bad").exists()  # set aside, kept

    audit.stop_background(1)
    shutil.copy(resend, tmp_path / "spool" / resend.name)  # a send that was made twice (at-least-once)
    background()
    wait_for(lambda: spool_files(tmp_path) == [], ARRIVES_S, what="the re-sent event taken")
    assert [e.key for e in audit.list_events(model="iris")] == keys  # the same key: no second event
    assert audit.background_stats()["sent"] == 1


def test_the_spool_keeps_its_limit_and_drops_the_oldest(tmp_path, blocked_trail, background, caplog):
    background(spool_limit=5)
    keys = [audit.record("rollout.step", "passed", model="iris", version=i).key for i in range(20)]
    wait_for(lambda: audit.background_stats()["queued"] == 0, 10, what="the queue emptied into the spool")
    stats = audit.background_stats()
    assert (stats["spooled"], stats["dropped"], stats["sent"]) == (5, 15, 0)
    assert [json.loads(p.read_text())["key"] for p in spool_files(tmp_path)] == keys[-5:]
    assert "audit events lost: the spool is full (5 events): the oldest were dropped" in caplog.text

    blocked_trail.unlink()
    wait_for(lambda: len(audit.list_events(model="iris")) == 5, ARRIVES_S, what="the five kept events")
    assert [e.key for e in audit.list_events(model="iris")] == keys[-5:]


def test_a_hung_store_neither_blocks_record_nor_stop_and_the_queue_keeps_its_limit(tmp_path, hung_s3, background):
    background(queue_limit=2)
    started = time.monotonic()
    keys = [audit.record("autoserve.deploy", model="iris", version=i).key for i in range(10)]
    assert time.monotonic() - started < 1.0  # ten events, the store hung: no caller waited for it
    stats = audit.background_stats()
    assert stats["queued"] <= 3 and stats["queued"] + stats["spooled"] == 10  # 2 queued + 1 being sent, at most

    started = time.monotonic()
    audit.stop_background(0.5)
    assert time.monotonic() - started < 2.0
    # Nothing lost: the queue and the send still hanging went to the spool.
    assert sorted(json.loads(p.read_text())["key"] for p in spool_files(tmp_path)) == sorted(keys)


def test_strict_events_stay_in_line_and_give_up_on_a_hung_store_within_seconds(tmp_path, hung_s3, background):
    background()
    started = time.monotonic()
    with pytest.raises(audit.AuditUnavailable, match="audit event alias.set could not be written to s3://hung/audit"):
        audit.record("alias.set", strict=True, model="iris", alias="Production", to_version=2)
    took = time.monotonic() - started
    assert took < 10, f"a strict write waited {took:.1f} s for a hung store"
    assert spool_files(tmp_path) == [] and audit.background_stats()["queued"] == 0  # refused, not deferred


def test_s3_stopped_and_started_again_on_the_same_port_gets_the_spooled_event(tmp_path, background, monkeypatch):
    for key, value in DUMMY_AWS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    moto = moto_on(port, tmp_path / "moto.log", "trail")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("MLOPS_AUDIT_URI", "s3://trail/team-a")
    background()
    first = audit.record("autoserve.deploy", model="iris", version=1)
    wait_for(lambda: s3_keys(moto.url, "trail") == [f"team-a/{first.key}"], 10, what="the first event in S3")

    moto.stop()
    event, took = timed_record("autoserve.switch", model="iris", alias="Production", from_version=1, to_version=2)
    assert took < 0.1
    wait_for(lambda: audit.background_stats()["spooled"] == 1, 10, what="the event in the spool")

    moto = moto_on(port, tmp_path / "moto.log", "trail")  # back, empty: moto keeps nothing across a restart
    try:
        wait_for(lambda: s3_keys(moto.url, "trail") == [f"team-a/{event.key}"], ARRIVES_S, what="the event in S3")
        [arrived] = audit.list_events()
        assert (arrived.action, arrived.from_version, arrived.to_version) == ("autoserve.switch", 1, 2)
        assert spool_files(tmp_path) == [] and audit.background_stats()["sent"] == 2
    finally:
        moto.stop()
