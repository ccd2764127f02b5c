"""The daemon's control plane end to end on loopback: the real node controller (on the in-memory network),
its control API and CLI, a license.json served over HTTP on 127.0.0.1, and the real Websetup service
(husarnet_ros/dashboard/websetup.py, on SQLite) on 127.0.0.1. Websetup knows a device by the fc94 source
address of its connection; here every connection is from 127.0.0.1, so the test's server tells the app it
comes from robot1's overlay address (what the overlay guarantees in the daemon).

What it shows: setup-server pins and applies (base servers, Websetup allowed, status), fetch errors are clear,
another key is refused and replaced only with --replace --fingerprint, join applies the managed whitelist and
hosts (kept apart from the local ones), a change in the Dashboard arrives within seconds, a restart keeps the
license and the managed entries offline, an expired cached license is not applied."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from nacl.signing import SigningKey
from sqlalchemy import select

from husarnet_ros.cli.main import cli
from husarnet_ros.client import ControlClient, ControlError, NotFound
from husarnet_ros.core.license import License, fingerprint, issue_license
from husarnet_ros.core.websetup import API_PREFIX
from husarnet_ros.daemon.control_plane import ControlPlane
from husarnet_ros.daemon.node_controller import NodeController
from husarnet_ros.daemon.state import StateDir, StateError
from husarnet_ros.dashboard import db
from husarnet_ros.dashboard.accounts import create_account
from husarnet_ros.dashboard.fleet import create_network, remove_device
from husarnet_ros.dashboard.models import Account, Device, PeerReportRow
from husarnet_ros.dashboard.websetup import create_websetup_app
from husarnet_ros.testing.memnet_daemon import MemNetFleet, serve

INSTALLATION = "0b8f5a52-7d1e-4c3a-9f0e-5a2b6c8d9e10"
WEBSETUP_ADDRESS = "fc94::5e7"
BASES = ["198.18.0.10:5582", "198.18.0.11:5582"]
WAIT_S = 10.0


def make_license(key: SigningKey, *, name: str = "Acme robots") -> License:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return issue_license(
        key,
        installation_id=INSTALLATION,
        name=name,
        dashboard_url="http://198.18.0.10:8080",
        base_servers=BASES,
        websetup_address=WEBSETUP_ADDRESS,
        max_devices=10,
        issued=now - timedelta(days=1),
        valid_until=now + timedelta(days=365),
    )


# --- license.json over HTTP on 127.0.0.1 ------------------------------------------------------------------


@dataclass
class LicenseServer:
    """Serves ``body`` with ``status`` at /license.json."""

    body: bytes = b""
    status: int = 200
    httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        assert self.httpd is not None
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, license_: License) -> None:
        self.body, self.status = license_.to_json().encode(), 200


@pytest.fixture
def license_server() -> Iterator[LicenseServer]:
    served = LicenseServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/license.json":
                self.send_error(404)
                return
            self.send_response(served.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(served.body)))
            self.end_headers()
            self.wfile.write(served.body)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    served.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=served.httpd.serve_forever, daemon=True)
    thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()
    thread.join(5)


# --- the real Websetup on 127.0.0.1 -------------------------------------------------------------------------


@dataclass
class Websetup:
    factory: db.SessionFactory
    app: Any
    url: str
    lab_code: str
    device: dict[str, str] = field(default_factory=dict)  # {"address": fc94 of the daemon under test}

    def join_as(self, address: str, code: str, hostname: str) -> httpx.Response:
        """Claim another device (as if it joined from its own daemon)."""

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://websetup") as http:
                return await http.post(f"{API_PREFIX}/join", json={"code": code, "hostname": hostname})

        return asyncio.run(go())


@pytest.fixture
def websetup(tmp_path: Path) -> Iterator[Websetup]:
    url = f"sqlite:///{tmp_path}/dashboard.sqlite3"
    db.migrate(url)
    engine = db.create_db_engine(url)
    factory = db.session_factory(engine)
    now = datetime.now(timezone.utc)
    with db.transaction(factory) as session:
        alice = create_account(session, "alice", "correct horse battery staple", now)
        lab = create_network(session, alice, "lab", now).network
        assert lab.join_code is not None
        lab_code = lab.join_code
    app = create_websetup_app(factory)
    device: dict[str, str] = {}

    async def from_the_device(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "address" in device:
            scope = dict(scope, client=(device["address"], 40000))
        await app(scope, receive, send)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(
        from_the_device, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield Websetup(factory, app, f"http://127.0.0.1:{sock.getsockname()[1]}", lab_code, device)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.dispose()


# --- the daemon under test ----------------------------------------------------------------------------------


@dataclass
class Robot:
    fleet: MemNetFleet
    websetup: Websetup
    socket_path: str
    plane: ControlPlane

    @property
    def controller(self) -> NodeController:
        return self.fleet.member("robot1").controller

    @property
    def state(self) -> StateDir:
        return self.controller.state

    def client(self) -> ControlClient:
        return ControlClient(self.socket_path, timeout_s=10)

    def restart_plane(self) -> ControlPlane:
        """A new control plane over the same state directory, as a restarted daemon builds it."""
        self.plane.stop()
        self.plane = attach_plane(self.controller, self.websetup)
        self.plane.start()
        return self.plane


def attach_plane(controller: NodeController, websetup: Websetup) -> ControlPlane:
    plane = ControlPlane(controller.state, controller, websetup_url=lambda _: websetup.url)
    controller.control_plane = plane
    return plane


@pytest.fixture
def robot(websetup: Websetup) -> Iterator[Robot]:
    with MemNetFleet() as fleet:
        controller = fleet.add("robot1")
        websetup.device["address"] = fleet.address("robot1")
        plane = attach_plane(controller, websetup)
        with serve(controller) as socket_path:
            robot = Robot(fleet, websetup, socket_path, plane)
            try:
                yield robot
            finally:
                robot.plane.stop()


def wait_for(condition: Any, timeout_s: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture
def key() -> SigningKey:
    return SigningKey(bytes(range(32)))


# --- setup-server -------------------------------------------------------------------------------------------


def test_setup_server_pins_and_applies_at_once(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    license_ = make_license(key)
    license_server.serve(license_)
    with robot.client() as client:
        info = client.setup_server(license_server.address)
        assert info.first_use
        assert not info.replaced
        assert info.fingerprint == fingerprint(bytes(key.verify_key))
        assert info.websetup_address == WEBSETUP_ADDRESS
        assert info.base_servers == BASES
        # Applied with no restart: base servers (saved as `base add` saves), Websetup allowed through.
        assert [server.address for server in client.base_servers()] == BASES
        assert robot.state.load_base_servers() == BASES
        assert WEBSETUP_ADDRESS in client.whitelist().addresses
        # Allowed as a managed entry: whitelist.json keeps only the local ones.
        assert robot.state.load_whitelist().addresses == frozenset()
        status = client.status()
        assert status.license is not None
        assert status.license.name == "Acme robots"
        assert status.license.joined is False
    assert robot.state.license_path.read_text() == license_.to_json()
    assert robot.plane.client is not None  # the Websetup client runs
    # Not claimed yet: the client says so and waits for a join.
    assert wait_for(lambda: websetup_state(robot) == "not claimed")


def websetup_state(robot: Robot) -> str | None:
    info = robot.plane.info()
    return info.websetup_state if info is not None else None


def test_setup_server_cli_says_what_was_pinned_and_what_to_compare(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    license_server.serve(make_license(key))
    result = CliRunner().invoke(
        cli, ["--control-socket", robot.socket_path, "setup-server", license_server.address]
    )
    assert result.exit_code == 0, result.output
    assert "Acme robots" in result.output
    assert fingerprint(bytes(key.verify_key)) in result.output
    assert "compare the key above with the fingerprint the Dashboard shows" in result.output
    assert ", ".join(BASES) in result.output
    assert f"[{WEBSETUP_ADDRESS}]:5590" in result.output
    status = CliRunner().invoke(cli, ["--control-socket", robot.socket_path, "status"])
    assert status.exit_code == 0, status.output
    assert "Acme robots" in status.output
    assert "husarnet-ros join CODE" in status.output
    as_json = CliRunner().invoke(cli, ["--control-socket", robot.socket_path, "status", "--json"])
    assert json.loads(as_json.output)["license"]["fingerprint"] == fingerprint(bytes(key.verify_key))


def test_another_key_is_refused_with_both_fingerprints_and_replaced_only_when_asked(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    license_server.serve(make_license(key))
    other = SigningKey(bytes(range(1, 33)))
    new_fp = fingerprint(bytes(other.verify_key))
    with robot.client() as client:
        client.setup_server(license_server.address)
        license_server.serve(make_license(other, name="Impostor"))
        with pytest.raises(ControlError) as refused:
            client.setup_server(license_server.address)
        assert refused.value.status == 409
        assert new_fp in str(refused.value)
        assert fingerprint(bytes(key.verify_key)) in str(refused.value)
        assert client.status().license.name == "Acme robots"  # type: ignore[union-attr]
        with pytest.raises(ControlError, match="--replace needs --fingerprint") as no_fp:
            client.setup_server(license_server.address, replace=True)
        assert no_fp.value.status == 400
        with pytest.raises(ControlError, match="not the Dashboard you meant"):
            client.setup_server(
                license_server.address, fingerprint=fingerprint(bytes(key.verify_key)), replace=True
            )
        info = client.setup_server(license_server.address, fingerprint=new_fp, replace=True)
        assert info.replaced
        assert info.name == "Impostor"
    assert robot.state.load_license() is not None
    assert robot.state.load_license().fingerprint == new_fp  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("status", "body", "http_status", "message"),
    [
        (404, b"nope", 502, "answered HTTP 404, not a license"),
        (200, b"<html>login</html>", 422, "not JSON"),
        (200, b" " * (70 * 1024), 502, "more than 65536 bytes"),
    ],
)
def test_what_the_server_sends_instead_of_a_license_is_a_clear_error(
    robot: Robot, license_server: LicenseServer, status: int, body: bytes, http_status: int, message: str
) -> None:
    license_server.status, license_server.body = status, body
    with robot.client() as client, pytest.raises(ControlError, match=message) as caught:
        client.setup_server(license_server.address)
    assert caught.value.status == http_status
    assert not robot.state.license_path.exists()


def test_a_closed_port_and_a_bad_address_are_clear_errors(robot: Robot) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with robot.client() as client:
        with pytest.raises(ControlError, match="connection refused") as refused:
            client.setup_server(f"127.0.0.1:{port}")
        assert refused.value.status == 502
        for bad in ("http://x/y/z", "host:99999", "[fc94::1", "bad host"):
            with pytest.raises(ControlError) as caught:
                client.setup_server(bad)
            assert caught.value.status == 400, bad


def test_an_expired_license_is_refused(robot: Robot, license_server: LicenseServer, key: SigningKey) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    expired = issue_license(
        key,
        installation_id=INSTALLATION,
        name="Old",
        dashboard_url="http://x",
        base_servers=[],
        websetup_address=WEBSETUP_ADDRESS,
        max_devices=1,
        issued=now - timedelta(days=30),
        valid_until=now - timedelta(days=1),
    )
    license_server.serve(expired)
    with robot.client() as client, pytest.raises(ControlError, match="expired") as caught:
        client.setup_server(license_server.address)
    assert caught.value.status == 422


# --- join and the managed entries ---------------------------------------------------------------------------


def test_join_without_a_server_says_to_run_setup_server_first(robot: Robot) -> None:
    with (
        robot.client() as client,
        pytest.raises(ControlError, match="run husarnet-ros setup-server ADDR first"),
    ):
        client.join("abc")
    waited = CliRunner().invoke(
        cli, ["--control-socket", robot.socket_path, "wait", "joined", "--timeout", "0.2"]
    )
    assert waited.exit_code == 1
    assert "no Dashboard is set up: run husarnet-ros setup-server ADDR" in waited.output


def test_join_errors_come_back_with_websetups_detail(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    license_server.serve(make_license(key))
    with robot.client() as client:
        client.setup_server(license_server.address)
        with pytest.raises(NotFound, match=r"Websetup refused the join: .*code"):
            client.join("no-such-code")
        with pytest.raises(ControlError) as bad:
            client.join("has space")
        assert bad.value.status == 422


def test_join_applies_the_managed_whitelist_and_hosts_and_changes_follow(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    license_server.serve(make_license(key))
    controller = robot.controller
    controller.hosts_add("printer", "fc94::99")  # a local entry, kept apart
    with robot.client() as client:
        client.setup_server(license_server.address)
        # Another device of the lab network, claimed before robot1.
        robot2 = "fc94::2"
        assert robot.websetup.join_as(robot2, robot.websetup.lab_code, "robot2").status_code == 200
        joined = client.join(robot.websetup.lab_code, "robot1")
        assert (joined.account, joined.network, joined.hostname) == ("alice", "lab", "robot1")
        assert client.wait_joined(5.0)
        assert robot2 in client.whitelist().addresses
        hosts = {h.hostname: h.address for h in client.hosts()}
        assert hosts == {"printer": "fc94::99", "robot2": robot2}
        assert robot.state.load_hosts()[0].hostname == "printer"  # hosts.json keeps only the local one
        assert len(robot.state.load_hosts()) == 1
        saved = robot.state.load_managed()
        assert saved is not None
        assert saved[0] == INSTALLATION
        assert robot2 in saved[1].whitelist
        # Managed entries are changed in the Dashboard, not here.
        with pytest.raises(ControlError, match="change it there") as managed:
            client.whitelist_remove(robot2)
        assert managed.value.status == 409
        with pytest.raises(ControlError, match="from the Dashboard"):
            client.hosts_remove("robot2")
        # A change pushed by the Dashboard (robot3 joins the lab) arrives within seconds.
        robot3 = "fc94::3"
        assert robot.websetup.join_as(robot3, robot.websetup.lab_code, "robot3").status_code == 200
        assert wait_for(lambda: robot3 in controller.whitelist().addresses)
        assert wait_for(lambda: "robot3" in {h.hostname for h in controller.hosts()})
        status = client.status()
        assert status.license is not None
        assert status.license.joined
        assert status.license.dashboard_hostname == "robot1"
        assert status.license.websetup_state == "connected"


def test_a_restarted_daemon_keeps_the_license_and_managed_entries_offline(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    license_server.serve(make_license(key))
    with robot.client() as client:
        client.setup_server(license_server.address)
        assert robot.websetup.join_as("fc94::2", robot.websetup.lab_code, "robot2").status_code == 200
        client.join(robot.websetup.lab_code, "robot1")
    robot.controller.set_managed(frozenset(), [])  # as a fresh daemon starts: nothing managed
    assert "fc94::2" not in robot.controller.whitelist().addresses
    license_server.status = 503  # the Dashboard is down: nothing is fetched at start
    robot.websetup.device["address"] = "fc94::dead"  # and Websetup no longer answers for this device
    plane = robot.restart_plane()
    info = plane.info()
    assert info is not None
    assert info.joined
    assert "fc94::2" in robot.controller.whitelist().addresses
    assert WEBSETUP_ADDRESS in robot.controller.whitelist().addresses
    assert "robot2" in {h.hostname for h in robot.controller.hosts()}


def test_an_expired_cached_license_is_logged_and_not_applied(
    robot: Robot, key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    robot.state.save_license(_expired(key))
    with caplog.at_level(logging.ERROR):
        plane = robot.restart_plane()
    assert "expired" in caplog.text
    assert "setup-server" in caplog.text
    assert plane.client is None
    assert WEBSETUP_ADDRESS not in robot.controller.whitelist().addresses
    info = plane.info()
    assert info is not None
    assert info.expired
    with robot.client() as client, pytest.raises(ControlError, match="expired"):
        client.join("abc")


def _expired(key: SigningKey) -> License:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return issue_license(
        key,
        installation_id=INSTALLATION,
        name="Old",
        dashboard_url="http://x",
        base_servers=[],
        websetup_address=WEBSETUP_ADDRESS,
        max_devices=1,
        issued=now - timedelta(days=30),
        valid_until=now - timedelta(days=1),
    )


def test_a_damaged_license_file_stops_the_start_with_the_files_name(robot: Robot) -> None:
    robot.state.license_path.write_text('{"format": 1, "name": "half')
    with pytest.raises(StateError, match=r"license\.json is damaged.*setup-server"):
        robot.restart_plane()


def test_reports_arrive_and_a_device_released_in_the_dashboard_loses_its_managed_entries(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    license_server.serve(make_license(key))
    with robot.client() as client:
        client.setup_server(license_server.address)
        assert robot.websetup.join_as("fc94::2", robot.websetup.lab_code, "robot2").status_code == 200
        joined = client.join(robot.websetup.lab_code)  # no hostname: the daemon's own
        assert joined.hostname == "robot1"
        address = robot.fleet.address("robot1")

        def device_id() -> int | None:
            with db.transaction(robot.websetup.factory) as session:
                found = session.scalars(select(Device).where(Device.address == address)).first()
                return None if found is None else found.id

        def reported() -> bool:
            identifier = device_id()  # its own transaction: SQLite allows one writer at a time
            with db.transaction(robot.websetup.factory) as session:
                return session.get(PeerReportRow, identifier) is not None

        assert wait_for(reported)  # a report follows a join at once, then every 30 s
        identifier = device_id()
        assert identifier is not None
        with db.transaction(robot.websetup.factory) as session:
            alice = session.scalars(select(Account).where(Account.username == "alice")).one()
            remove_device(session, alice, identifier, datetime.now(timezone.utc))
        assert wait_for(lambda: "fc94::2" not in robot.controller.whitelist().addresses)
        assert WEBSETUP_ADDRESS in client.whitelist().addresses  # still set up, only released
        assert "robot2" not in {h.hostname for h in client.hosts()}
        assert not robot.state.managed_path.exists()
        status = client.status()
        assert status.license is not None
        assert not status.license.joined
        assert wait_for(lambda: websetup_state(robot) == "not claimed")


def test_an_unreachable_websetup_backs_off_and_says_why(
    robot: Robot, license_server: LicenseServer, key: SigningKey
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    robot.plane.stop()
    robot.plane = ControlPlane(
        robot.state, robot.controller, websetup_url=lambda _: f"http://127.0.0.1:{port}"
    )
    robot.controller.control_plane = robot.plane
    license_server.serve(make_license(key))
    with robot.client() as client:
        client.setup_server(license_server.address)
        assert wait_for(
            lambda: (websetup_state(robot) or "").startswith(
                "backing off (cannot connect: connection refused"
            )
        )
        client_ = robot.plane.client
        assert client_ is not None
        first_due = client_.follower.poll_due_at()
        assert first_due is not None
        with pytest.raises(ControlError, match="connection refused") as join_failed:
            client.join("abc")
        assert join_failed.value.status == 502


def test_a_license_expiring_while_the_daemon_runs_is_no_longer_applied(
    robot: Robot, license_server: LicenseServer, key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    now = [datetime.now(timezone.utc)]
    robot.plane.stop()
    robot.plane = ControlPlane(
        robot.state, robot.controller, wall_clock=lambda: now[0], websetup_url=lambda _: robot.websetup.url
    )
    robot.controller.control_plane = robot.plane
    license_server.serve(make_license(key))
    with robot.client() as client:
        client.setup_server(license_server.address)
        assert robot.websetup.join_as("fc94::2", robot.websetup.lab_code, "robot2").status_code == 200
        client.join(robot.websetup.lab_code, "robot1")
        assert "fc94::2" in client.whitelist().addresses
        now[0] += timedelta(days=400)  # past valid_until
        with caplog.at_level(logging.ERROR):
            # The next poll (after this change ends the one held open) finds the license expired.
            assert robot.websetup.join_as("fc94::3", robot.websetup.lab_code, "robot3").status_code == 200
            assert wait_for(lambda: WEBSETUP_ADDRESS not in robot.controller.whitelist().addresses)
        assert "expired" in caplog.text
        assert "fc94::2" not in client.whitelist().addresses
        assert wait_for(lambda: websetup_state(robot) == "stopped (the license expired)")
        status = client.status()
        assert status.license is not None
        assert status.license.expired
        assert robot.state.license_path.exists()  # kept, to be renewed with setup-server
