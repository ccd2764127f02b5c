"""Changes made at the same time: claims never exceed the license's device limit, and a transaction PostgreSQL
aborts for a deadlock is run again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from husarnet_ros.dashboard import service
from husarnet_ros.dashboard.clock import utc_now
from husarnet_ros.dashboard.db import (
    SessionFactory,
    create_db_engine,
    migrate,
    run_in_transaction,
    session_factory,
    transaction,
)
from husarnet_ros.dashboard.errors import Conflict
from husarnet_ros.dashboard.models import Device, Meta
from husarnet_ros.testing.postgres import PostgresServer

WAIT_S = 30.0


def migrated(url: str) -> Iterator[SessionFactory]:
    migrate(url)
    engine = create_db_engine(url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[SessionFactory]:
    yield from migrated(database_url)


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[SessionFactory]:
    with postgres_server.fresh_database() as url:
        yield from migrated(url)


def test_concurrent_claims_stay_within_the_device_limit(db: SessionFactory) -> None:
    with transaction(db) as session:
        account = service.create_account(session, "alice", "correct horse battery", utc_now())
        network = service.create_network(session, account, "lab", utc_now()).network
        service.set_device_limit(session, 3)
    code = network.join_code or ""

    def claim(index: int) -> str:
        def work(session: Session) -> str:
            service.claim_device(session, code, f"fc94:c::{index + 1}", f"robot{index}")
            return "claimed"

        try:
            return run_in_transaction(db, work)
        except Conflict as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(claim, range(8), timeout=WAIT_S * 2))
    assert outcomes.count("claimed") == 3
    assert all("allows 3 devices" in outcome for outcome in outcomes if outcome != "claimed")
    with transaction(db) as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 3
        claimed = session.scalars(select(Device)).all()
        configs = [service.device_config(session, device.address) for device in claimed]
        assert service.current_revision(session) >= 3
    # Each claimed device sees the other two: no claim was half made.
    assert [sorted(c.whitelist) if c else None for c in configs] == [
        sorted(d.address for d in claimed if d is not device) for device in claimed
    ]


def test_a_deadlock_victim_is_run_again(postgres_db: SessionFactory) -> None:
    with transaction(postgres_db) as session:
        session.add_all([Meta(key="left", value="0"), Meta(key="right", value="0")])
    both_hold_one = threading.Barrier(2, timeout=WAIT_S)
    attempts: list[str] = []

    def locker(first: str, second: str) -> Callable[[Session], str]:
        def work(session: Session) -> str:
            attempts.append(first)
            session.execute(text("UPDATE meta SET value = value || '+' WHERE key = :k"), {"k": first})
            if attempts.count(first) == 1:
                both_hold_one.wait()  # each holds one row and now asks for the other's: a deadlock
            session.execute(text("UPDATE meta SET value = value || '+' WHERE key = :k"), {"k": second})
            return first

        return work

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(run_in_transaction, postgres_db, locker("left", "right")),
            pool.submit(run_in_transaction, postgres_db, locker("right", "left")),
        ]
        results = sorted(future.result(timeout=WAIT_S) for future in futures)
    assert results == ["left", "right"]
    assert len(attempts) >= 3  # PostgreSQL aborted one of them at least once
    with transaction(postgres_db) as session:
        values = session.scalars(select(Meta.value).where(Meta.key.in_(["left", "right"]))).all()
    assert sorted(values) == ["0++", "0++"]
