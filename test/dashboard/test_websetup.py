"""Websetup's HTTP service (husarnet_ros/dashboard/websetup.py) against a real database (SQLite and
PostgreSQL): a device is its fc94 source address, joins with an account's or a network's code, long-polls its
config and reports its links; every bad request gets a 4xx with a sentence, never a 5xx.

Requests go through httpx's ASGITransport, which sets the TCP peer (``client=``) the app sees; accounts,
networks and devices are set up and changed through the service layer, as the Dashboard does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import select

from husarnet_ros.core.websetup import API_PREFIX, MAX_PEERS_IN_REPORT, DeviceConfig, JoinResult
from husarnet_ros.dashboard import db, service
from husarnet_ros.dashboard.accounts import account_join_code, create_account
from husarnet_ros.dashboard.fleet import add_member, create_network, rename_device
from husarnet_ros.dashboard.meta import current_revision, set_device_limit
from husarnet_ros.dashboard.models import Account, Device
from husarnet_ros.dashboard.websetup import (
    MAX_BODY_BYTES,
    REVISION_FRESH_S,
    _SharedRevision,
    create_websetup_app,
)

T = TypeVar("T")
ROBOT1 = "fc94:b01d:1803:8dd8:b293:5c7d:7639:932a"
ROBOT2 = "fc94::2"
ROBOT3 = "fc94::3"
PASSWORD = "correct horse battery staple"
JSON_CONTENT = {"content-type": "application/json"}
HELD = 60


@dataclass
class Installation:
    factory: db.SessionFactory
    app: Any
    alice: Account
    bob: Account
    alice_code: str
    bob_code: str
    lab_id: int
    lab_code: str

    def run(self, work: Callable[..., T], *args: Any) -> T:
        with db.transaction(self.factory) as session:
            return work(session, *args)

    def device(self, address: str) -> Device | None:
        def find(session: Any) -> Device | None:
            found: Device | None = session.scalars(select(Device).where(Device.address == address)).first()
            return found

        return self.run(find)


@pytest.fixture
def installation(database_url: str) -> Iterator[Installation]:
    db.migrate(database_url)
    engine = db.create_db_engine(database_url)
    factory = db.session_factory(engine)
    now = datetime.now(timezone.utc)
    try:
        with db.transaction(factory) as session:
            alice = create_account(session, "alice", PASSWORD, now)
            bob = create_account(session, "bob", PASSWORD, now)
            lab = create_network(session, alice, "lab", now).network
            alice_code, bob_code = account_join_code(session, alice), account_join_code(session, bob)
            assert lab.join_code is not None
            lab_id, lab_code = lab.id, lab.join_code
        yield Installation(
            factory, create_websetup_app(factory), alice, bob, alice_code, bob_code, lab_id, lab_code
        )
    finally:
        engine.dispose()


def client(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://websetup", timeout=40)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def request(app: Any, address: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client(app, address) as http:
            return await http.request(method, API_PREFIX + path, **kwargs)

    return run(go)


def join(env: Installation, address: str, code: str, hostname: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"code": code}
    if hostname is not None:
        body["hostname"] = hostname
    return request(env.app, address, "POST", "/join", json=body)


def detail(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str)
    return body["detail"]


# --- joining ---


def test_join_with_an_account_code_claims_the_device_into_no_network(installation: Installation) -> None:
    response = join(installation, ROBOT1, installation.alice_code, "robot1")
    assert response.status_code == 200, response.text
    result = JoinResult.model_validate(response.json())
    assert (result.account, result.network) == ("alice", None)
    assert result.config.hostname == "robot1"
    assert result.config.whitelist == []
    device = installation.device(ROBOT1)
    assert device is not None
    assert device.owner_id == installation.alice.id
    assert device.last_seen_at is not None


def test_join_with_a_network_code_gets_the_other_members(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.lab_code, "robot1").status_code == 200
    response = join(installation, ROBOT2, installation.lab_code, "robot2")
    assert response.status_code == 200, response.text
    result = JoinResult.model_validate(response.json())
    assert (result.account, result.network) == ("alice", "lab")
    assert result.config.whitelist == [ROBOT1]
    assert [(host.hostname, host.address) for host in result.config.hosts] == [("robot1", ROBOT1)]


def test_the_source_address_is_the_identity_in_canonical_form(installation: Installation) -> None:
    spelled_out = "FC94:B01D:1803:8DD8:B293:5C7D:7639:932A"
    assert join(installation, spelled_out, installation.alice_code, "robot1").status_code == 200
    assert installation.device(ROBOT1) is not None


def test_an_unknown_code_is_not_found(installation: Installation) -> None:
    response = join(installation, ROBOT1, "no-such-code", "robot1")
    assert response.status_code == 404
    assert "code" in detail(response)
    assert installation.device(ROBOT1) is None


def test_a_hostname_taken_in_the_account_is_a_conflict_that_names_it(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    response = join(installation, ROBOT2, installation.alice_code, "robot1")
    assert response.status_code == 409
    assert "robot1" in detail(response)
    assert installation.device(ROBOT2) is None
    # Another account may use the name.
    assert join(installation, ROBOT2, installation.bob_code, "robot1").status_code == 200


def test_the_license_device_limit_is_a_conflict(installation: Installation) -> None:
    installation.run(set_device_limit, 2)
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    assert join(installation, ROBOT2, installation.bob_code, "robot2").status_code == 200
    response = join(installation, ROBOT3, installation.alice_code, "robot3")
    assert response.status_code == 409
    assert "2" in detail(response)
    assert installation.device(ROBOT3) is None


def test_a_device_of_another_account_cannot_be_claimed(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    response = join(installation, ROBOT1, installation.bob_code, "robot1")
    assert response.status_code == 409
    device = installation.device(ROBOT1)
    assert device is not None
    assert device.owner_id == installation.alice.id


@pytest.mark.parametrize(
    "source", ["127.0.0.1", "::1", "fd00:98::1", "198.18.0.5", "fc95::1", "fe80::1%hnet0", "not-an-address"]
)
def test_a_request_not_from_the_overlay_is_forbidden(installation: Installation, source: str) -> None:
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/join", {"json": {"code": installation.alice_code, "hostname": "robot1"}}),
        ("GET", "/config?after=-1&wait=0", {}),
        ("POST", "/report", {"json": {"peers": []}}),
    ]
    for method, path, kwargs in attempts:
        response = request(installation.app, source, method, path, **kwargs)
        assert response.status_code == 403, (path, response.text)
        assert "overlay" in detail(response)
    assert installation.run(lambda session: session.scalars(select(Device)).all()) == []


# --- config ---


def test_an_unclaimed_device_is_told_to_join(installation: Installation) -> None:
    response = request(installation.app, ROBOT1, "GET", "/config?after=-1&wait=0")
    assert response.status_code == 404
    assert "husarnet-ros join" in detail(response)


def test_config_answers_at_once_when_the_device_is_behind(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.lab_code, "robot1").status_code == 200
    assert join(installation, ROBOT2, installation.lab_code, "robot2").status_code == 200
    revision = installation.run(current_revision)
    started = time.monotonic()
    response = request(installation.app, ROBOT1, "GET", f"/config?after={revision - 1}&wait=20")
    assert time.monotonic() - started < 5
    assert response.status_code == 200, response.text
    config = DeviceConfig.model_validate(response.json())
    assert config.revision == revision
    assert config.hostname == "robot1"
    assert config.whitelist == [ROBOT2]
    assert [(host.hostname, host.address) for host in config.hosts] == [("robot2", ROBOT2)]


def test_a_device_ahead_of_a_restored_database_is_held_like_no_change(installation: Installation) -> None:
    """The daemon ignores a revision below its own and asks again at once: answering such a request at once
    would make the two loop as fast as they can."""
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    revision = installation.run(current_revision)
    started = time.monotonic()
    response = request(installation.app, ROBOT1, "GET", f"/config?after={revision + 100}&wait=1")
    assert time.monotonic() - started >= 0.9
    assert response.status_code == 200, response.text
    assert DeviceConfig.model_validate(response.json()).revision == revision


def test_every_config_request_refreshes_last_seen(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    old = datetime(2026, 1, 1, tzinfo=timezone.utc)
    installation.run(lambda session: service.touch_device(session, ROBOT1, old))
    before = installation.device(ROBOT1)
    assert before is not None
    assert before.last_seen_at == old
    assert request(installation.app, ROBOT1, "GET", "/config?wait=0").status_code == 200
    after = installation.device(ROBOT1)
    assert after is not None
    assert after.last_seen_at is not None
    assert after.last_seen_at > old + timedelta(days=1)


def test_a_held_config_request_answers_soon_after_a_change(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.lab_code, "robot1").status_code == 200
    assert join(installation, ROBOT2, installation.alice_code, "robot2").status_code == 200
    revision = installation.run(current_revision)
    robot2 = installation.device(ROBOT2)
    assert robot2 is not None
    changed_at: list[float] = []

    def add_robot2_to_lab() -> None:
        time.sleep(1.0)
        installation.run(
            lambda session: add_member(
                session, installation.alice, installation.lab_id, robot2.id, datetime.now(timezone.utc)
            )
        )
        changed_at.append(time.monotonic())

    changer = threading.Thread(target=add_robot2_to_lab)
    changer.start()
    try:
        started = time.monotonic()
        response = request(installation.app, ROBOT1, "GET", f"/config?after={revision}&wait=20")
        answered = time.monotonic()
    finally:
        changer.join(timeout=30)
    assert response.status_code == 200, response.text
    config = DeviceConfig.model_validate(response.json())
    assert config.revision > revision
    assert config.whitelist == [ROBOT2]
    assert changed_at, "the change was not made"
    assert answered >= changed_at[0] - 0.05, "answered before anything changed"
    # docs/CONTROL_PLANE.md: the revision is checked every 0.5 s; the rest is slack for a loaded machine.
    assert answered - changed_at[0] < 1.5
    assert answered - started < 10


def test_a_held_config_request_answers_after_wait_when_nothing_changes(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    revision = installation.run(current_revision)
    started = time.monotonic()
    response = request(installation.app, ROBOT1, "GET", f"/config?after={revision}&wait=1.5")
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert DeviceConfig.model_validate(response.json()).revision == revision
    assert 1.4 <= elapsed < 5


def test_a_held_request_ends_when_its_client_goes_away(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    revision = installation.run(current_revision)
    sent: list[dict[str, Any]] = []

    async def scenario() -> float:
        received = 0

        async def receive() -> dict[str, Any]:
            nonlocal received
            received += 1
            if received == 1:
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}  # the daemon hung up

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"{API_PREFIX}/config",
            "raw_path": f"{API_PREFIX}/config".encode(),
            "query_string": f"after={revision}&wait=20".encode(),
            "root_path": "",
            "headers": [(b"host", b"websetup")],
            "client": (ROBOT1, 40000),
            "server": ("fc94::5590", 5590),
        }
        started = time.monotonic()
        await asyncio.wait_for(installation.app(scope, receive, send), timeout=30)
        return time.monotonic() - started

    assert run(scenario) < 5
    # It still answers, into the void (the server drops it), with the config as it is.
    assert sent[0]["status"] == 200


def test_a_wait_beyond_the_maximum_is_capped(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    revision = installation.run(current_revision)

    async def ask_and_rename() -> tuple[httpx.Response, float]:
        async with client(installation.app, ROBOT1) as http:
            started = time.monotonic()
            held = asyncio.ensure_future(
                http.get(f"{API_PREFIX}/config", params={"after": revision, "wait": 3600})
            )
            await asyncio.sleep(0.5)
            assert not held.done(), "a request for a change that has not happened was answered"
            robot1 = installation.device(ROBOT1)
            assert robot1 is not None
            await asyncio.to_thread(
                installation.run,
                lambda session: rename_device(
                    session, installation.alice, robot1.id, "robot-one", datetime.now(timezone.utc)
                ),
            )
            response = await asyncio.wait_for(held, timeout=10)
            return response, time.monotonic() - started

    response, elapsed = run(ask_and_rename)
    assert response.status_code == 200, response.text
    assert DeviceConfig.model_validate(response.json()).hostname == "robot-one"
    assert elapsed < 10


def test_many_held_requests_do_not_block_each_other(installation: Installation) -> None:
    """Held requests sleep on the loop, not in worker threads: more of them than anyio's 40 threads all end
    at their own wait."""
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    revision = installation.run(current_revision)

    async def many() -> list[httpx.Response]:
        async with client(installation.app, ROBOT1) as http:
            return list(
                await asyncio.gather(
                    *(
                        http.get(f"{API_PREFIX}/config", params={"after": revision, "wait": 1})
                        for _ in range(HELD)
                    )
                )
            )

    started = time.monotonic()
    responses = run(many)
    assert [response.status_code for response in responses] == [200] * HELD
    assert time.monotonic() - started < 15


# --- reports ---


def test_a_report_is_stored_and_shows_in_the_network_links(installation: Installation) -> None:
    assert join(installation, ROBOT1, installation.lab_code, "robot1").status_code == 200
    assert join(installation, ROBOT2, installation.lab_code, "robot2").status_code == 200
    report = {
        "peers": [
            {"address": ROBOT2, "path": "tunnelled", "base_server": "198.18.0.1:5582", "rtt_ms": 41.5},
        ]
    }
    response = request(installation.app, ROBOT1, "POST", "/report", json=report)
    assert response.status_code == 204, response.text
    assert response.content == b""
    links = installation.run(
        lambda session: service.network_links(session, installation.alice, installation.lab_id)
    )
    text = repr(links)
    assert ROBOT1 in text
    assert ROBOT2 in text
    assert "tunnelled" in text
    assert "198.18.0.1:5582" in text


def test_a_report_of_an_unclaimed_device_is_not_found(installation: Installation) -> None:
    response = request(installation.app, ROBOT1, "POST", "/report", json={"peers": []})
    assert response.status_code == 404
    assert "join" in detail(response)


# --- bad requests ---


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "mentions"),
    [
        ("POST", "/join", {"content": b"{not json", "headers": {"content-type": "application/json"}}, "JSON"),
        ("POST", "/join", {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, "JSON"),
        ("POST", "/join", {}, "body"),
        ("POST", "/join", {"json": {"code": "a b"}}, "code"),
        ("POST", "/join", {"json": {"code": ""}}, "code"),
        ("POST", "/join", {"json": {"code": "x" * 65}}, "code"),
        ("POST", "/join", {"json": {"code": "abc", "extra": 1}}, "extra"),
        ("POST", "/join", {"json": {"code": "abc", "hostname": "not a hostname!"}}, "hostname"),
        ("POST", "/join", {"json": ["code"]}, "body"),
        ("GET", "/config?after=x", {}, "after"),
        ("GET", "/config?after=-2", {}, "after"),
        ("GET", "/config?wait=-1", {}, "wait"),
        ("GET", "/config?wait=nan", {}, "wait"),
        ("GET", "/config?wait=inf", {}, "wait"),
        ("POST", "/report", {"json": {"peers": [{"address": "fd00:98::1", "path": "direct"}]}}, "address"),
        ("POST", "/report", {"json": {"peers": [{"address": ROBOT2, "path": "teleport"}]}}, "path"),
        (
            "POST",
            "/report",
            {"json": {"peers": [{"address": ROBOT2, "path": "direct", "rtt_ms": -1}]}},
            "rtt",
        ),
        (
            "POST",
            "/report",
            {"json": {"peers": [{"address": ROBOT2, "path": "direct"}] * (MAX_PEERS_IN_REPORT + 1)}},
            "peers",
        ),
    ],
)
def test_bad_requests_get_a_4xx_sentence(
    installation: Installation, method: str, path: str, kwargs: dict[str, Any], mentions: str
) -> None:
    assert join(installation, ROBOT1, installation.alice_code, "robot1").status_code == 200
    response = request(installation.app, ROBOT1, method, path, **kwargs)
    assert response.status_code == 422, response.text
    assert mentions in detail(response)


def test_a_body_too_large_is_refused_before_it_is_read(installation: Installation) -> None:
    body = b'{"peers": [' + b" " * (MAX_BODY_BYTES + 1) + b"]}"
    response = request(
        installation.app,
        ROBOT1,
        "POST",
        "/report",
        content=body,
        headers=JSON_CONTENT,
    )
    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in detail(response)

    async def chunks() -> Any:
        for _ in range(3):
            yield b" " * (MAX_BODY_BYTES // 2)

    streamed = request(
        installation.app,
        ROBOT1,
        "POST",
        "/report",
        content=chunks(),
        headers=JSON_CONTENT,
    )
    assert streamed.status_code == 413
    assert str(MAX_BODY_BYTES) in detail(streamed)


def test_unknown_routes_and_methods_get_a_sentence(installation: Installation) -> None:
    missing = request(installation.app, ROBOT1, "GET", "/nothing")
    assert missing.status_code == 404
    assert API_PREFIX in detail(missing)
    wrong_method = request(installation.app, ROBOT1, "DELETE", "/config")
    assert wrong_method.status_code == 405
    assert "no route" in detail(wrong_method)


def test_the_protocol_is_described_by_openapi(installation: Installation) -> None:
    async def fetch() -> httpx.Response:
        async with client(installation.app, ROBOT1) as http:
            return await http.get("/openapi.json")

    schema = run(fetch).json()
    paths = schema["paths"]
    assert set(paths) >= {f"{API_PREFIX}/join", f"{API_PREFIX}/config", f"{API_PREFIX}/report"}
    assert "JoinRequest" in schema["components"]["schemas"]
    assert "Problem" in schema["components"]["schemas"]
    config_params = {param["name"] for param in paths[f"{API_PREFIX}/config"]["get"]["parameters"]}
    assert config_params == {"after", "wait"}


# --- the held requests' shared reads of the revision ---


def test_concurrent_checks_share_one_read_of_the_revision() -> None:
    reads: list[float] = []
    revision = [7]

    async def read() -> int:
        reads.append(time.monotonic())
        await asyncio.sleep(0.05)
        return revision[0]

    async def scenario() -> None:
        shared = _SharedRevision(read)
        assert await asyncio.gather(*(shared.get() for _ in range(100))) == [7] * 100
        assert len(reads) == 1
        revision[0] = 8
        # Within REVISION_FRESH_S of the read's start the value read serves...
        assert await shared.get() == 7
        assert len(reads) == 1
        # ...and after it the next check reads again.
        await asyncio.sleep(REVISION_FRESH_S)
        assert await shared.get() == 8
        assert len(reads) == 2

    run(scenario)


def test_a_failed_read_reaches_every_waiter_and_the_next_check_reads_again() -> None:
    attempts = [0]

    async def read() -> int:
        attempts[0] += 1
        await asyncio.sleep(0.01)
        if attempts[0] == 1:
            raise RuntimeError("database down")
        return 3

    async def scenario() -> None:
        shared = _SharedRevision(read)
        outcomes = await asyncio.gather(shared.get(), shared.get(), return_exceptions=True)
        assert [type(outcome) for outcome in outcomes] == [RuntimeError, RuntimeError]
        assert await shared.get() == 3
        assert attempts[0] == 2

    run(scenario)


def test_a_bug_is_a_500_sentence_not_a_dropped_connection(
    installation: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(service, "device_config", broken)
    response = request(installation.app, ROBOT1, "GET", "/config?wait=0")
    assert response.status_code == 500
    assert "KeyError" in detail(response)
