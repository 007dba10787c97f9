"""Emptying the shared PostgreSQL test database before a test: the models' tables and Alembic's
``alembic_version``. Dropping the tables alone would leave ``alembic_version`` at head, and the next start would
find nothing to migrate and no tables."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

from store.db import Base


def empty_database(engine: Engine) -> None:
    """Drop every table MoL Studio makes in the database of ``engine``."""
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
