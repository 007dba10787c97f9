"""Alembic's migrations of MoL Studio's schema: ``env.py`` and the revisions in ``versions/`` (run by
store/migrate.py at start; docs/service.md says how to add one)."""
