"""Database: SQLAlchemy tables (tokens, datasets, uploads, sweeps, jobs, metric points, events, side tasks,
webhooks, usage) and a session factory.

The database is the source of truth; ``init_db`` brings its schema to this version at start with Alembic's
revisions (store/migrate.py, store/migrations/), and refuses one from a newer MoL Studio.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    false,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from mol_engine.callbacks import strict_dumps

# what ``schema_version`` holds since Alembic took over (store/migrations/versions/0002): releases from before
# (versions 1 to 8) read it as newer than theirs and refuse the database; ``alembic_version`` says the rest
SCHEMA_VERSION = 9
MAX_SEQ = 2**31 - 1  # metric and event seq columns are INTEGER: 32 bits on PostgreSQL


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def is_id(value: str) -> bool:
    """Whether ``value`` could name a row: ids are short ASCII words; anything else (NUL, which PostgreSQL
    refuses in text, or a 5000-character path) is unknown without asking the database."""
    return re.fullmatch(r"[A-Za-z0-9_-]{1,40}", value) is not None


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class ApiToken(Base):
    __tablename__ = "api_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    purpose: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str] = mapped_column(String(255))  # as the client named it; display only
    path: Mapped[str] = mapped_column(Text)  # server-chosen
    bytes: Mapped[int] = mapped_column(BigInteger)  # 64-bit: a multi-GB corpus overflows PostgreSQL's INTEGER
    documents: Mapped[int] = mapped_column(Integer)
    approx_tokens: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def token_stores(self) -> list[dict[str, Any]]:
        """Tokens and documents per tokenizer, from the token stores jobs built of this file (none before)."""
        from mol_engine.token_store import store_stats

        return store_stats(self.path)


class Upload(Base):
    """A file arriving in parts (api/routes/uploads). The rows hold the state because completing must be one
    atomic step (pending -> completing, then -> completed with its dataset), which a database gives across
    API processes; the bytes themselves stay on disk under ``MOL_HOME/uploads/<id>/``."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("up"))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    purpose: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str] = mapped_column(String(255))
    mime_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    bytes: Mapped[int] = mapped_column(BigInteger)  # declared by the client; the parts must add up to it
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|completing|completed|cancelled
    dataset_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    parts: Mapped[list[UploadPart]] = relationship(lazy="selectin", order_by="UploadPart.index",
                                                   cascade="all, delete-orphan")

    @property
    def received_bytes(self) -> int:
        """Bytes in the parts received so far."""
        return sum(part.bytes for part in self.parts)


