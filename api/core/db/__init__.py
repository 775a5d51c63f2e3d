"""Persistence: SQLAlchemy tables (``models``) and engine/session setup (``session``)."""
