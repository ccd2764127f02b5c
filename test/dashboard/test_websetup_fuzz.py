"""Websetup never answers a daemon's bad request with a 5xx: whatever bodies and query strings a claimed or
an unclaimed device sends, the answer is a documented status with a model body, or ``{"detail": "..."}``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from husarnet_ros.core.websetup import API_PREFIX, DeviceConfig, JoinResult
from husarnet_ros.dashboard import db, service
from husarnet_ros.dashboard.websetup import create_websetup_app

CLAIMED, UNCLAIMED = "fc94::1", "fc94::2"
DOCUMENTED = {200, 204, 404, 409, 413, 422}
PASSWORD = "correct horse battery staple"
JSON_CONTENT = {"content-type": "application/json"}


@dataclass
class Env:
    app: Any
    codes: list[str]


@pytest.fixture
def env(sqlite_url: str) -> Iterator[Env]:
    db.migrate(sqlite_url)
    engine = db.create_db_engine(sqlite_url)
    factory = db.session_factory(engine)
    now = datetime.now(timezone.utc)
    try:
        with db.transaction(factory) as session:
            account = service.create_account(session, "alice", PASSWORD, now)
            network = service.create_network(session, account, "lab", now).network
            account_code = service.account_join_code(session, account)
            assert network.join_code is not None
            service.claim_device(session, account_code, CLAIMED, "robot1", now)
        yield Env(create_websetup_app(factory), [account_code, network.join_code])
    finally:
        engine.dispose()


# JSON has no NaN or infinity: httpx refuses to send them.
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
peer_links = st.fixed_dictionaries(
    {
        "address": st.sampled_from([CLAIMED, UNCLAIMED, "fc94::9", "fd00:98::1"]) | st.text(max_size=40),
        "path": st.sampled_from(["direct", "tunnelled", "down"]) | st.text(max_size=10),
    },
    optional={
        "base_server": st.none() | st.text(max_size=320),
        "rtt_ms": st.none() | finite | st.integers(),
    },
)


def join_bodies(codes: list[str]) -> st.SearchStrategy[Any]:
    return (
        st.fixed_dictionaries(
            {"code": st.sampled_from(codes) | st.text(max_size=70)},
            optional={"hostname": st.none() | st.text(max_size=260)},
        )
        | json_values
    )


report_bodies = st.fixed_dictionaries({"peers": st.lists(peer_links, max_size=5)}) | json_values
# Anything but a valid wait is refused at once; a valid one is replaced by 0 so no request is held.
waits = st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e999", "", "x", "0x10"])
afters = st.integers(min_value=-(2**64), max_value=2**64).map(str) | st.text(max_size=20)


def send(app: Any, source: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(source, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://websetup", timeout=30) as http:
            return await http.request(method, API_PREFIX + path, **kwargs)

    return asyncio.run(go())


def check_answer(response: httpx.Response) -> None:
    assert response.status_code in DOCUMENTED, (response.status_code, response.text)
    if response.status_code == 204:
        assert response.content == b""
        return
    body = response.json()
    if response.status_code == 200:
        model = JoinResult if response.request.url.path.endswith("/join") else DeviceConfig
        model.model_validate(body)
        return
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str)
    assert body["detail"]


FUZZ = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


@FUZZ
@given(source=st.sampled_from([CLAIMED, UNCLAIMED]), data=st.data())
def test_join_bodies(env: Env, source: str, data: st.DataObject) -> None:
    body = data.draw(join_bodies(env.codes))
    check_answer(send(env.app, source, "POST", "/join", json=body))


@FUZZ
@given(source=st.sampled_from([CLAIMED, UNCLAIMED]), body=report_bodies)
def test_report_bodies(env: Env, source: str, body: Any) -> None:
    check_answer(send(env.app, source, "POST", "/report", json=body))


@FUZZ
@given(source=st.sampled_from([CLAIMED, UNCLAIMED]), raw=st.binary(max_size=200))
def test_raw_bodies(env: Env, source: str, raw: bytes) -> None:
    for path in ("/join", "/report"):
        check_answer(
            send(env.app, source, "POST", path, content=raw, headers={"content-type": "application/json"})
        )


@FUZZ
@given(source=st.sampled_from([CLAIMED, UNCLAIMED]), after=afters, wait=waits, extra=st.text(max_size=10))
def test_config_queries(env: Env, source: str, after: str, wait: str, extra: str) -> None:
    params = {"after": after, "wait": wait, extra: json.dumps(extra)}
    check_answer(send(env.app, source, "GET", "/config", params=params))
