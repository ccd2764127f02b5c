"""Property-based test of the control API against its own OpenAPI schema (schemathesis).

The daemon under test is the real one: robot1's ``NodeController`` on the in-memory network (robot2 its
directly reached peer), served by the real ``ControlServer`` on a Unix socket; the schema is the one that
socket serves, with examples added that name real robots (random strings are almost never an overlay
address or a known name, so without them the daemon would mostly answer 422). Every request, valid or not,
must get a documented answer: never a 500, always JSON, a body that matches the schema.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis  # a dev dependency (setup.py): missing it is an installation error, not a reason to skip
from hypothesis import HealthCheck, settings
from requests.adapters import HTTPAdapter
from schemathesis.specs.openapi.checks import positive_data_acceptance
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from husarnet_ros.api import (
    MAX_PING_COUNT,
    MAX_PING_INTERVAL_S,
    MAX_PING_TIMEOUT_S,
    MAX_WAIT_TIMEOUT_S,
    MIN_PING_INTERVAL_S,
    MIN_PING_TIMEOUT_S,
)
from husarnet_ros.testing.memnet_daemon import ServedFleet, served_fleet

BASE_URL = "http://daemon"
REQUEST_TIMEOUT_S = 30.0  # a failure limit for one request, never reached when the daemon answers
# Waits and pings take as long as they are asked to (up to an hour): generated ones are shortened to
# these, so the run stays short. A shortened value is still a valid one.
MAX_TEST_WAIT_S = 0.2
MAX_TEST_PING_COUNT = 2
MAX_TEST_PING_INTERVAL_S = 0.02
NEW_ADDRESS, NEW_NAME = "fc94::7", "cam7"  # whitelisted and named by examples, then removed


class _UnixConnection(HTTPConnection):
    """An HTTP connection to the daemon's Unix socket (requests, which schemathesis uses, speaks TCP only)."""

    def __init__(self, socket_path: str) -> None:
        super().__init__("daemon", timeout=REQUEST_TIMEOUT_S)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REQUEST_TIMEOUT_S)
        sock.connect(self._socket_path)
        return sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, socket_path: str) -> None:
        super().__init__("daemon")
        self._socket_path = socket_path

    def _new_conn(self) -> HTTPConnection:
        return _UnixConnection(self._socket_path)


class _UnixAdapter(HTTPAdapter):
    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self._pool = _UnixPool(socket_path)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


@pytest.fixture(scope="module")
def daemon() -> Iterator[ServedFleet]:
    with served_fleet("robot1", ("robot2",)) as served:
        yield served


@pytest.fixture(scope="module")
def session(daemon: ServedFleet) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.mount(BASE_URL, _UnixAdapter(daemon.socket_path))
        yield session


def _add_examples(document: dict[str, Any], daemon: ServedFleet) -> None:
    """Examples of requests the daemon accepts, naming its real peer, in schema order: what the examples
    add (a whitelist entry, a host name) is removed again by a later operation."""
    robot2 = daemon.fleet.address("robot2")
    targets = ["robot2", robot2, "robot1", NEW_ADDRESS]
    path_examples: dict[tuple[str, str], dict[str, list[str]]] = {
        ("get", "/v1/peers/{target}"): {"target": targets},
        ("delete", "/v1/whitelist/{address}"): {"address": [NEW_ADDRESS]},
        ("delete", "/v1/hosts/{hostname}"): {"hostname": [NEW_NAME]},
        ("get", "/v1/resolve/{name}"): {"name": targets},
        ("get", "/v1/wait/peer/{target}"): {"target": targets},
    }
    ping: dict[str, Any] = {"count": 2, "interval_s": 0.01, "timeout_s": MAX_TEST_WAIT_S}
    body_examples: dict[tuple[str, str], list[dict[str, Any]]] = {
        ("post", "/v1/whitelist"): [
            {"address": NEW_ADDRESS},
            {"address": robot2},
            {"address": daemon.address},
        ],
        ("post", "/v1/hosts"): [{"hostname": NEW_NAME, "address": NEW_ADDRESS}],
        ("post", "/v1/ping"): [{"target": target, **ping} for target in targets],
    }
    for (method, path), by_name in path_examples.items():
        for parameter in document["paths"][path][method]["parameters"]:
            values = by_name.get(parameter["name"], [])
            if values:
                parameter["examples"] = {f"e{i}": {"value": value} for i, value in enumerate(values)}
    for (method, path), bodies in body_examples.items():
        media = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        media["examples"] = {f"e{i}": {"value": body} for i, body in enumerate(bodies)}


@pytest.fixture(scope="module")
def served_schema(daemon: ServedFleet) -> Any:
    """The schema as the daemon serves it, with examples of real peers and names."""
    transport = httpx.HTTPTransport(uds=daemon.socket_path)
    with httpx.Client(transport=transport, base_url=BASE_URL, timeout=REQUEST_TIMEOUT_S) as http:
        document = http.get("/openapi.json").raise_for_status().json()
    _add_examples(document, daemon)
    return schemathesis.openapi.from_dict(document)


schema = schemathesis.pytest.from_fixture("served_schema")


def _shorten(container: dict[str, Any], name: str, lowest: float, highest: float, shortest: float) -> None:
    """Lower a valid number (query strings are numbers too) to ``shortest``, and give ``shortest`` where the
    value is left out (the defaults are long); an invalid value stays as generated, to be refused."""
    value = container.setdefault(name, shortest)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return
    try:
        number = float(value)
    except ValueError:
        return
    if lowest <= number <= highest and number > shortest:
        container[name] = str(shortest) if isinstance(value, str) else shortest


def _bound_in_time(case: Any) -> None:
    if case.operation.path.startswith("/v1/wait/"):
        if case.query is None:
            case.query = {}
        _shorten(case.query, "timeout", 0, MAX_WAIT_TIMEOUT_S, MAX_TEST_WAIT_S)
    if case.operation.path == "/v1/ping" and isinstance(case.body, dict):
        _shorten(case.body, "count", 1, MAX_PING_COUNT, MAX_TEST_PING_COUNT)
        _shorten(case.body, "interval_s", MIN_PING_INTERVAL_S, MAX_PING_INTERVAL_S, MAX_TEST_PING_INTERVAL_S)
        _shorten(case.body, "timeout_s", MIN_PING_TIMEOUT_S, MAX_PING_TIMEOUT_S, MAX_TEST_WAIT_S)


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_per_schema(case: Any, session: requests.Session) -> None:
    _bound_in_time(case)
    # Positive-data acceptance is left out on purpose: the schema says "string" for addresses and host
    # names, and the daemon rightly answers 422 to a string that is neither (the other checks hold it to
    # a documented 4xx, never a 500).
    case.call_and_validate(base_url=BASE_URL, session=session, excluded_checks=[positive_data_acceptance])
