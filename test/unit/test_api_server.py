"""The control server: routes and error mapping over a real Unix socket, socket life cycle, threading.

Routes are tested against the real daemon controller on the in-memory network (robot1 served, robot2 its
directly reached peer). The socket life cycle and threading tests need a controller that is never called,
blocks or records where it runs: FakeController.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from husarnet_ros.api import MAX_MESSAGE_CHARS, MAX_QUOTED_CHARS
from husarnet_ros.daemon.control import ControlServer, ControlSocketError
from husarnet_ros.daemon.controller import Controller
from husarnet_ros.testing.fake_controller import FakeController
from husarnet_ros.testing.memnet_daemon import ServedFleet, served_fleet

UNHEARD = "fc94::4"  # whitelisted on robot1, but no robot has that address: its path stays none


def _http(socket_path: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), base_url="http://daemon", timeout=10)


@pytest.fixture
def daemon() -> Iterator[ServedFleet]:
    """robot1's daemon, served: robot2 is reached directly, UNHEARD is whitelisted and unreachable."""
    with served_fleet("robot1", ("robot2",)) as served:
        served.controller.whitelist_add(UNHEARD)
        yield served


@pytest.fixture
def http(daemon: ServedFleet) -> Iterator[httpx.Client]:
    with _http(daemon.socket_path) as client:
        yield client


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[ServedFleet]:
    """One daemon for the many requests that are refused and so change nothing."""
    with served_fleet("robot1", ("robot2",)) as served:
        yield served


@pytest.fixture(scope="module")
def shared_http(shared_daemon: ServedFleet) -> Iterator[httpx.Client]:
    with _http(shared_daemon.socket_path) as client:
        yield client


def test_both_controllers_satisfy_the_protocol(daemon: ServedFleet) -> None:
    assert isinstance(daemon.controller, Controller)
    assert isinstance(FakeController(), Controller)


def test_status_and_peers(http: httpx.Client, daemon: ServedFleet) -> None:
    robot2 = daemon.fleet.address("robot2")
    status = http.get("/v1/status").json()
    assert status["address"] == daemon.address
    assert {p["address"]: p["path"] for p in status["peers"]} == {robot2: "direct", UNHEARD: "none"}
    assert http.get("/v1/peers").json() == status["peers"]
    assert http.get("/v1/peers/robot2").json()["endpoint"] == "198.18.0.11:5582"
    assert http.get(f"/v1/peers/{robot2.upper()}").json()["hostname"] == "robot2"
    assert http.get(f"/v1/peers/{UNHEARD}").json()["whitelisted"] is True


def test_whitelist_routes_change_state(http: httpx.Client, daemon: ServedFleet) -> None:
    robot2 = daemon.fleet.address("robot2")
    added = http.post("/v1/whitelist", json={"address": "FC94:0::2"}).json()
    assert added == {"enabled": True, "addresses": ["fc94::2", UNHEARD, robot2]}
    assert daemon.controller.whitelist().addresses == added["addresses"]
    assert http.patch("/v1/whitelist", json={"enabled": False}).json()["enabled"] is False
    assert daemon.controller.whitelist().enabled is False
    assert http.patch("/v1/whitelist", json={"enabled": True}).json()["enabled"] is True
    assert http.delete("/v1/whitelist/fc94:0:0::2").json()["addresses"] == [UNHEARD, robot2]
    # Removing a connected peer cuts it off at once.
    assert http.delete(f"/v1/whitelist/{robot2}").json()["addresses"] == [UNHEARD]
    assert http.get("/v1/peers/robot2").status_code == 404


def test_hosts_routes_change_state(http: httpx.Client, daemon: ServedFleet) -> None:
    answer = http.post("/v1/hosts", json={"hostname": "Robot5", "address": "fc94::5"})
    assert answer.json() == [{"hostname": "robot5", "address": "fc94::5"}]
    assert [e.hostname for e in daemon.fleet.member("robot1").hosts_file.entries] == ["robot5"]
    assert http.get("/v1/resolve/robot5").json() == {"name": "robot5", "address": "fc94::5"}
    assert http.delete("/v1/hosts/ROBOT5").json() == []
    assert daemon.controller.hosts() == []


