"""The gateway's payload log: sampled requests land in the real app-db (PostgreSQL under
CI) off the request path; a database that is away costs no request; the buffer is bounded in
rows and bytes; a row the database refuses is lost alone; old rows are pruned."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from pathlib import Path

import pytest
from mlops_autoserve.gateway.payloadlog import BATCH_ROWS, PayloadLog
from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.settings import GatewaySettings
from sqlalchemy import create_engine, func, select

from mlops_toolkit.batch import appdb
from tests.conftest import _postgres_database, need
from tests.harness import IRIS_SPLIT, Watcher, wait_for

DEPLOY_TIMEOUT = 120
PASSWORD = "s3cret-not-for-logs"  # PostgreSQL here trusts loopback: any password connects


def _with_password(url: str) -> str:
    if not url.startswith("postgresql"):
        return url
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def _count(engine, **where) -> int:
    return appdb.count_rows(engine, appdb.payload_log, **where)


@pytest.mark.slow
def test_sampled_requests_land_in_the_app_db_and_the_password_stays_out_of_sight(
        tracking_uri, served_model, app_db_url, tmp_path):
    url = _with_password(app_db_url)
    engine = create_engine(app_db_url)
    model, v1 = served_model.name, served_model.good[0]
    watcher = Watcher(tracking_uri, tmp_path / "state", [model], "--aliases", "Production",
                      "--payload-log-rate", "0.5", "--payload-log-db", url).start()
    try:
        watcher.serving(model, DEPLOY_TIMEOUT, Production=v1)
        sent = 400
        assert {watcher.invoke(model, "Production")[0] for _ in range(sent)} == {200}

        def settled() -> int:
            """Rows in the table, once a flush interval passed without new ones and the gateway
            counts exactly as many written."""
            before = _count(engine, model_name=model)
            time.sleep(1.5)
            after = _count(engine, model_name=model)
            counted = watcher.metric("autoserve_payload_log_rows_total", result="written")
            return after if after == before == counted and after > 0 else 0

        written = wait_for(settled, 30, what="the payload-log writer caught up")
        # 400 fair coin flips: mean 200, standard deviation 10; 140..260 is six deviations.
        assert 140 <= written <= 260, written
        assert watcher.metric("autoserve_payload_log_rows_total", result="dropped") == 0
        with engine.connect() as connection:
            row = connection.execute(select(appdb.payload_log).where(appdb.payload_log.c.model_name == model)).first()
        assert (row.alias, row.model_version, row.status) == ("Production", v1, 200)
        assert json.loads(row.request) == IRIS_SPLIT and len(json.loads(row.response)["predictions"]) == 2
        assert 0 < row.latency_ms < 5000 and row.logged_at is not None

        gateway = watcher.gateway_pid()
        cmdline = Path(f"/proc/{gateway}/cmdline").read_bytes().decode(errors="replace")
        if url != app_db_url:  # PostgreSQL: the URL carried a password
            assert PASSWORD not in cmdline
            assert PASSWORD not in (watcher.state_dir / "gateway.json").read_text()
            assert PASSWORD not in (watcher.state_dir / "logs" / "gateway.log").read_text()
    finally:
        watcher.stop()
        engine.dispose()


def test_a_database_that_is_away_costs_no_request_and_memory_stays_bounded():
    """A refused port: every batch fails and is counted; the buffer never grows past its
    bound, and offering (what the request path does) never waits for the database."""
    metrics = GatewayMetrics()
    settings = GatewaySettings(payload_log_rate=1.0, payload_log_buffer=100,
                               payload_log_db="postgresql+psycopg://nobody@127.0.0.1:1/none")
    log = PayloadLog(settings, metrics, random.Random(0))
    log.start()
    try:
        started = time.monotonic()
        for _ in range(5000):
            log.offer("m", "Production", "1", b'{"inputs": [[1]]}', b'{"predictions": [0]}', 200, 0.002)
        offering = time.monotonic() - started
        assert log.buffer.qsize() <= 100
        counted = metrics.payload_log_rows
        # every row is dropped, counted in a failed batch, waiting in the buffer, or in the one
        # batch the writer holds right now (a slow machine lets it fail several batches meanwhile)
        accounted = sum(counted.labels(r)._value.get() for r in ("dropped", "failed")) + log.buffer.qsize()
        assert accounted >= 5000 - BATCH_ROWS and counted.labels("dropped")._value.get() > 0
        assert metrics.limits_total.labels("payload_log_bytes")._value.get() == 0  # rows ran out, not bytes
        wait_for(lambda: counted.labels("failed")._value.get() > 0, 15, what="a failed batch counted")
    finally:
        log.stop()
    print(f"5,000 offers with the database away: {offering * 1000:.1f} ms")


def test_rows_past_the_retention_are_pruned_and_big_bodies_are_skipped(app_db_url):
    engine = create_engine(app_db_url)
    appdb.migrate(engine)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    appdb.insert_payloads(engine, [{"logged_at": old, "model_name": "retention", "alias": "Production",
                                    "model_version": 1, "status": 200, "latency_ms": 1.0, "request": "{}",
                                    "response": "{}"}])
    metrics = GatewayMetrics()
    settings = GatewaySettings(payload_log_rate=1.0, payload_log_db=app_db_url, payload_log_retention_days=1,
                               payload_log_max_body_bytes=1024)
    log = PayloadLog(settings, metrics, random.Random(0))
    log.start()
    try:
        log.offer("retention", "Production", "2", b'{"inputs": [[1]]}', b'{"predictions": [0]}', 200, 0.002)
        log.offer("retention", "Production", "2", b"x" * 2048, b"{}", 200, 0.002)
        wait_for(lambda: metrics.payload_log_rows.labels("written")._value.get() == 1, 15, what="one row written")
        wait_for(lambda: _count(engine, model_name="retention", model_version=1) == 0, 15, what="the old row pruned")
    finally:
        log.stop()
    assert _count(engine, model_name="retention") == 1
    assert metrics.payload_log_rows.labels("skipped")._value.get() == 1
    with engine.connect() as connection:
        assert connection.execute(select(func.max(appdb.payload_log.c.model_version))).scalar() == 2
    engine.dispose()


def _value(metrics: GatewayMetrics, result: str) -> float:
    return metrics.payload_log_rows.labels(result)._value.get()


def test_a_row_the_database_refuses_is_lost_alone_and_counted(app_db_url):
    """PostgreSQL takes no NUL character in text: in a batch of 50 rows, the one whose request
    holds one is refused (counted), the 49 others are written."""
    need(app_db_url.startswith("postgresql"), "PostgreSQL at 127.0.0.1:5432 (SQLite stores a NUL)")
    engine = create_engine(app_db_url)
    metrics = GatewayMetrics()
    log = PayloadLog(GatewaySettings(payload_log_rate=1.0, payload_log_db=app_db_url), metrics, random.Random(0))
    bad = 17
    for i in range(50):
        request = b'{"inputs": [[1]]}\x00' if i == bad else b'{"inputs": [[1]]}'
        log.offer("refusal", "Production", "1", request, b'{"predictions": [0]}', 200, i / 1000)
    assert log.buffer.qsize() == 50  # all waiting before the writer starts: they go in one batch
    log.start()
    try:
        wait_for(lambda: _value(metrics, "written") + _value(metrics, "refused") == 50, 30,
                 what="the batch settled")
    finally:
        log.stop()
    assert (_value(metrics, "written"), _value(metrics, "refused"), _value(metrics, "failed")) == (49, 1, 0)
    with engine.connect() as connection:
        latencies = connection.execute(select(appdb.payload_log.c.latency_ms)
                                       .where(appdb.payload_log.c.model_name == "refusal")).scalars().all()
    assert sorted(round(ms) for ms in latencies) == [i for i in range(50) if i != bad]
    engine.dispose()


def test_the_buffer_is_bounded_in_bytes_and_the_writer_frees_them(app_db_url):
    """0.01 MiB (10,485 bytes) of waiting bodies holds ten rows of 1,024 bytes: the next 90
    offers are dropped and counted as a payload_log_bytes limit while the 10,000-row bound is
    far away; once the writer took the ten, their bytes are free and offers are taken again."""
    metrics = GatewayMetrics()
    settings = GatewaySettings(payload_log_rate=1.0, payload_log_db=app_db_url, payload_log_buffer_mb=0.01)
    assert settings.payload_log_buffer == 10_000
    log = PayloadLog(settings, metrics, random.Random(0))
    request, response = b"x" * 1000, b"y" * 24  # the log stores bodies as they came: no need for JSON
    bytes_limit = metrics.limits_total.labels("payload_log_bytes")
    for _ in range(100):
        log.offer("bytes", "Production", "1", request, response, 200, 0.001)
    assert (log.buffer.qsize(), log.buffer.bytes) == (10, 10 * 1024)
    assert _value(metrics, "dropped") == 90 and bytes_limit._value.get() == 90
    log.start()
    try:
        wait_for(lambda: _value(metrics, "written") == 10, 30, what="the ten buffered rows written")
        assert log.buffer.bytes == 0
        for _ in range(10):
            log.offer("bytes", "Production", "1", request, response, 200, 0.001)
        wait_for(lambda: _value(metrics, "written") == 20, 30, what="ten more rows written")
    finally:
        log.stop()
    assert _value(metrics, "dropped") == 90 and bytes_limit._value.get() == 90
    engine = create_engine(app_db_url)
    assert _count(engine, model_name="bytes") == 20
    engine.dispose()


def test_a_database_gone_after_start_fails_a_batch_whole_without_trying_row_by_row():
    """The app-db is dropped while the writer holds a connection: the next 50 rows count as
    failed at the first connection error, none as refused (no row-by-row retries)."""
    url, drop = _postgres_database()
    need(url is not None, "PostgreSQL at 127.0.0.1:5432")
    dropped = False
    metrics = GatewayMetrics()
    log = PayloadLog(GatewaySettings(payload_log_rate=1.0, payload_log_db=url), metrics, random.Random(0))
    log.start()
    try:
        log.offer("gone", "Production", "1", b'{"inputs": [[1]]}', b'{"predictions": [0]}', 200, 0.001)
        wait_for(lambda: _value(metrics, "written") == 1, 30, what="the first row written")
        drop()
        dropped = True
        for _ in range(50):
            log.offer("gone", "Production", "1", b'{"inputs": [[1]]}', b'{"predictions": [0]}', 200, 0.001)
        wait_for(lambda: _value(metrics, "failed") == 50, 30, what="the 50 rows counted as failed")
    finally:
        log.stop()
        if not dropped:
            drop()
    assert (_value(metrics, "written"), _value(metrics, "refused")) == (1, 0)
