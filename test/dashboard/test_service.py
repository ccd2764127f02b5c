"""The Dashboard's service layer on SQLite and PostgreSQL: authorisation on every object, audit entries,
revision bumps, claims with join codes, and whitelists built from networks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from husarnet_ros.core.websetup import PeerLink, PeerReport
from husarnet_ros.dashboard import service
from husarnet_ros.dashboard.db import SessionFactory, create_db_engine, migrate, session_factory, transaction
from husarnet_ros.dashboard.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from husarnet_ros.dashboard.models import Account, ApiToken, AuditEntry, Device

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
PASSWORD = "correct horse battery"
ADDR_A1 = "fc94:a::1"
ADDR_A2 = "fc94:a::2"
ADDR_A3 = "fc94:a::3"
ADDR_B1 = "fc94:b::1"


@pytest.fixture
def db(database_url: str) -> Iterator[SessionFactory]:
    migrate(database_url)
    engine = create_db_engine(database_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def make_account(db: SessionFactory, username: str) -> Account:
    with transaction(db) as session:
        return service.create_account(session, username, PASSWORD, NOW)


def fresh(session: Session, account: Account) -> Account:
    found = session.get(Account, account.id)
    assert found is not None
    return found


def audit_actions(db: SessionFactory) -> list[str]:
    with transaction(db) as session:
        return list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def revision(db: SessionFactory) -> int:
    with transaction(db) as session:
        return service.current_revision(session)


def account_code(db: SessionFactory, account: Account) -> str:
    with transaction(db) as session:
        return service.account_join_code(session, fresh(session, account))


def claim(db: SessionFactory, code: str, address: str, hostname: str | None) -> int:
    with transaction(db) as session:
        device, result = service.claim_device(session, code, address, hostname, NOW)
        assert result.device_id == device.id
        return device.id


def new_network(db: SessionFactory, account: Account, name: str) -> tuple[int, str]:
    with transaction(db) as session:
        view = service.create_network(session, fresh(session, account), name, NOW)
        assert view.network.join_code is not None
        return view.network.id, view.network.join_code


# --- accounts, tokens, sessions ---


@pytest.mark.parametrize("username", ["ab", "Alice", "a b", "x" * 65, "al:ce", ""])
def test_usernames_outside_the_rules_are_refused(sqlite_url: str, username: str) -> None:
    migrate(sqlite_url)
    engine = create_db_engine(sqlite_url)
    try:
        with (
            pytest.raises(Invalid, match="username must be"),
            transaction(session_factory(engine)) as session,
        ):
            service.create_account(session, username, PASSWORD, NOW)
    finally:
        engine.dispose()


def test_account_rules_and_login(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    with pytest.raises(Conflict, match="taken"), transaction(db) as session:
        service.create_account(session, "alice", PASSWORD, NOW)
    with pytest.raises(Invalid, match="password must be"), transaction(db) as session:
        service.create_account(session, "bob", "short", NOW)
    with transaction(db) as session:
        assert service.authenticate(session, "alice", PASSWORD).id == alice.id
        stored = fresh(session, alice).password_hash
        assert stored.startswith("$argon2")
        assert PASSWORD not in stored
        for username, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
            with pytest.raises(Unauthenticated, match="wrong username or password"):
                service.authenticate(session, username, password)
    assert audit_actions(db) == ["account.create"]


def test_tokens_are_shown_once_and_stored_hashed(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    bob = make_account(db, "bob")
    with transaction(db) as session:
        token, secret = service.create_token(session, fresh(session, alice), "ci", NOW)
        token_id = token.id
    assert secret.startswith("hnt_")
    assert len(secret) == 4 + 43
    with transaction(db) as session:
        hashes = list(session.scalars(select(ApiToken.token_hash)))
        assert hashes == [hashlib.sha256(secret.encode()).hexdigest()]
        found = service.account_for_token(session, secret, NOW)
        assert found is not None
        assert found.id == alice.id
        altered = secret[:-1] + ("y" if secret.endswith("x") else "x")
        assert service.account_for_token(session, altered, NOW) is None
        with pytest.raises(Conflict):
            service.create_token(session, fresh(session, alice), "ci", NOW)
    with pytest.raises(NotFound), transaction(db) as session:
        service.delete_token(session, fresh(session, bob), token_id, NOW)
    with transaction(db) as session:
        service.delete_token(session, fresh(session, alice), token_id, NOW)
        assert service.account_for_token(session, secret, NOW) is None


def test_browser_sessions_expire(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    with transaction(db) as session:
        cookie, row = service.create_browser_session(session, fresh(session, alice), NOW, timedelta(hours=1))
        csrf = row.csrf_token
    with transaction(db) as session:
        found = service.browser_session(session, cookie, NOW + timedelta(minutes=59))
        assert found is not None
        assert found[0].id == alice.id
        assert service.csrf_matches(found[1], csrf)
        assert not service.csrf_matches(found[1], csrf[:-1])
        assert not service.csrf_matches(found[1], None)
        assert service.browser_session(session, cookie, NOW + timedelta(hours=1)) is None
        assert service.browser_session(session, "x" + cookie, NOW) is None
        service.end_browser_session(session, cookie)
        assert service.browser_session(session, cookie, NOW) is None


# --- authorisation ---


def test_another_account_sees_nothing_unshared(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    bob = make_account(db, "bob")
    network_id, code = new_network(db, alice, "lab")
    device_id = claim(db, code, ADDR_A1, "robot1")
    with transaction(db) as session:
        b = fresh(session, bob)
        assert service.list_networks(session, b) == []
        assert service.list_devices(session, b, NOW) == []
        assert [(e.action, e.object) for e in service.list_audit(session, b)] == [
            ("account.create", "account:bob")
        ]
        attempts = [
            lambda: service.get_network(session, b, network_id),
            lambda: service.rename_network(session, b, network_id, "mine", NOW),
            lambda: service.delete_network(session, b, network_id, NOW),
            lambda: service.regenerate_network_join_code(session, b, network_id, NOW),
            lambda: service.list_shares(session, b, network_id),
            lambda: service.share_network(session, b, network_id, "bob", "manage", NOW),
            lambda: service.remove_member(session, b, network_id, device_id, NOW),
            lambda: service.get_device(session, b, device_id, NOW),
            lambda: service.rename_device(session, b, device_id, "stolen", NOW),
            lambda: service.remove_device(session, b, device_id, NOW),
            lambda: service.network_links(session, b, network_id, NOW),
        ]
        for attempt in attempts:
            with pytest.raises(NotFound):
                attempt()
    # Bob's own network cannot take Alice's device either.
    bob_network, _code = new_network(db, bob, "bobs")
    with pytest.raises(NotFound), transaction(db) as session:
        service.add_member(session, fresh(session, bob), bob_network, device_id, NOW)
    with transaction(db) as session:
        assert service.get_device(session, fresh(session, alice), device_id, NOW).device.hostname == "robot1"


def test_read_share_sees_but_does_not_change(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    bob = make_account(db, "bob")
    network_id, code = new_network(db, alice, "lab")
    device_id = claim(db, code, ADDR_A1, "robot1")
    with transaction(db) as session:
        service.share_network(session, fresh(session, alice), network_id, "bob", "read", NOW)
    with transaction(db) as session:
        b = fresh(session, bob)
        [view] = service.list_networks(session, b)
        assert (view.network.id, view.role, view.owner, view.device_count) == (network_id, "read", "alice", 1)
        assert [d.device.id for d in service.list_devices(session, b, NOW)] == [device_id]
        assert "network.share" in [entry.action for entry in service.list_audit(session, b)]
        forbidden = [
            lambda: service.rename_network(session, b, network_id, "x", NOW),
            lambda: service.delete_network(session, b, network_id, NOW),
            lambda: service.remove_member(session, b, network_id, device_id, NOW),
            lambda: service.rename_device(session, b, device_id, "x", NOW),
            lambda: service.remove_device(session, b, device_id, NOW),
            lambda: service.share_network(session, b, network_id, "bob", "manage", NOW),
        ]
        for attempt in forbidden:
            with pytest.raises(Forbidden):
                attempt()


def test_manage_share_changes_membership_and_devices(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    bob = make_account(db, "bob")
    network_id, code = new_network(db, alice, "lab")
    device_id = claim(db, code, ADDR_A1, "robot1")
    bob_device = claim(db, account_code(db, bob), ADDR_B1, "bobbot")
    with transaction(db) as session:
        service.share_network(session, fresh(session, alice), network_id, "bob", "manage", NOW)
    before = revision(db)
    with transaction(db) as session:
        b = fresh(session, bob)
        service.rename_device(session, b, device_id, "robot-one", NOW)
        service.add_member(session, b, network_id, bob_device, NOW)
        with pytest.raises(Forbidden):
            service.remove_device(session, b, device_id, NOW)
        with pytest.raises(Forbidden):
            service.delete_network(session, b, network_id, NOW)
    assert revision(db) == before + 2
    with transaction(db) as session:
        config = service.device_config(session, ADDR_A1)
        assert config is not None
        assert config.hostname == "robot-one"
        assert config.whitelist == [ADDR_B1]
        # Bob may leave a network shared with him.
        service.unshare_network(session, fresh(session, bob), network_id, "bob", NOW)
        assert service.list_networks(session, fresh(session, bob)) == []


# --- audit and revisions ---


def test_every_change_is_audited_and_whitelist_changes_bump_the_revision(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    network_id, code = new_network(db, alice, "lab")
    start = revision(db)
    first = claim(db, code, ADDR_A1, "robot1")
    claim(db, code, ADDR_A2, "robot2")
    assert revision(db) == start + 2
    with transaction(db) as session:
        a = fresh(session, alice)
        service.rename_network(session, a, network_id, "lab2", NOW)
        service.regenerate_network_join_code(session, a, network_id, NOW)
    assert revision(db) == start + 2  # names of networks and codes are in no whitelist
    with transaction(db) as session:
        service.remove_member(session, fresh(session, alice), network_id, first, NOW)
    assert revision(db) == start + 3
    with transaction(db) as session:
        service.remove_device(session, fresh(session, alice), first, NOW)
    assert revision(db) == start + 4
    with transaction(db) as session:
        service.delete_network(session, fresh(session, alice), network_id, NOW)
    assert revision(db) == start + 5
    assert audit_actions(db) == [
        "account.create",
        "network.create",
        "device.join",
        "network.add_device",
        "device.join",
        "network.add_device",
        "network.rename",
        "network.join_code",
        "network.remove_device",
        "device.remove",
        "network.delete",
    ]


def test_a_refused_change_changes_nothing(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    network_id, code = new_network(db, alice, "lab")
    claim(db, code, ADDR_A1, "robot1")
    device_id = claim(db, code, ADDR_A2, "robot2")
    before_revision, before_audit = revision(db), audit_actions(db)

    def rename_both() -> None:
        with transaction(db) as session:
            a = fresh(session, alice)
            service.rename_network(session, a, network_id, "renamed", NOW)
            service.rename_device(session, a, device_id, "robot1", NOW)  # taken: refused

    with pytest.raises(Conflict, match="robot1"):
        rename_both()
    assert (revision(db), audit_actions(db)) == (before_revision, before_audit)
    with transaction(db) as session:
        assert service.get_network(session, fresh(session, alice), network_id).network.name == "lab"


# --- claims and configuration ---


def test_claims_and_whitelist_is_the_union_of_networks(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    lab, lab_code = new_network(db, alice, "lab")
    field, field_code = new_network(db, alice, "field")
    hub = claim(db, lab_code, ADDR_A1, "hub")
    claim(db, lab_code, ADDR_A2, "robot2")
    claim(db, field_code, ADDR_A3, "robot3")
    # The hub joins a second network: a claimed device with its owner's code only gains the network.
    assert claim(db, field_code, ADDR_A1, "ignored") == hub
    # Joining again changes nothing: no new revision for the daemons, nothing in the audit log.
    before = (revision(db), audit_actions(db))
    assert claim(db, field_code, ADDR_A1, None) == hub
    assert claim(db, account_code(db, alice), ADDR_A1, None) == hub
    assert (revision(db), audit_actions(db)) == before
    with transaction(db) as session:
        hub_config = service.device_config(session, ADDR_A1)
        robot2 = service.device_config(session, ADDR_A2)
        robot3 = service.device_config(session, "FC94:A:0::3")  # any spelling of the address
        assert service.device_config(session, "fc94:a::99") is None
    assert hub_config is not None
    assert robot2 is not None
    assert robot3 is not None
    assert hub_config.hostname == "hub"
    assert hub_config.whitelist == [ADDR_A2, ADDR_A3]
    assert [(h.hostname, h.address) for h in hub_config.hosts] == [("robot2", ADDR_A2), ("robot3", ADDR_A3)]
    assert robot2.whitelist == [ADDR_A1]
    assert robot3.whitelist == [ADDR_A1]
    with transaction(db) as session:
        view = service.get_device(session, fresh(session, alice), hub, NOW)
        assert view.network_ids == tuple(sorted((lab, field)))


def test_claim_refusals(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    bob = make_account(db, "bob")
    _network, code = new_network(db, alice, "lab")
    claim(db, code, ADDR_A1, "robot1")
    with pytest.raises(NotFound, match="unknown join code"):
        claim(db, "no-such-code", ADDR_A2, "robot2")
    with pytest.raises(Conflict, match="taken"):
        claim(db, code, ADDR_A2, "robot1")
    with pytest.raises(Conflict, match="another account"):
        claim(db, account_code(db, bob), ADDR_A1, "robot1")
    with pytest.raises(Invalid, match="overlay"):
        claim(db, code, "2001:db8::1", "robot2")
    with pytest.raises(Invalid, match="hostname"):
        claim(db, code, ADDR_A2, "-bad-")
    with transaction(db) as session:
        service.set_device_limit(session, 2)
    claim(db, code, ADDR_A2, None)
    with pytest.raises(Conflict, match="allows 2 devices"):
        claim(db, code, ADDR_A3, "robot3")
    with transaction(db) as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 2
        config = service.device_config(session, ADDR_A2)
        assert config is not None
        assert config.hostname == "device-00000002"


def test_regenerated_codes_stop_working(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    network_id, old_network_code = new_network(db, alice, "lab")
    old_account_code = account_code(db, alice)
    with transaction(db) as session:
        a = fresh(session, alice)
        new_network_code = service.regenerate_network_join_code(session, a, network_id, NOW)
        new_account_code = service.regenerate_account_join_code(session, a, NOW)
    for code in (old_network_code, old_account_code):
        with pytest.raises(NotFound):
            claim(db, code, ADDR_A1, "robot1")
    claim(db, new_network_code, ADDR_A1, "robot1")
    claim(db, new_account_code, ADDR_A2, "robot2")


def test_hostnames_clash_across_accounts_in_a_shared_network(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    bob = make_account(db, "bob")
    network_id, code = new_network(db, alice, "lab")
    claim(db, code, ADDR_A1, "robot")
    bob_device = claim(db, account_code(db, bob), ADDR_B1, "robot")
    claim(db, code, ADDR_A2, "other")
    with transaction(db) as session:
        service.share_network(session, fresh(session, alice), network_id, "bob", "manage", NOW)
        service.add_member(session, fresh(session, bob), network_id, bob_device, NOW)
        config = service.device_config(session, ADDR_A2)
    assert config is not None
    assert config.whitelist == [ADDR_A1, ADDR_B1]
    # One name, one address: the device claimed first keeps "robot".
    assert [(h.hostname, h.address) for h in config.hosts] == [("robot", ADDR_A1)]


def test_touch_report_and_links(db: SessionFactory) -> None:
    alice = make_account(db, "alice")
    network_id, code = new_network(db, alice, "lab")
    a1 = claim(db, code, ADDR_A1, "robot1")
    a2 = claim(db, code, ADDR_A2, "robot2")
    claim(db, account_code(db, alice), ADDR_A3, "outside")
    later = NOW + timedelta(minutes=5)
    report = PeerReport(
        peers=[
            PeerLink(address=ADDR_A2, path="tunnelled", base_server="198.18.0.1:5582", rtt_ms=12.5),
            PeerLink(address=ADDR_A3, path="direct", rtt_ms=1.0),  # not in the network: left out
        ]
    )
    with transaction(db) as session:
        service.record_report(session, ADDR_A1, report, later)
        service.touch_device(session, "fc94:a::99", later)  # unclaimed: nothing happens
        with pytest.raises(NotFound, match="not claimed"):
            service.record_report(session, "fc94:a::99", report, later)
    with transaction(db) as session:
        links = service.network_links(
            session, fresh(session, alice), network_id, later + timedelta(seconds=30)
        )
    assert [(d.id, d.hostname, d.online) for d in links.devices] == [
        (a1, "robot1", True),
        (a2, "robot2", False),
    ]
    assert [(k.source_id, k.target_id, k.path, k.base_server, k.rtt_ms) for k in links.links] == [
        (a1, a2, "tunnelled", "198.18.0.1:5582", 12.5)
    ]
    with transaction(db) as session:
        service.touch_device(session, ADDR_A2, later)
        [_, robot2] = service.network_links(session, fresh(session, alice), network_id, later).devices
        assert robot2.online
        assert not service.get_device(
            session, fresh(session, alice), a2, later + timedelta(seconds=61)
        ).online
