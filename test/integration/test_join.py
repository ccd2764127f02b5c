"""A robot set up with a self-hosted Dashboard and joined, with real daemons in network namespaces.

The server's namespace runs a daemon S (whitelist off, so unclaimed devices reach it), a base server, the
license.json served over plain HTTP on S's underlay address, and the real Websetup (`husarnet-ros websetup`,
on a SQLite database) bound to S's fc94 address. The robot's daemon R is set up with `setup-server`, joins
with a network's join code, and follows the changes the Dashboard makes, over the overlay.

Shows: setup-server pins and applies at once (base servers, Websetup allowed, status), join gives the
managed whitelist and hosts, a change arrives within seconds, a restart keeps the license and the managed
entries (Websetup down), another key is refused with both fingerprints.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from husarnet_ros.core.license import License, fingerprint, issue_license
from husarnet_ros.core.websetup import API_PREFIX
from husarnet_ros.dashboard import db
from husarnet_ros.dashboard.accounts import create_account
from husarnet_ros.dashboard.fleet import create_network
from husarnet_ros.dashboard.websetup import create_websetup_app
from husarnet_ros.testing.lab_base import LabBaseServer
from husarnet_ros.testing.lab_daemon import Daemon, husarnet_ros_command
from husarnet_ros.testing.netlab import Host, Lab, LabError, wait_until

from .conftest import DaemonFactory

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("setup_accounts")]

WAIT_S = 20.0  # bound of the waits that must succeed; never reached when nothing is wrong
LICENSE_PORT = 8080
WEBSETUP_PORT = 5590
BASE_PORT = 5600  # the server's daemon has 5582
INSTALLATION = "3d6f0a9e-1c2b-4e5f-8a7b-9c0d1e2f3a4b"
ROBOT2 = "fc94::2"
ROBOT3 = "fc94::3"


def make_license(key: SigningKey, websetup_address: str, base_servers: list[str], name: str) -> License:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return issue_license(
        key,
        installation_id=INSTALLATION,
        name=name,
        dashboard_url="http://198.18.0.1:8080",
        base_servers=base_servers,
        websetup_address=websetup_address,
        max_devices=10,
        issued=now - timedelta(hours=1),
        valid_until=now + timedelta(days=30),
    )


class Dashboard:
    """The database the Websetup process shares with the test, which changes it as the Dashboard would."""

    def __init__(self, directory: Path) -> None:
        self.url = f"sqlite:///{directory}/dashboard.sqlite3"
        db.migrate(self.url)
        self.engine = db.create_db_engine(self.url)
        self.factory = db.session_factory(self.engine)
        now = datetime.now(timezone.utc)
        with db.transaction(self.factory) as session:
            alice = create_account(session, "alice", "correct horse battery staple", now)
            lab = create_network(session, alice, "lab", now).network
            assert lab.join_code is not None
            self.lab_code: str = lab.join_code
        self.app: Any = create_websetup_app(self.factory)

    def claim(self, address: str, hostname: str) -> None:
        """Another device joins the lab (as its own daemon would): every member's config changes."""

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://websetup") as http:
                body = {"code": self.lab_code, "hostname": hostname}
                return await http.post(f"{API_PREFIX}/join", json=body)

        response = asyncio.run(go())
        assert response.status_code == 200, response.text

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    tmp_path.chmod(0o755)
    board = Dashboard(tmp_path)
    yield board
    board.close()


def serve_license(host: Host, directory: Path, license_: License) -> None:
    """license.json over plain HTTP on the host's underlay address (stopped by the lab)."""
    directory.mkdir(exist_ok=True)
    (directory / "license.json").write_text(license_.to_json())
    if not host.tcp_listening(LICENSE_PORT):
        argv = [sys.executable, "-m", "http.server", "--bind", host.ipv4, "--directory", str(directory)]
        host.popen([*argv, str(LICENSE_PORT)], stdout=open(directory / "http.log", "wb"), stderr=-2)  # noqa: SIM115
        wait_until(lambda: host.tcp_listening(LICENSE_PORT), 10.0, interval=0.1, what="license.json server")


def start_websetup(host: Host, daemon: Daemon, dashboard: Dashboard, log: Path) -> Any:
    argv = [
        *husarnet_ros_command(),
        "websetup",
        "--listen",
        f"[{daemon.address}]:{WEBSETUP_PORT}",
        "--database-url",
        dashboard.url,
    ]
    process = host.popen(argv, stdout=open(log, "wb"), stderr=-2)  # noqa: SIM115 (closed with the process)
    try:
        wait_until(lambda: host.tcp_listening(WEBSETUP_PORT), 15.0, interval=0.1, what="Websetup listening")
    except LabError as exc:
        raise LabError(f"{exc}; its log:\n{log.read_text(errors='replace')[-3000:]}") from None
    return process


