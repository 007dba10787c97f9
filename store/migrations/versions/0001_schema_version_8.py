"""The schema as version 8 of the hand-written migrations left it: the baseline.

An empty database gets every table. A database of a release before Alembic (a ``schema_version`` table, no
``alembic_version``) gets the tables it lacks and the hand-written steps from its version up to 8, as those
releases did at start; at version 8 nothing changes. The tables are written out here, not imported from
store/db.py, so that this revision stays what version 8 was when the models move on.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

from store.migrate import SchemaFromAnotherVersion

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION = 8
V8 = sa.MetaData()
TIME = sa.DateTime(timezone=True)


def _id(name: str = "id", **options) -> sa.Column:
    return sa.Column(name, sa.String(40), primary_key=True, **options)


def _owner(index: bool = True) -> sa.Column:
    return sa.Column("owner", sa.String(200), nullable=False, index=index)


def _created_at(index: bool = False) -> sa.Column:
    return sa.Column("created_at", TIME, nullable=False, index=index)


def _job_id() -> sa.Column:
    return sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)


sa.Table("api_tokens", V8, sa.Column("token_hash", sa.String(64), primary_key=True), _owner(), _created_at())
sa.Table("datasets", V8, _id(), _owner(), sa.Column("purpose", sa.String(20), nullable=False),
         sa.Column("filename", sa.String(255), nullable=False), sa.Column("path", sa.Text, nullable=False),
         sa.Column("bytes", sa.BigInteger, nullable=False), sa.Column("documents", sa.Integer, nullable=False),
         sa.Column("approx_tokens", sa.BigInteger, nullable=False),
         sa.Column("sha256", sa.String(64), nullable=False), _created_at())
sa.Table("uploads", V8, _id(), _owner(), sa.Column("purpose", sa.String(20), nullable=False),
         sa.Column("filename", sa.String(255), nullable=False), sa.Column("mime_type", sa.String(200)),
         sa.Column("bytes", sa.BigInteger, nullable=False), sa.Column("status", sa.String(20), nullable=False),
         sa.Column("dataset_id", sa.String(40)), _created_at(),
         sa.Column("expires_at", TIME, nullable=False, index=True))
sa.Table("upload_parts", V8,
         sa.Column("upload_id", sa.String(40), sa.ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True),
         sa.Column("part_index", sa.Integer, primary_key=True), sa.Column("bytes", sa.BigInteger, nullable=False),
         sa.Column("sha256", sa.String(64), nullable=False), sa.Column("file", sa.String(100), nullable=False))
sa.Table("sweeps", V8, _id(), _owner(), sa.Column("name", sa.String(200), nullable=False),
         sa.Column("base_spec", sa.JSON, nullable=False), sa.Column("grid", sa.JSON, nullable=False), _created_at())
sa.Table("jobs", V8, _id(), _owner(), sa.Column("name", sa.String(200), nullable=False),
         sa.Column("spec", sa.JSON, nullable=False), sa.Column("status", sa.String(20), nullable=False, index=True),
         sa.Column("step", sa.Integer, nullable=False), sa.Column("max_steps", sa.Integer, nullable=False),
         sa.Column("error", sa.Text), sa.Column("stop_reason", sa.String(40)),
         sa.Column("last_metrics", sa.JSON, nullable=False),
         sa.Column("cancel_requested", sa.Boolean, nullable=False),
         sa.Column("attempt", sa.Integer, nullable=False), sa.Column("lease_owner", sa.String(200)),
         sa.Column("heartbeat_at", TIME), _created_at(), sa.Column("started_at", TIME),
         sa.Column("finished_at", TIME), sa.Column("queued_at", TIME, nullable=False),
         sa.Column("sweep_id", sa.String(40), index=True),
         sa.Index("ix_jobs_owner_created_id", "owner", "created_at", "id"))
sa.Table("idempotency_keys", V8, sa.Column("owner", sa.String(200), primary_key=True),
         sa.Column("key", sa.String(255), primary_key=True),
         sa.Column("request_sha256", sa.String(64), nullable=False), _job_id(), _created_at(index=True))
sa.Table("metric_points", V8, sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True), _job_id(),
         sa.Column("step", sa.Integer, nullable=False), sa.Column("values", sa.JSON, nullable=False),
         sa.Index("ix_metric_points_job_seq", "job_id", "seq"))
sa.Table("job_events", V8, sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True), _job_id(),
         sa.Column("step", sa.Integer, nullable=False), sa.Column("kind", sa.String(40), nullable=False),
         sa.Column("message", sa.Text, nullable=False), sa.Column("data", sa.JSON, nullable=False), _created_at(),
         sa.Index("ix_job_events_job_seq", "job_id", "seq"))
sa.Table("side_tasks", V8, _id(), _owner(index=False), _job_id(), sa.Column("kind", sa.String(40), nullable=False),
         sa.Column("request_sha256", sa.String(64), nullable=False),
         sa.Column("status", sa.String(20), nullable=False), _created_at(), sa.Column("finished_at", TIME),
         sa.Index("ix_side_tasks_owner_status", "owner", "status"),
         sa.Index("ix_side_tasks_job_request", "job_id", "request_sha256"))
sa.Table("webhook_endpoints", V8, _id(), _owner(), sa.Column("url", sa.Text, nullable=False),
         sa.Column("events", sa.JSON, nullable=False), sa.Column("secret", sa.String(100), nullable=False),
         _created_at())
sa.Table("webhook_deliveries", V8, _id(),
         sa.Column("endpoint_id", sa.String(40), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
                   nullable=False),
         sa.Column("job_id", sa.String(40)), sa.Column("event_type", sa.String(40), nullable=False),
         sa.Column("payload", sa.JSON, nullable=False), sa.Column("status", sa.String(20), nullable=False),
         sa.Column("attempts", sa.Integer, nullable=False), sa.Column("attempts_log", sa.JSON, nullable=False),
         sa.Column("next_attempt_at", TIME, nullable=False), _created_at(),
         sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
         sa.Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"))
sa.Table("workers_seen", V8, sa.Column("name", sa.String(200), primary_key=True),
         sa.Column("last_seen", TIME, nullable=False), sa.Column("capacity", sa.Integer, nullable=False),
         sa.Column("device", sa.String(200)), sa.Column("job_id", sa.String(40)))
sa.Table("schema_version", V8, sa.Column("version", sa.Integer, primary_key=True))


def _columns(connection: Connection, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(connection).get_columns(table)}


def _widen_sizes(connection: Connection) -> None:
    """1 -> 2: dataset sizes become 64-bit (SQLite's INTEGER already is); the uploads tables are new."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("ALTER TABLE datasets ALTER COLUMN bytes TYPE BIGINT, "
                                   "ALTER COLUMN approx_tokens TYPE BIGINT"))


