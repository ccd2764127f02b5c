"""Alembic's environment for the Dashboard: always given a connection by ``db.migrate`` (no alembic.ini, no
offline mode)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from husarnet_ros.dashboard.models import Base


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run the Dashboard's migrations through husarnet_ros.dashboard.db.migrate(url)")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite changes a table by copying it; later migrations need this to alter columns.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