def test_ping_resolves_hostnames_first(http: httpx.Client, daemon: ServedFleet) -> None:
    result = http.post("/v1/ping", json={"target": "robot2", "count": 2, "interval_s": 0.1}).json()
    assert result["address"] == daemon.fleet.address("robot2")
    assert result["path"] == "direct"
    assert [r["seq"] for r in result["replies"]] == [1, 2]
    assert result["received"] == 2


def test_waits_and_logs(http: httpx.Client, daemon: ServedFleet) -> None:
    for i in range(10):
        daemon.fleet.log("robot1", f"line {i}")
    assert http.get("/v1/wait/ready", params={"timeout": 0}).json() == {"reached": True}
    assert http.get("/v1/wait/peer/robot2", params={"timeout": 0}).json() == {"reached": True}
    assert http.get(f"/v1/wait/peer/{UNHEARD}", params={"timeout": 0}).json() == {"reached": False}
    lines = http.get("/v1/logs", params={"limit": 3}).json()["lines"]
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["line 7", "line 8", "line 9"]


def test_refusals_that_name_the_daemon_itself(shared_http: httpx.Client, shared_daemon: ServedFleet) -> None:
    own = shared_daemon.address
    for method, url, body in (
        ("POST", "/v1/ping", {"target": own}),
        ("POST", "/v1/whitelist", {"address": own}),
    ):
        response = shared_http.request(method, url, json=body)
        assert response.status_code == 422
        assert "own address" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "needle"),
    [
        ("POST", "/v1/whitelist", {"address": "nope"}, 422, "'nope' is not an IPv6 address"),
        ("POST", "/v1/whitelist", {"address": "fd00::1"}, 422, "fc94::/16"),
        ("POST", "/v1/whitelist", {}, 422, "address: Field required"),
        ("POST", "/v1/whitelist", {"address": "fc94::2", "x": 1}, 422, "x: Extra inputs"),
        ("POST", "/v1/whitelist", [1, 2], 422, "invalid request"),
        ("DELETE", "/v1/whitelist/zz", None, 422, "'zz' is not an IPv6 address"),
        ("DELETE", "/v1/whitelist/fc94::9", None, 404, "fc94::9 is not on the whitelist"),
        ("PATCH", "/v1/whitelist", {"enabled": "maybe"}, 422, "enabled"),
        ("PATCH", "/v1/whitelist", {"enabled": 0}, 422, "enabled: Input should be a valid boolean"),
        (
            "POST",
            "/v1/ping",
            {"target": "robot2", "count": "3"},
            422,
            "count: Input should be a valid integer",
        ),
        ("POST", "/v1/hosts", {"hostname": "a b", "address": "fc94::2"}, 422, "hostname"),
        ("DELETE", "/v1/hosts/nobody", None, 404, "no host entry named 'nobody'"),
        ("DELETE", "/v1/hosts/a_b", None, 422, "a_b"),
        ("GET", "/v1/resolve/robot9", None, 404, "unknown host 'robot9'"),
        ("GET", "/v1/peers/robot9", None, 404, "robot9"),
        ("GET", "/v1/peers/fc94::99", None, 404, "not a known peer"),
        ("POST", "/v1/ping", {"target": "robot2", "count": 0}, 422, "count"),
        ("POST", "/v1/ping", {"target": "fc94::9"}, 422, "fc94::9 is not on the whitelist"),
        ("POST", "/v1/ping", {"target": "robot9"}, 404, "robot9"),
        ("GET", "/v1/wait/ready?timeout=-1", None, 422, "timeout"),
        ("GET", "/v1/wait/ready?timeout=abc", None, 422, "timeout"),
        ("GET", "/v1/logs?limit=0", None, 422, "limit"),
        ("GET", "/v1/nothing-here", None, 404, "no API route GET /v1/nothing-here"),
        ("PATCH", "/v1/status", None, 405, "no API route PATCH /v1/status"),
        ("DELETE", "/v1/whitelist/a/b", None, 422, "a/b"),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    shared_http: httpx.Client, method: str, url: str, body: object, status: int, needle: str
) -> None:
    response = shared_http.request(method, url, json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert needle in response.json()["error"]
    assert "Traceback" not in response.text


LONG = "x" * 10_000


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("POST", "/v1/whitelist", {"address": LONG}, 422),
        ("POST", "/v1/whitelist", {"address": "fc94::" + LONG}, 422),
        ("POST", "/v1/hosts", {"hostname": LONG, "address": "fc94::2"}, 422),
        ("POST", "/v1/hosts", {"hostname": "a." + "x" * 200, "address": "fc94::2"}, 422),  # a long label
        ("POST", "/v1/ping", {"target": LONG}, 422),
        ("POST", "/v1/whitelist", {LONG: "fc94::2"}, 422),  # the client names unknown fields too
        ("POST", "/v1/whitelist", {f"{LONG[:50]}{i}": 1 for i in range(500)}, 422),
        ("DELETE", f"/v1/whitelist/{LONG}", None, 422),
        ("DELETE", f"/v1/hosts/{LONG}", None, 422),
        ("GET", f"/v1/resolve/{LONG}", None, 422),
        ("GET", f"/v1/peers/{LONG}", None, 422),
        ("GET", f"/v1/wait/peer/{LONG}", None, 422),
        ("GET", f"/v1/no-such-route/{LONG}", None, 404),
    ],
    ids=[
        "address",
        "overlay-address",
        "hostname",
        "hostname-label",
        "ping-target",
        "unknown-field",
        "500-unknown-fields",
        "whitelist-path",
        "hosts-path",
        "resolve-path",
        "peer-path",
        "wait-peer-path",
        "no-route",
    ],
)
def test_errors_quote_long_input_shortened(
    shared_http: httpx.Client, method: str, url: str, body: object, status: int
) -> None:
    response = shared_http.request(method, url, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert len(error) <= MAX_MESSAGE_CHARS
    assert "x" * (MAX_QUOTED_CHARS + 1) not in error


def test_a_long_bad_value_is_quoted_with_an_ellipsis(shared_http: httpx.Client) -> None:
    error = shared_http.post("/v1/whitelist", json={"address": LONG}).json()["error"]
    assert error.startswith("invalid request: address: 'xxxxxxxx")
    assert "…' is not an IPv6 address (10000 characters)" in error


def test_malformed_json_body(http: httpx.Client) -> None:
    response = http.post("/v1/whitelist", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"error": "invalid request: the request body is not valid JSON"}


def test_undecodable_body(http: httpx.Client) -> None:
    response = http.post("/v1/hosts", content=b"\x80abc", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "the body must be UTF-8 JSON" in response.json()["error"]


def test_405_lists_every_method_of_the_path(http: httpx.Client) -> None:
    response = http.request("OPTIONS", "/v1/whitelist")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PATCH, POST"


def test_a_bug_in_the_controller_is_a_500_without_traceback_and_the_connection_survives(
    daemon: ServedFleet, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def buggy_logs(limit: int) -> list[str]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(daemon.controller, "logs", buggy_logs)  # a bug in the daemon, injected
    response = http.get("/v1/logs")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error in the daemon (RuntimeError); see the daemon log"}
    assert http.get("/v1/status").status_code == 200  # same connection, and the daemon goes on


def test_openapi_schema_lists_every_route(shared_http: httpx.Client) -> None:
    schema = shared_http.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/health",
        "/v1/status",
        "/v1/peers",
        "/v1/peers/{target}",
        "/v1/whitelist",
        "/v1/whitelist/{address}",
        "/v1/base",
        "/v1/base/{address}",
        "/v1/endpoints",
        "/v1/endpoints/{address}/{endpoint}",
        "/v1/hosts",
        "/v1/hosts/{hostname}",
        "/v1/resolve/{name}",
        "/v1/ping",
        "/v1/wait/ready",
        "/v1/wait/peer/{target}",
        "/v1/logs",
        "/v1/setup-server",
        "/v1/join",
        "/v1/wait/joined",
    }


# --- socket life cycle ----------------------------------------------------------------------------------
# The server's own behaviour: the controller is never called (only /v1/health, answered without it), so a
# FakeController stands in for the daemon.


def test_socket_is_0660_and_removed_on_stop(short_dir: Path) -> None:
    path = short_dir / "sub" / "control.sock"
    server = ControlServer(FakeController(), str(path), group=None)
    server.start()
    try:
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
    finally:
        server.stop()
    assert not path.exists()


def test_stale_socket_is_replaced(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # bound, never listening, then closed: what a killed daemon leaves behind
    dead.close()
    with (
        ControlServer(FakeController(), str(path), group=None),
        httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://daemon") as http,
    ):
        assert http.get("/v1/health").json()["ok"] is True


def test_refuses_to_start_while_another_daemon_answers(short_dir: Path) -> None:
    path = str(short_dir / "control.sock")
    with ControlServer(FakeController(), path, group=None):
        with pytest.raises(ControlSocketError, match="already listening"):
            ControlServer(FakeController(), path, group=None).start()
        # The running server's socket survived the failed attempt.
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://d") as http:
            assert http.get("/v1/health").status_code == 200


def test_refuses_to_replace_a_regular_file(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(FakeController(), str(path), group=None).start()
    assert path.read_text() == "precious"


def test_too_long_path_is_a_clear_error(short_dir: Path) -> None:
    path = short_dir / ("x" * 120)
    with pytest.raises(ControlSocketError, match="too long"):
        ControlServer(FakeController(), str(path), group=None).start()


def test_stop_leaves_a_newer_daemons_socket_alone(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    first = ControlServer(FakeController(), str(path), group=None)
    first.start()
    path.unlink()  # an operator removed it and started another daemon on the same path
    with ControlServer(FakeController(), str(path), group=None):
        first.stop()
        assert path.exists()


class _HangingController(FakeController):
    """wait_ready never finishes on its own; tells the test when a request is inside it (a daemon that
    blocks on purpose: faked)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    async def wait_ready(self, timeout_s: float) -> bool:
        self.entered.set()
        await asyncio.Event().wait()
        return True


def test_stop_ends_open_long_polls(short_dir: Path) -> None:
    fake = _HangingController()
    path = str(short_dir / "control.sock")
    server = ControlServer(fake, path, group=None)
    server.start()
    outcome: list[object] = []

    def long_poll() -> None:
        try:
            with httpx.Client(
                transport=httpx.HTTPTransport(uds=path), base_url="http://d", timeout=60
            ) as http:
                outcome.append(http.get("/v1/wait/ready", params={"timeout": 3600}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    poller = threading.Thread(target=long_poll)
    poller.start()
    try:
        assert fake.entered.wait(10), "the long poll never reached the controller"
    finally:
        server.stop()
        poller.join(30)
    assert not poller.is_alive()
    assert len(outcome) == 1  # answered or cut, but never left hanging
    assert not Path(path).exists()


class _LoopRecordingController(FakeController):
    """Records the threads its methods run on (what the test checks is the server's dispatch: faked)."""

    threads: set[int]

    def status(self):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        return super().status()

    async def wait_ready(self, timeout_s: float) -> bool:
        self.threads.add(threading.get_ident())
        return True


def test_controller_loop_runs_every_call_on_the_daemons_loop(short_dir: Path) -> None:
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    fake = _LoopRecordingController()
    fake.threads = set()
    path = str(short_dir / "control.sock")
    try:
        with (
            ControlServer(fake, path, group=None, controller_loop=loop),
            httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://d") as http,
        ):
            assert http.get("/v1/status").status_code == 200
            assert http.get("/v1/wait/ready?timeout=1").json() == {"reached": True}
            assert http.delete("/v1/whitelist/fc94::9").status_code == 404  # errors cross the loops too
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(10)
        loop.close()
    assert fake.threads == {loop_thread.ident}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another account needs root")
def test_give_to_hands_the_socket_and_the_directory_it_created_to_the_daemon_account() -> None:
    # What lets the daemon remove its socket at stop after switching to its own account.
    uid = 54323
    root = Path(tempfile.mkdtemp(prefix="hr-give-", dir="/tmp"))
    try:
        existing = root / "ctl.sock"
        server = ControlServer(FakeController(), str(existing), group=None)
        server.bind()
        server.give_to(uid)
        assert existing.stat().st_uid == uid
        assert root.stat().st_uid == 0  # it existed before: not ours to give away
        server.stop()
        created = root / "made" / "ctl.sock"
        server = ControlServer(FakeController(), str(created), group=None)
        server.bind()
        server.give_to(uid)
        assert created.stat().st_uid == uid
        assert created.parent.stat().st_uid == uid
        server.stop()
        assert not created.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