def _index_job_pages(connection: Connection) -> None:
    """2 -> 3: the (owner, created_at, id) index GET /v1/jobs pages by; the idempotency_keys table is new."""
    connection.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_jobs_owner_created_id ON jobs (owner, created_at, id)"))


def _add_worker_capacity(connection: Connection) -> None:
    """3 -> 4: workers record their capacity (the largest nproc they run); rows from before held one process."""
    if "capacity" not in _columns(connection, "workers_seen"):
        connection.execute(sa.text("ALTER TABLE workers_seen ADD COLUMN capacity INTEGER NOT NULL DEFAULT 1"))


def _add_stop_reason(connection: Connection) -> None:
    """4 -> 5: a job records why it succeeded before max_steps (``budget``); rows from before ran to the end."""
    if "stop_reason" not in _columns(connection, "jobs"):
        connection.execute(sa.text("ALTER TABLE jobs ADD COLUMN stop_reason VARCHAR(40)"))


def _add_webhooks(_connection: Connection) -> None:
    """5 -> 6: the webhook_endpoints and webhook_deliveries tables are new (made with the missing tables)."""


def _add_sweeps(connection: Connection) -> None:
    """6 -> 7: jobs may belong to a sweep (``sweep_id``, indexed; no foreign key, which SQLite cannot add to a
    table); the sweeps table is new. Rows from before belong to none."""
    if "sweep_id" not in _columns(connection, "jobs"):
        connection.execute(sa.text("ALTER TABLE jobs ADD COLUMN sweep_id VARCHAR(40)"))
    connection.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_jobs_sweep_id ON jobs (sweep_id)"))


def _add_worker_details(connection: Connection) -> None:
    """7 -> 8: workers record their device and the job they run (GET /v1/workers); rows from before have neither."""
    columns = _columns(connection, "workers_seen")
    if "device" not in columns:
        connection.execute(sa.text("ALTER TABLE workers_seen ADD COLUMN device VARCHAR(200)"))
    if "job_id" not in columns:
        connection.execute(sa.text("ALTER TABLE workers_seen ADD COLUMN job_id VARCHAR(40)"))


# the hand-written steps, from version N to N + 1
STEPS: dict[int, Callable[[Connection], None]] = {
    1: _widen_sizes, 2: _index_job_pages, 3: _add_worker_capacity, 4: _add_stop_reason, 5: _add_webhooks,
    6: _add_sweeps, 7: _add_worker_details}


def _hand_written_version(connection: Connection) -> int:
    """The version a release before Alembic left in ``schema_version``; 8 for an empty database (or an empty
    table, which such a release read as its own version)."""
    if "schema_version" not in sa.inspect(connection).get_table_names():
        return VERSION
    found = connection.execute(sa.text("SELECT MAX(version) FROM schema_version")).scalar()
    return VERSION if found is None else found


def upgrade() -> None:
    connection = op.get_bind()
    version = _hand_written_version(connection)
    if not 1 <= version <= VERSION:
        raise SchemaFromAnotherVersion(f"database schema is from another version of MoL Studio (schema_version "
                                       f"{version}); upgrade MoL Studio or migrate the database first")
    V8.create_all(connection, checkfirst=True)  # the tables it lacks (new in a later version), with their indexes
    for step in range(version, VERSION):
        STEPS[step](connection)
    connection.execute(sa.text("DELETE FROM schema_version"))
    connection.execute(sa.text(f"INSERT INTO schema_version (version) VALUES ({VERSION})"))


def downgrade() -> None:
    raise NotImplementedError("the baseline has nothing before it to go back to")
