"""Programmatic Alembic: upgrade/downgrade the service database with the migrations shipped in this package.

The scripts and ``alembic.ini`` are package data beside this module, so an installed wheel (``esft serve``)
upgrades its database without a source checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

PACKAGE_DIR = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    config = Config(str(PACKAGE_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(PACKAGE_DIR / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> None:
    """``python -m api.core.migrate [REVISION]``: upgrade the configured database (what docker-compose runs)."""
    import argparse

    from api.core.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m api.core.migrate", description=main.__doc__)
    parser.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    upgrade(Settings().database_url, parser.parse_args(argv).revision)


if __name__ == "__main__":
    main()
