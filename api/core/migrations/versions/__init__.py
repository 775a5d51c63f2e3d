"""Alembic revisions of the service database (package data, so wheels carry them)."""
