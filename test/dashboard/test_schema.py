"""The migrations make exactly the schema models.py describes, on SQLite and PostgreSQL, and can run again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from husarnet_ros.dashboard.db import create_db_engine, migrate
from husarnet_ros.dashboard.models import Base


def test_migrations_match_models(database_url: str) -> None:
    migrate(database_url)
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert differences == []
    assert set(Base.metadata.tables) <= tables


def test_migrate_twice_keeps_data(database_url: str) -> None:
    migrate(database_url)
    engine = create_db_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE meta SET value = '7' WHERE key = 'config_revision'"))
        migrate(database_url)
        with engine.connect() as connection:
            value = connection.execute(text("SELECT value FROM meta WHERE key = 'config_revision'")).scalar()
    finally:
        engine.dispose()
    assert value == "7"


def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    migrate(sqlite_url)
    engine = create_db_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()