class UploadPart(Base):
    __tablename__ = "upload_parts"
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column("part_index", Integer, primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(String(100))  # its name in the upload's directory


class Sweep(Base):
    """A group of jobs on the same data and seed, one per point of a grid over the base spec (api/routes/sweeps)."""

    __tablename__ = "sweeps"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("swp"))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    base_spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as the client sent it
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)  # spec field -> list of values
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # JobSpec with dataset and model ids
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    max_steps: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)  # why it succeeded early: budget
    last_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # a pause asked of a running job: its runner saves a checkpoint at its next step and ends it ``paused``
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # as 0004
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    sweep_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)  # the sweep it belongs to
    # lineage of a job continued from a checkpoint (store/lineage.py): its parent job, the parent's checkpoint
    # (step-N, as resolved at submit) and the base model id the first job of the chain trained from
    parent_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    parent_checkpoint: Mapped[str | None] = mapped_column(String(40), nullable=True)
    original_base_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # GET /v1/jobs pages an owner's jobs newest first by (created_at, id): one index range scan per page
    __table_args__ = (Index("ix_jobs_owner_created_id", "owner", "created_at", "id"),)

    @property
    def progress(self) -> float:
        """Fraction of ``max_steps`` done."""
        return (self.step or 0) / max(self.max_steps, 1)

    @property
    def base_model(self) -> str | None:
        """The spec's base model id, which job lists show instead of the whole spec."""
        return self.spec.get("base_model")

    @property
    def method(self) -> str | None:
        """The spec's method (a ``mol_engine.spec.Method``)."""
        return self.spec.get("method")

    @property
    def priority(self) -> int:
        """The spec's scheduling priority (0 for specs stored before the field existed)."""
        return int(self.spec.get("priority") or 0)


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` a client sent with ``POST /v1/jobs``: the job it made and a hash of the request,
    so a retry returns that job instead of making another (for ``store.jobs.IDEMPOTENCY_TTL``)."""

    __tablename__ = "idempotency_keys"
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class MetricPoint(Base):
    __tablename__ = "metric_points"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (Index("ix_metric_points_job_seq", "job_id", "seq"),)


class JobEvent(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)


class SideTask(Base):
    """Work a worker does for an owner beside training: an ``interpolation`` or a ``task-evaluation`` of a job.
    ``queued`` or ``running`` it counts against the owner's cap, and an identical request (``request_sha256``)
    finds it instead of queueing another (api/side_tasks.py); the worker task marks it ``done`` or ``failed``."""

    __tablename__ = "side_tasks"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("side"))
    owner: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued|running|done|failed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    __table_args__ = (Index("ix_side_tasks_owner_status", "owner", "status"),
                      Index("ix_side_tasks_job_request", "job_id", "request_sha256"))


class WebhookEndpoint(Base):
    """Where an owner's job events are sent (api/webhooks.py); ``secret`` signs each delivery, so it is kept."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every event type
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row written with the job's state change, then sent (and retried)
    by the dispatcher until it succeeds or its attempts run out. ``id`` is the ``webhook-id`` every attempt
    carries, so a receiver can drop duplicates; ``attempts_log`` lists each attempt's outcome."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # no key: the log outlives the job
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|succeeded|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempts_log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
                      Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"))

    @property
    def due_at(self) -> datetime | None:
        """When it is tried next; None once it succeeded or failed for good."""
        return self.next_attempt_at if self.status == "pending" else None


class UsageRecord(Base):
    """What one attempt of a job used on one UTC day (store/usage.py meters it): ``seconds`` of wall time its runner
    held the lease, on ``processes`` processes, and the ``tokens`` of the steps it completed first (a step redone
    after a resume counts once). No key to ``jobs``: the figures outlive a deleted job, for the day's quota."""

    __tablename__ = "usage_records"
    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    processes: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # only grows: the attempt's lease time that day
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (Index("ix_usage_records_owner_day", "owner", "day"),)


class JobStorage(Base):
    """A job's run directory (checkpoints, logs) on disk, as its runner last measured it (store/usage.py)."""

    __tablename__ = "job_storage"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerSeen(Base):
    __tablename__ = "workers_seen"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    capacity: Mapped[int] = mapped_column(Integer, default=1)  # processes (GPUs) it gives one job: largest nproc
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)  # "cpu (8 cores)", "cuda: 2 x NVIDIA H100"
    # MiB one job process has: its GPU's total memory (the smallest visible), or the host's RAM on a CPU worker
    memory_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the job it runs now, if any


class SchemaVersion(Base):
    """The hand-written migrations' version table, frozen at SCHEMA_VERSION since Alembic took over."""

    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


def _read_json(text: str) -> Any:
    """A JSON column's value; NaN or Infinity, which versions before 2 could store on SQLite, reads as None."""
    return json.loads(text, parse_constant=lambda _name: None)


# Every JSON column (metric values, event data, last metrics) holds standard JSON: a NaN metric is stored as
# null, so that PostgreSQL (which refuses NaN in json) accepts it and every answer and SSE message parses.
JSON_CODEC = {"json_serializer": strict_dumps, "json_deserializer": _read_json}


@event.listens_for(Session, "before_flush")
def _events_of_a_job_commit_in_seq_order(session: Session, _context, _instances) -> None:
    """On PostgreSQL, a transaction that adds events to a job first locks the job's row, so events of one job are
    written one transaction at a time and commit in the order of their ``seq``: a stream that has read seq N has
    seen every earlier event of that job. Without it two writers (a runner's checkpoint event, the API's cancel)
    could commit out of order and a live stream would skip the earlier one. SQLite writes one at a time already."""
    job_ids = sorted({row.job_id for row in session.new if isinstance(row, JobEvent)})
    if not job_ids or session.get_bind().dialect.name != "postgresql":
        return
    connection = session.connection()
    for job_id in job_ids:  # in one order, so two transactions never wait on each other's jobs
        connection.execute(select(Job.id).where(Job.id == job_id).with_for_update())


def make_engine(url: str, pool_size: int = 20, max_overflow: int = 20, pool_timeout_s: float = 30) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so the API and workers can share it.

    The pool holds ``pool_size`` connections plus ``max_overflow`` more under load; a checkout waits at most
    ``pool_timeout_s`` for one. No request holds one while it waits on its client (api/deps.py).
    """
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout_s}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool, **JSON_CODEC)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            _wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **pool, **JSON_CODEC)


def _wal(cursor, tries: int = 50) -> None:
    """Switch the SQLite database to WAL. Connections switching a new database at once (the API and workers
    starting) each hold a read lock and wait for the write lock: SQLite answers one of them ``database is locked``
    at once, without its busy timeout, rather than deadlock (4 threads on a new file: 43 of 200 tries). So each
    tries again, for up to ~5 s; once one has switched, the mode is the file's and the others' switch is a read."""
    for attempt in range(tries):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == tries - 1:
                raise
            time.sleep(0.1)


class DatabaseUnreachable(RuntimeError):
    """The database did not answer at start; the message says where (password hidden) and why, on one line."""


def open_database(url: str, **pool: float) -> sessionmaker:
    """:func:`init_db` on a new engine for ``url`` (``pool``: make_engine's options); DatabaseUnreachable when
    the database does not answer."""
    engine = make_engine(url, **pool)
    try:
        return init_db(engine)
    except DBAPIError as err:
        engine.dispose()
        where = make_url(url)
        reason = " ".join(str(err.orig or err).split())
        if where.password:
            reason = reason.replace(where.password, "***")
        raise DatabaseUnreachable(f"cannot reach the database at {where.render_as_string(hide_password=True)}: "
                                  f"{reason}") from None


@functools.cache
def sessions_for(url: str) -> sessionmaker:
    """This process's session factory for the database at ``url``: one engine (and its pool) per process, made
    (and the schema checked) on first use, shared by every task a worker runs."""
    return init_db(make_engine(url))


def init_db(engine: Engine) -> sessionmaker:
    """Bring the schema to this version (creating it in an empty database, migrating an older one, refusing one
    from a newer MoL Studio with store.migrate.SchemaFromAnotherVersion), and return a session factory."""
    from store.migrate import upgrade  # Alembic takes a quarter second to import: only where a database opens

    with engine.begin() as connection:
        upgrade(connection)
    return sessionmaker(engine, expire_on_commit=False)
