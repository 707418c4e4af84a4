"""Tables (SQLAlchemy Core) and versioned migrations.

The schema version lives in ``cronium_meta``; :func:`check_schema` refuses to start on a
database whose version is not :data:`SCHEMA_VERSION`, and :func:`upgrade` applies the missing
migrations in order, each in its own transaction.

Timestamps are timezone-aware UTC in Python. PostgreSQL stores them as ``timestamptz``;
SQLite as ISO-8601 text in UTC, which sorts and compares correctly as text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .errors import SchemaVersionError

__all__ = ["SCHEMA_VERSION", "check_schema", "metadata", "schema_version", "upgrade"]


class UTCDateTime(sa.TypeDecorator[datetime]):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(32))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # "YYYY-MM-DD HH:MM:SS.ffffff" (isoformat is twice as fast as strftime)
            return value.isoformat(" ", "microseconds")[:-6]
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            # stored without an offset, in UTC (parsing it with one is faster than replace())
            return datetime.fromisoformat(value + "+00:00")
        assert isinstance(value, datetime)
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = UTCDateTime

metadata = sa.MetaData()

meta = sa.Table(
    "cronium_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("definition", JSONType, nullable=False),
    sa.Column("next_fire_time", Timestamp, nullable=True),
    sa.Column("runs_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("runs_succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("runs_failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_run_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("owner", "name", name="uq_events_owner_name"),
    sa.Index("ix_events_next_fire", "next_fire_time"),
)

workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("definition", JSONType, nullable=False),
    sa.Column("next_fire_time", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("owner", "name", name="uq_workflows_owner_name"),
    sa.Index("ix_workflows_next_fire", "next_fire_time"),
)

workflow_runs = sa.Table(
    "workflow_runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("workflow_id", sa.String(36), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    # the workflow as it was when the run started: later edits do not change a running run
    sa.Column("definition", JSONType, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("input", JSONType, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("fire_time", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp, nullable=True),
)

workflow_node_runs = sa.Table(
    "workflow_node_runs",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("output", JSONType, nullable=True),
    sa.Column("condition", sa.Boolean, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started_at", Timestamp, nullable=True),
    sa.Column("finished_at", Timestamp, nullable=True),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("event_id", sa.String(36), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("input", JSONType, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("backoff_base", sa.Float, nullable=False, server_default="1"),
    sa.Column("backoff_max", sa.Float, nullable=False, server_default="300"),
    sa.Column("timeout", sa.Float, nullable=False, server_default="3600"),
    sa.Column("run_after", Timestamp, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("executor", sa.String(32), nullable=False, server_default="local"),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    # a fresh id per claim: every write of a running attempt is fenced on it
    sa.Column("lease_id", sa.String(80), nullable=True),
    sa.Column("lease_expires", Timestamp, nullable=True),
    sa.Column("heartbeat_at", Timestamp, nullable=True),
    sa.Column("started_at", Timestamp, nullable=True),
    sa.Column("finished_at", Timestamp, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("output", JSONType, nullable=True),
    sa.Column("condition", sa.Boolean, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("concurrency_key", sa.String(64), nullable=True),
    sa.Column("concurrency_limit", sa.Integer, nullable=True),
    sa.Column("fire_time", Timestamp, nullable=True),
    sa.Column("backfilled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("workflow_run_id", sa.String(36), nullable=True),
    sa.Column("node_id", sa.String(64), nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("log_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("log_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("log_truncated", sa.Boolean, nullable=False, server_default=sa.false()),
)

# The job indexes are partial: an entry exists only while a job needs one (queued, running,
# a limit, a key), so that the bulk of the table (finished jobs without keys) costs the indexes
# nothing, and inserts and updates write fewer entries (measured: a fifth less server time per
# drained job on PostgreSQL). The queue's queries spell statuses as literals, which is what lets
# the planners use them.
_QUEUED = sa.text("status = 'queued'")
_RUNNING = sa.text("status = 'running'")
_RUNNING_LIMITED = sa.text("status = 'running' AND concurrency_key IS NOT NULL")
#: the claim's ORDER BY exactly: a claim reads the first due entries and stops, however deep
#: the queue (NULL fire times last, as an expression both databases can index)
sa.Index(
    "ix_jobs_claim",
    jobs.c.priority.desc(),
    jobs.c.run_after,
    jobs.c.created_at,
    jobs.c.fire_time.is_(None),
    jobs.c.fire_time,
    jobs.c.id,
    postgresql_where=_QUEUED,
    sqlite_where=_QUEUED,
)
#: the reaper's expired leases
sa.Index("ix_jobs_lease", jobs.c.lease_expires, postgresql_where=_RUNNING, sqlite_where=_RUNNING)
#: running jobs per concurrency key (the claim's limit check)
sa.Index(
    "ix_jobs_concurrency",
    jobs.c.concurrency_key,
    postgresql_where=_RUNNING_LIMITED,
    sqlite_where=_RUNNING_LIMITED,
)
#: a workflow run's jobs
sa.Index(
    "ix_jobs_workflow_run_id",
    jobs.c.workflow_run_id,
    postgresql_where=jobs.c.workflow_run_id.isnot(None),
    sqlite_where=jobs.c.workflow_run_id.isnot(None),
)
#: one job per idempotency key (an enqueue's ON CONFLICT names this predicate)
sa.Index(
    "uq_jobs_idempotency_key",
    jobs.c.idempotency_key,
    unique=True,
    postgresql_where=jobs.c.idempotency_key.isnot(None),
    sqlite_where=jobs.c.idempotency_key.isnot(None),
)

job_logs = sa.Table(
    "job_logs",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("stream", sa.String(8), nullable=False),
    sa.Column("time", Timestamp, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
)

schedule_fires = sa.Table(
    "schedule_fires",
    metadata,
    # the event or workflow whose schedule fired; the unique key makes a fire time one job
    sa.Column("owner_id", sa.String(36), primary_key=True),
    sa.Column("fire_time", Timestamp, primary_key=True),
    sa.Column("owner_kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # enqueued | skipped | missed
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("backfilled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("scheduler", sa.String(128), nullable=True),
    sa.Column("recorded_at", Timestamp, nullable=False),
)

V1_TABLES = [
    meta,
    events,
    workflows,
    workflow_runs,
    workflow_node_runs,
    jobs,
    job_logs,
    schedule_fires,
]


async def _v1(conn: AsyncConnection) -> None:
    await conn.run_sync(lambda sync: metadata.create_all(sync, tables=V1_TABLES))


variables = sa.Table(
    "variables",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    # a plain variable's JSON value; NULL for a secret
    sa.Column("value", JSONType, nullable=True),
    # a secret's value, encrypted (cronium_core.crypto) and bound to this row; NULL otherwise
    sa.Column("ciphertext", sa.Text, nullable=True),
    # the key that sealed the ciphertext: what a key rotation looks for
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("secret", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("owner", "key", name="uq_variables_owner_key"),
    sa.CheckConstraint(
        "(secret AND ciphertext IS NOT NULL) OR (NOT secret AND ciphertext IS NULL)",
        name="ck_variables_secret_sealed",
    ),
    sa.Index("ix_variables_key_id", "key_id"),
)

V2_TABLES = [variables]


async def _v2(conn: AsyncConnection) -> None:
    await conn.run_sync(lambda sync: metadata.create_all(sync, tables=V2_TABLES))


Migration = Callable[[AsyncConnection], Awaitable[None]]

#: version -> migration that brings the schema from version-1 to version
MIGRATIONS: dict[int, Migration] = {1: _v1, 2: _v2}
SCHEMA_VERSION = max(MIGRATIONS)


async def schema_version(conn: AsyncConnection) -> int | None:
    def _has_meta(sync: sa.Connection) -> bool:
        return sa.inspect(sync).has_table("cronium_meta")

    if not await conn.run_sync(_has_meta):
        return None
    value = await conn.scalar(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
    return int(value) if value is not None else None


async def check_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        found = await schema_version(conn)
    if found != SCHEMA_VERSION:
        raise SchemaVersionError(found, SCHEMA_VERSION)


async def upgrade(engine: AsyncEngine) -> list[int]:
    """Apply missing migrations; returns the versions applied. Safe to run concurrently on
    PostgreSQL (an advisory lock serializes upgraders)."""
    applied: list[int] = []
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7242001)"))
        current = await schema_version(conn) or 0
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(current, SCHEMA_VERSION)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await MIGRATIONS[version](conn)
            stmt: sa.Executable
            if version == 1:
                stmt = sa.insert(meta).values(key="schema_version", value="1")
            else:
                stmt = (
                    sa.update(meta).where(meta.c.key == "schema_version").values(value=str(version))
                )
            await conn.execute(stmt)
            applied.append(version)
    return applied
