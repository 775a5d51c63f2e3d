"""Alembic environment and revisions of the service database, shipped inside the package."""
