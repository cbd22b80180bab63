"""The application database: input batches and predictions (PostgreSQL, or SQLite embedded).

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
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
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


def _v1(connection: Connection) -> None:
    metadata.create_all(connection, tables=[input_rows, predictions])


# Append new steps; never edit an applied one.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1]
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
