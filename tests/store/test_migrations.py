"""Alembic's migrations (store/migrate.py, store/migrations/): a database of the last schema before Alembic
(version 8: v8_schema.<dialect>.sql and v8_rows.sql) upgrades in place with its rows, a fresh one ends at head, the
revisions arrive at exactly the models' tables, a newer MoL Studio's database is refused, and concurrent starts
on PostgreSQL do not trip over each other."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from store.db import SCHEMA_VERSION, Base, Dataset, Job, MetricPoint, SchemaVersion, init_db, make_engine
from store.migrate import SchemaFromAnotherVersion, alembic_config
from tests.empty_database import empty_database

HERE = Path(__file__).parent


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Engine:
    """An engine on an empty database: a SQLite file, or the test run's PostgreSQL database emptied."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    else:
        engine = make_engine(request.getfixturevalue("postgres_url"))
        empty_database(engine)
    yield engine
    engine.dispose()


def heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def revisions_of(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def differences_from_the_models(engine: Engine) -> list:
    """What autogenerate would write to bring the database to the models: nothing, when they agree."""
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)


def load_version_8(engine: Engine) -> None:
    """The tables and rows a release before Alembic (schema version 8) left behind."""
    script = (HERE / f"v8_schema.{engine.dialect.name}.sql").read_text() + (HERE / "v8_rows.sql").read_text()
    statements = [s.strip() for s in script.split(";\n") if s.strip()]
    with engine.begin() as connection:
        for statement in statements:
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            connection.exec_driver_sql("\n".join(lines))


def test_a_version_8_database_upgrades_in_place_and_keeps_its_rows(engine):
    load_version_8(engine)
    sessions = init_db(engine)
    assert revisions_of(engine) == heads()
    assert differences_from_the_models(engine) == []
    with sessions.begin() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
        job = db.get(Job, "job_v8")
        assert (job.status, job.step, job.spec["method"], job.last_metrics) == ("succeeded", 3, "mol", {"loss": 1.5})
        assert db.get(Dataset, "ds_v8").bytes == 6_000_000_000
        assert [(p.step, p.values) for p in db.scalars(select(MetricPoint))] == [(3, {"loss": 1.5})]
        db.add(MetricPoint(job_id="job_v8", step=4, values={"loss": 1.25}))  # the seq goes on after the old rows
    with sessions() as db:
        assert [p.step for p in db.scalars(select(MetricPoint).order_by(MetricPoint.seq))] == [3, 4]
    init_db(engine)  # a second start finds nothing to do
    assert revisions_of(engine) == heads()


def test_a_fresh_database_ends_at_head_with_exactly_the_models_tables(engine):
    sessions = init_db(engine)
    assert revisions_of(engine) == heads()
    assert differences_from_the_models(engine) == []  # the revisions and the models agree
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]


def test_a_database_from_a_newer_mol_studio_is_refused(engine):
    init_db(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed0042'"))
    with pytest.raises(SchemaFromAnotherVersion, match=r"another version of MoL Studio.*f00dfeed0042"):
        init_db(engine)


def test_a_hand_written_version_newer_than_8_without_alembic_is_refused(engine):
    load_version_8(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE schema_version SET version = 12"))
    with pytest.raises(SchemaFromAnotherVersion, match="another version of MoL Studio"):
        init_db(engine)
    assert revisions_of(engine) == set()  # nothing was half done


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_concurrent_starts_migrate_one_after_the_other(dialect, request, tmp_path):
    """The API and workers starting at once on one empty database: each start succeeds."""
    url = f"sqlite:///{tmp_path / 'mol.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_url")
    engines = [make_engine(url) for _ in range(4)]
    if dialect == "postgresql":
        empty_database(engines[0])
    start, errors = threading.Barrier(len(engines)), []

    def start_one(engine: Engine) -> None:
        start.wait()
        try:
            init_db(engine)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=start_one, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert revisions_of(engines[0]) == heads()
    for engine in engines:
        engine.dispose()
