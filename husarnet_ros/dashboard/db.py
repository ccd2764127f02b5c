"""The Dashboard's database: an engine from a URL, sessions, and the migrations that make the schema.

SQLite (a file, the default) or PostgreSQL (``postgresql+psycopg://...``). Every unit of work is one
transaction: ``with transaction(factory) as session:`` commits at the end or rolls everything back on an
error, so a request that fails changes nothing. Service functions never commit themselves.

SQLite details, each for a reason: foreign keys are off in SQLite unless asked for on every connection;
write-ahead logging lets readers go on while one writer writes; and every transaction starts with
``BEGIN IMMEDIATE``, because a deferred transaction that reads and then writes fails at once with "database is
locked" when another writer got in between (the busy timeout does not apply to that case).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..core.errors import HusarnetError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_FILE_NAME = "dashboard.sqlite3"
SQLITE_BUSY_TIMEOUT_S = 30.0
SUPPORTED_BACKENDS = ("sqlite", "postgresql")

# deadlock_detected, serialization_failure
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
MAX_ATTEMPTS = 5
RETRY_PAUSE_S = 0.05

SessionFactory = sessionmaker[Session]
T = TypeVar("T")


class DatabaseError(HusarnetError):
    """A database URL that cannot be used, or a database that cannot be reached or migrated."""


def default_url(data_dir: Path) -> str:
    """The SQLite file in the data directory, as a URL."""
    return f"sqlite:///{(data_dir / SQLITE_FILE_NAME).resolve()}"


def parse_url(url: str) -> URL:
    """A database URL SQLAlchemy can use with one of the supported backends; DatabaseError otherwise."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DatabaseError(
            "database URL is not valid: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise DatabaseError(
            f"database backend {parsed.get_backend_name()!r} is not supported: use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DATABASE"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise DatabaseError("an in-memory SQLite database would lose everything: give a file, sqlite:///PATH")
    return parsed


def create_db_engine(url: str) -> Engine:
    """An engine for ``url`` (see the module docstring for what SQLite gets)."""
    parsed = parse_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(
                parsed,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            )
            _configure_sqlite(engine)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"no database driver for {parsed.drivername!r}: {exc}") from None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # The driver must not open transactions itself: the "begin" hook below does, IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> SessionFactory:
    # expire_on_commit=False: objects a transaction returned stay readable after it committed.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: SessionFactory) -> Iterator[Session]:
    """One unit of work: commits when the block ends, rolls back if it raises."""
    with factory.begin() as session:
        yield session


def is_retryable(exc: OperationalError) -> bool:
    """PostgreSQL chose this transaction as a deadlock's victim or could not serialise it: running it again
    is safe (nothing of it was committed) and will normally succeed."""
    return getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def run_in_transaction(factory: SessionFactory, work: Callable[[Session], T]) -> T:
    """``work`` in one transaction, run again (up to ``MAX_ATTEMPTS`` in all) if the database aborted it
    for a deadlock. Changes take the revision row's lock last, after the rows they change, except a claim,
    which takes it first: two such transactions on one device can deadlock, and this is the way out."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with transaction(factory) as session:
                return work(session)
        except OperationalError as exc:
            if attempt == MAX_ATTEMPTS or not is_retryable(exc):
                raise
        # Without a pause the victim may take its first lock again before the winner, which waited on it,
        # gets it, and the same deadlock happens again; a random one keeps two victims apart.
        time.sleep(RETRY_PAUSE_S * attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (Alembic, no alembic.ini needed)."""
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate the database: {_first_line(exc)}") from None
    finally:
        engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
