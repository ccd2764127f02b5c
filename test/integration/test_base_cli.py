"""`husarnet-ros base add|rm` on a running daemon: a base server given at run time is registered with at
once, kept across a restart (the saved list wins over --base-server), and forgotten when removed."""

from __future__ import annotations

import pytest

from husarnet_ros.testing.lab_base import LabBaseServer
from husarnet_ros.testing.netlab import Lab, wait_until

from .conftest import DaemonFactory

pytestmark = pytest.mark.usefixtures("setup_accounts")

WAIT_S = 20  # bound of the waits that must succeed; never reached when nothing is wrong


def _base_servers(status: dict[str, object]) -> list[tuple[str, str]]:
    servers = status["base_servers"]
    assert isinstance(servers, list)
    return [(str(server["address"]), str(server["state"])) for server in servers]


def test_base_added_at_run_time_is_used_kept_across_restarts_and_removed(
    lab: Lab, daemon_factory: DaemonFactory
) -> None:
    robot_host, base_host = lab.lan(2, labels=["robot", "base"])
    server = LabBaseServer.start(base_host)
    try:
        daemon = daemon_factory(robot_host, "robot-a")
        assert daemon.status()["base_servers"] == []

        added = daemon.cli("base", "add", server.address)
        assert added.stdout.strip() == f"added base server {server.address}"
        daemon.cli("wait", "base", "--timeout", str(WAIT_S), timeout=WAIT_S + 10)
        status = daemon.status()
        assert _base_servers(status) == [(server.address, "registered")]
        assert status["base"]["home"] is True
        # The base server's side of it: one client registered (its status file is rewritten every 0.2 s).
        wait_until(lambda: server.status()["clients"] == 1, 5.0, interval=0.1, what="the base's client")

        # A restart keeps it, and the saved list wins over a base server given on the command line.
        elsewhere = f"{base_host.ipv4}:{server.port + 1}"
        daemon.extra_args += ["--base-server", elsewhere]
        daemon.restart()
        daemon.cli("wait", "base", "--timeout", str(WAIT_S), timeout=WAIT_S + 10)
        assert _base_servers(daemon.status()) == [(server.address, "registered")]

        removed = daemon.json("base", "rm", server.address)
        assert removed == []
        status = daemon.status()
        assert status["base_servers"] == []
        assert status["base"] is None
        waited = daemon.cli("wait", "base", "--timeout", "1", check=False)
        assert waited.returncode == 1
        # Emptied is a choice too: still nothing after another restart with --base-server given.
        daemon.restart()
        assert daemon.status()["base_servers"] == []
    finally:
        server.stop()
        server.remove_files()
