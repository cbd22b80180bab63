"""The application database: input batches, predictions and the gateway's payload log
(PostgreSQL, or SQLite embedded).

The schema is created and migrated by :func:`migrate` (idempotent, versioned in the
``mlops_schema`` table): nobody runs DDL by hand. Writes for one logical date happen in one
transaction, delete-then-insert, so a re-run of the same date never duplicates rows.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

from mlops_toolkit.errors import ValidationError

metadata = MetaData()

schema_table = Table(
    "mlops_schema", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

input_rows = Table(
    "input_rows", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_date", Date, nullable=False, index=True),
    Column("row_index", Integer, nullable=False),
    Column("features", JSON, nullable=False),
    Column("label", Integer),
    UniqueConstraint("batch_date", "row_index", name="uq_input_rows_date_row"),
)

predictions = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_date", Date, nullable=False, index=True),
    Column("row_index", Integer, nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("alias", String(256), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("run_id", String(64)),
    Column("prediction", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("batch_date", "row_index", "model_name", "alias", name="uq_predictions_date_row_model"),
)


payload_log = Table(
    "payload_log", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("logged_at", DateTime(timezone=True), nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("alias", String(256), nullable=False),
    Column("model_version", Integer, nullable=False),  # the version that answered (a canary's, during a rollout)
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("request", Text, nullable=False),  # the body as sent, UTF-8
    Column("response", Text, nullable=False),
    Index("ix_payload_log_model_time", "model_name", "logged_at"),
    Index("ix_payload_log_time", "logged_at"),
)


def _v1(connection: Connection) -> None:
    metadata.create_all(connection, tables=[input_rows, predictions])


def _v2(connection: Connection) -> None:
    metadata.create_all(connection, tables=[payload_log])


# Append new steps; never edit an applied one.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2]
MIGRATION_LOCK_KEY = 7240581  # pg_advisory_xact_lock key: one migrating transaction at a time


def engine_from_env(url: str | None = None) -> Engine:
    """The app-db engine from ``url`` or ``APP_DB_URL``; a clear error when neither is set."""
    url = url or os.environ.get("APP_DB_URL")
    if not url:
        raise ValidationError("no app database: set APP_DB_URL (e.g. postgresql+psycopg://user@host/db or sqlite:///app.db)")
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version; returns it. Safe to call on every task start,
    also from tasks that start at the same moment: on PostgreSQL a transaction-scoped
    advisory lock serialises them (two concurrent CREATE TABLEs collide on pg_type)."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        metadata.create_all(connection, tables=[schema_table])
        current = connection.execute(select(func.max(schema_table.c.version))).scalar() or 0
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            step(connection)
            connection.execute(insert(schema_table).values(version=version, applied_at=_now()))
        return len(MIGRATIONS)


def replace_for_date(engine: Engine, table: Table, batch_date: dt.date, rows: Iterable[dict],
                     **match: object) -> int:
    """Delete this date's rows (matching ``match`` columns too), insert ``rows``: one transaction."""
    rows = [{"batch_date": batch_date, **row} for row in rows]
    with engine.begin() as connection:
        condition = table.c.batch_date == batch_date
        for column, value in match.items():
            condition &= table.c[column] == value
        connection.execute(delete(table).where(condition))
        if rows:
            connection.execute(insert(table), rows)
    return len(rows)


def count_rows(engine: Engine, table: Table, **where: object) -> int:
    """Rows of ``table`` whose columns equal the given values."""
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as connection:
        return connection.execute(query).scalar()


def insert_payloads(engine: Engine, rows: list[dict]) -> int:
    """One batch of payload-log rows in one transaction (the gateway's writer calls this)."""
    if rows:
        with engine.begin() as connection:
            connection.execute(insert(payload_log), rows)
    return len(rows)


def prune_payload_log(engine: Engine, older_than: dt.datetime) -> int:
    """Delete payload-log rows logged before ``older_than``; returns how many went."""
    with engine.begin() as connection:
        return connection.execute(delete(payload_log).where(payload_log.c.logged_at < older_than)).rowcount


def read_payloads(engine: Engine, model: str, start: dt.datetime, end: dt.datetime,
                  status: int | None = 200) -> list[str]:
    """Request bodies of ``model`` logged in [start, end), oldest first (only answered ones by default)."""
    query = (select(payload_log.c.request)
             .where(payload_log.c.model_name == model, payload_log.c.logged_at >= start, payload_log.c.logged_at < end)
             .order_by(payload_log.c.logged_at))
    if status is not None:
        query = query.where(payload_log.c.status == status)
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
