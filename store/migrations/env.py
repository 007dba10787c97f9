"""Alembic's environment: the connection to migrate and the tables the revisions must arrive at.

At start, store/migrate.py hands over its connection (in ``config.attributes``), already in a transaction and,
on PostgreSQL, holding the migration lock. From the ``alembic`` command line (configured by pyproject.toml's
``[tool.alembic]``), it opens the database MoL Studio would use (``MOL_DATABASE_URL``, else ``MOL_HOME``'s
SQLite file) and does the same.
"""

from alembic import context
from sqlalchemy.engine import Connection

from store.db import Base, make_engine
from store.migrate import hold_migration_lock
from store.settings import Settings


def run_migrations(connection: Connection) -> None:
    """Run the pending revisions (or autogenerate's comparison) on ``connection``; on SQLite each ALTER goes
    through a batch (copy the table, move the rows), which is how SQLite changes a column."""
    context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_from_the_command_line() -> None:
    """``alembic upgrade``/``revision --autogenerate``: on the configured database, under the migration lock."""
    engine = make_engine(Settings().db_url)
    try:
        with engine.begin() as connection:
            hold_migration_lock(connection)
            run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("MoL Studio's migrations need a database (the first revision reads what it finds): no --sql")
if "connection" in context.config.attributes:
    run_migrations(context.config.attributes["connection"])
else:
    run_from_the_command_line()
