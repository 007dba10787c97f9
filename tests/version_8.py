"""The tables as version 8 of the hand-written migrations left them (store/migrations/versions/0001): what a test of
an older database starts from, not today's models, whose newer tables and columns a later revision adds."""

from __future__ import annotations

import importlib

from sqlalchemy.engine import Engine

V8 = importlib.import_module("store.migrations.versions.0001_schema_version_8").V8


def create_version_8_tables(engine: Engine) -> None:
    """Every table of schema version 8, empty."""
    V8.create_all(engine)
