"""Bringing a database's schema to this version of MoL Studio: Alembic's revisions in ``store/migrations``, run
from code at start (no alembic.ini: the configuration is built here, so it works from an installed package and
any working directory).

Every database takes the same path, ``upgrade head``: a fresh one runs every revision (the first creates the
schema as version 8 of the hand-written migrations left it), one of a release before Alembic (a
``schema_version`` table, no ``alembic_version``) runs the first revision as its catch-up from versions 1 to 8,
and one Alembic already manages runs the revisions it lacks. One path means every test that makes a database
runs the revisions, and a fresh database cannot differ from an upgraded one.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock's key: the API and workers starting at once on one PostgreSQL database migrate one at a
# time; the others wait, then find the schema at head
MIGRATION_LOCK_KEY = 0x4D6F_4C53_7475_6469  # "MoLStudi" in ASCII
# alembic.context and alembic.op are module-level proxies: one migration environment per process at a time
_ALEMBIC_IN_USE = threading.Lock()


class SchemaFromAnotherVersion(RuntimeError):
    """The database's schema was written by a MoL Studio this one does not know (a newer one): refused, rather
    than misread."""


def alembic_config() -> Config:
    """Alembic's configuration for the schema, without a file: the revisions ship in the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@functools.cache
def _known_revisions() -> frozenset[str]:
    """Every revision this MoL Studio ships (read once per process)."""
    return frozenset(script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def hold_migration_lock(connection: Connection) -> None:
    """Wait for the migration lock and hold it until ``connection``'s transaction ends; call it first in that
    transaction. PostgreSQL: an advisory transaction lock. SQLite: its write lock, taken by ``BEGIN IMMEDIATE``,
    which also keeps the DDL inside the transaction (Python's sqlite3 runs it outside one otherwise)."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def refuse_unknown_revisions(connection: Connection) -> None:
    """SchemaFromAnotherVersion when the database is at a revision this MoL Studio does not ship."""
    unknown = set(MigrationContext.configure(connection).get_current_heads()) - _known_revisions()
    if unknown:
        raise SchemaFromAnotherVersion(
            f"database schema is from another version of MoL Studio (revision {', '.join(sorted(unknown))}, "
            "unknown to this one); upgrade MoL Studio or migrate the database first")


def upgrade(connection: Connection) -> None:
    """Bring the schema to this version's head inside ``connection``'s new transaction, which the caller commits,
    under the migration lock, so that concurrent starts (the API and workers) migrate one after the other."""
    hold_migration_lock(connection)
    refuse_unknown_revisions(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    with _ALEMBIC_IN_USE:
        command.upgrade(config, "head")