def hosts_lines(daemon: Daemon) -> dict[str, str]:
    names: dict[str, str] = {}
    for line in daemon.hosts_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("fc94"):
            for name in parts[1:]:
                names[name] = parts[0]
    return names


def test_setup_server_join_changes_restart_and_another_key(
    lab: Lab, daemon_factory: DaemonFactory, dashboard: Dashboard, tmp_path: Path
) -> None:
    server_host, robot_host = lab.lan(2, labels=["server", "robot"])
    base = LabBaseServer.start(server_host, port=BASE_PORT)
    try:
        server = daemon_factory(server_host, "server", extra_args=["--no-whitelist"])
        robot = daemon_factory(robot_host, "robot")
        key = SigningKey.generate()
        license_ = make_license(key, server.address, [base.address], "Acme robots")
        serve_license(server_host, tmp_path / "www", license_)
        websetup = start_websetup(server_host, server, dashboard, tmp_path / "websetup.log")
        dashboard.claim(ROBOT2, "robot2")  # already in the lab network

        # setup-server: pinned on first use and applied at once.
        info = robot.json("setup-server", f"{server_host.ipv4}:{LICENSE_PORT}", timeout=40)
        assert info["first_use"] is True
        assert info["fingerprint"] == fingerprint(bytes(key.verify_key))
        assert info["websetup_address"] == server.address
        assert info["base_servers"] == [base.address]
        status = robot.status()
        assert [s["address"] for s in status["base_servers"]] == [base.address]
        assert status["license"]["name"] == "Acme robots"
        assert status["license"]["joined"] is False
        assert server.address in robot.json("whitelist", "ls")["addresses"]
        robot.cli("wait", "base", "--timeout", str(WAIT_S), timeout=WAIT_S + 10)

        # join over the overlay: the lab's members arrive as managed whitelist and hosts entries.
        joined = robot.json("join", dashboard.lab_code, "robot", timeout=40)
        assert (joined["account"], joined["network"], joined["hostname"]) == ("alice", "lab", "robot")
        robot.cli("wait", "joined", "--timeout", str(WAIT_S), timeout=WAIT_S + 10)
        assert ROBOT2 in robot.json("whitelist", "ls")["addresses"]
        wait_until(
            lambda: hosts_lines(robot).get("robot2") == ROBOT2, WAIT_S, interval=0.1, what="robot2 host"
        )
        human = robot.cli("status").stdout
        assert "Acme robots" in human
        assert "yes, as robot" in human

        # A change made in the Dashboard arrives within seconds (the client's long poll).
        dashboard.claim(ROBOT3, "robot3")
        wait_until(
            lambda: ROBOT3 in robot.json("whitelist", "ls")["addresses"], 10.0, interval=0.2, what="robot3"
        )
        wait_until(lambda: hosts_lines(robot).get("robot3") == ROBOT3, 10.0, interval=0.1, what="robot3 host")
        managed = json.loads((robot.state_dir / "managed.json").read_text())
        assert ROBOT3 in managed["config"]["whitelist"]

        # A restart with Websetup down keeps the license and the managed entries (offline).
        lab.stop_process(websetup)
        robot.restart()
        status = robot.status()
        assert status["license"]["joined"] is True
        assert status["license"]["fingerprint"] == fingerprint(bytes(key.verify_key))
        addresses = robot.json("whitelist", "ls")["addresses"]
        assert {server.address, ROBOT2, ROBOT3} <= set(addresses)
        assert hosts_lines(robot).get("robot3") == ROBOT3
        local_hosts = robot.state_dir / "hosts.json"  # managed entries are never saved as local ones
        assert not local_hosts.exists() or "robot3" not in local_hosts.read_text()

        # Another key for the same server is refused, showing both fingerprints.
        other = SigningKey.generate()
        serve_license(server_host, tmp_path / "www", make_license(other, server.address, [], "Impostor"))
        refused = robot.cli("setup-server", f"{server_host.ipv4}:{LICENSE_PORT}", check=False, timeout=40)
        assert refused.returncode == 1
        assert fingerprint(bytes(other.verify_key)) in refused.stderr
        assert fingerprint(bytes(key.verify_key)) in refused.stderr
        assert robot.status()["license"]["name"] == "Acme robots"
    finally:
        base.stop()
        base.remove_files()
