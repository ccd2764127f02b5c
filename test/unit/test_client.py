"""The typed client against the real control server and the real daemon controller on the in-memory network
(husarnet_ros.testing.memnet_daemon)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.api import (
    CONTROL_SOCKET_ENV,
    DEFAULT_CONTROL_SOCKET,
    MAX_MESSAGE_CHARS,
    HostEntry,
    PeerStatus,
    Whitelist,
)
from husarnet_ros.client import (
    ClientError,
    ControlClient,
    ControlError,
    DaemonUnavailable,
    NotFound,
    SocketAccessDenied,
    WaitTimedOut,
)
from husarnet_ros.core.config import DaemonConfig
from husarnet_ros.daemon.control import ControlServer
from husarnet_ros.testing.memnet_daemon import MemNetFleet, ServedFleet, served_fleet

UNHEARD = "fc94::4"  # whitelisted on robot1, but no robot has that address: its path stays none
Served = tuple[ServedFleet, ControlClient]


@pytest.fixture
def served() -> Iterator[Served]:
    """A client of robot1's daemon: robot2 is reached directly, UNHEARD is whitelisted and unreachable."""
    with served_fleet("robot1", ("robot2",)) as fleet, ControlClient(fleet.socket_path) as client:
        fleet.controller.whitelist_add(UNHEARD)
        yield fleet, client


@pytest.fixture
def alone() -> Iterator[Served]:
    """A client of robot1's daemon, alone on its network, with an empty whitelist."""
    with served_fleet("robot1", ()) as fleet, ControlClient(fleet.socket_path) as client:
        yield fleet, client


def test_status_and_peers_are_typed(served: Served) -> None:
    fleet, client = served
    status = client.status()
    assert status.address == fleet.address
    assert all(isinstance(p, PeerStatus) for p in status.peers)
    assert [p.address for p in client.peers()] == [fleet.fleet.address("robot2"), UNHEARD]
    assert client.peer("robot2").endpoint == "198.18.0.11:5582"
    assert client.health().ok is True
    assert client.is_alive()


def test_whitelist_calls(alone: Served) -> None:
    fleet, client = alone
    assert client.whitelist_add("FC94::2") == Whitelist(enabled=True, addresses=["fc94::2"])
    assert client.whitelist_set_enabled(False).enabled is False
    assert client.whitelist() == Whitelist(enabled=False, addresses=["fc94::2"])
    assert client.whitelist_remove("fc94::2").addresses == []
    assert fleet.controller.whitelist() == Whitelist(enabled=False, addresses=[])


def test_hosts_calls(alone: Served) -> None:
    fleet, client = alone
    assert client.hosts() == []
    assert client.hosts_add("robot5", "fc94::5") == [HostEntry(hostname="robot5", address="fc94::5")]
    assert [e.hostname for e in fleet.fleet.member("robot1").hosts_file.entries] == ["robot5"]
    assert client.resolve("robot5") == "fc94::5"
    assert client.resolve("FC94::0:7") == "fc94::7"
    assert client.hosts_remove("robot5") == []


def test_ping_wait_logs(served: Served) -> None:
    fleet, client = served
    for line in ("a", "b", "c"):
        fleet.fleet.log("robot1", line)
    result = client.ping("robot2", count=2, interval_s=0.01, timeout_s=5)
    assert (result.address, result.hostname) == (fleet.fleet.address("robot2"), "robot2")
    assert (result.path, result.endpoint, result.received) == ("direct", "198.18.0.11:5582", 2)
    assert client.wait_ready(0)
    assert client.wait_peer("robot2", 0)
    assert not client.wait_peer(UNHEARD, 0)
    assert [line.rsplit(": ", 1)[1] for line in client.logs(2)] == ["b", "c"]


@pytest.mark.parametrize(
    ("call", "status", "needle"),
    [
        (lambda c: c.whitelist_add("nope"), 422, "'nope' is not an IPv6 address"),
        (lambda c: c.whitelist_remove("fc94::9"), 404, "not on the whitelist"),
        (lambda c: c.whitelist_remove("a/b"), 422, "a/b"),
        (lambda c: c.hosts_add("bad name", "fc94::2"), 422, "hostname"),
        (lambda c: c.hosts_remove("robot9"), 404, "no host entry"),
        (lambda c: c.resolve("robot9"), 404, "unknown host 'robot9'"),
        (lambda c: c.peer("fc94::99"), 404, "not a known peer"),
        (lambda c: c.ping("robot2", count=0), 422, "count"),
        (lambda c: c.ping(c.status().address), 422, "own address"),
        (lambda c: c.ping("fc94::9"), 422, "fc94::9 is not on the whitelist"),
        (lambda c: c.whitelist_add(c.status().address), 422, "own address"),
        (lambda c: c.wait_peer("a b", 0), 422, "a b"),
        (lambda c: c.logs(0), 422, "limit"),
    ],
)
def test_refusals_carry_the_daemons_message(served: Served, call: object, status: int, needle: str) -> None:
    _, client = served
    with pytest.raises(ControlError) as info:
        call(client)  # type: ignore[operator]
    assert info.value.status == status
    assert needle in str(info.value)
    # 404 has its own type (the ROS nodes treat "already gone" as done), the others stay ControlError.
    assert isinstance(info.value, NotFound) == (status == 404)


def test_no_socket_means_daemon_unavailable_with_advice() -> None:
    client = ControlClient("/tmp/hr-definitely-missing/control.sock")
    with pytest.raises(DaemonUnavailable) as info:
        client.status()
    message = str(info.value)
    assert "daemon not running (no socket at /tmp/hr-definitely-missing/control.sock)" in message
    assert "husarnet-ros daemon" in message
    assert "--control-socket" in message
    assert info.value.socket_path == "/tmp/hr-definitely-missing/control.sock"
    assert not client.is_alive()


def test_stale_socket_means_daemon_unavailable() -> None:
    directory = Path(tempfile.mkdtemp(prefix="hr-c-", dir="/tmp"))
    try:
        path = directory / "control.sock"
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(path))
        dead.close()
        with pytest.raises(DaemonUnavailable, match="nothing answers on"):
            ControlClient(str(path)).whitelist()
    finally:
        shutil.rmtree(directory)


def test_stopped_daemon_between_calls_is_daemon_unavailable() -> None:
    with served_fleet("robot1", ()) as fleet:
        client = ControlClient(fleet.socket_path)
        assert client.is_alive()
    with pytest.raises(DaemonUnavailable):
        client.status()


def test_a_socket_path_too_long_for_a_unix_socket_is_a_clear_error() -> None:
    for path in ("/tmp/" + "y" * 200, "/tmp/" + "y" * 10_000):
        with pytest.raises(SocketAccessDenied, match="too long for a Unix socket") as info:
            ControlClient(path).status()
        assert len(str(info.value)) < MAX_MESSAGE_CHARS


def test_the_daemon_and_the_client_default_to_the_same_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTROL_SOCKET_ENV, raising=False)
    assert DaemonConfig().control_socket == DEFAULT_CONTROL_SOCKET
    assert ControlClient().socket_path == str(DaemonConfig().control_socket)


def test_socket_path_comes_from_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTROL_SOCKET_ENV, raising=False)
    assert ControlClient().socket_path == str(DEFAULT_CONTROL_SOCKET)
    monkeypatch.setenv(CONTROL_SOCKET_ENV, "/tmp/env.sock")
    assert ControlClient().socket_path == "/tmp/env.sock"
    assert ControlClient("/tmp/arg.sock").socket_path == "/tmp/arg.sock"


def test_a_daemon_that_does_not_answer_in_time_is_an_error_not_a_hang(
    alone: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, _ = alone

    def stuck_logs(limit: int) -> list[str]:
        time.sleep(1.0)  # longer than the client's timeout below
        return []

    monkeypatch.setattr(fleet.controller, "logs", stuck_logs)  # a daemon stuck, injected
    with (
        ControlClient(fleet.socket_path, timeout_s=0.2) as client,
        pytest.raises(ControlError, match="did not answer within"),
    ):
        client.logs()


def test_every_client_error_is_a_client_error() -> None:
    assert issubclass(DaemonUnavailable, ClientError)
    assert issubclass(ControlError, ClientError)


# --- waits that start before the daemon ------------------------------------------------------------------


def _serve_later(fleet: MemNetFleet, path: Path, delay_s: float) -> tuple[ControlServer, threading.Timer]:
    """robot1's daemon starts serving on ``path`` after ``delay_s``."""
    server = ControlServer(fleet.add("robot1"), str(path), group=None)
    timer = threading.Timer(delay_s, server.start)
    timer.start()
    return server, timer


def test_wait_ready_waits_for_the_socket_to_appear(short_dir: Path, fleet: MemNetFleet) -> None:
    path = short_dir / "control.sock"
    server, timer = _serve_later(fleet, path, 0.5)
    retried: list[ClientError] = []
    try:
        started = time.monotonic()
        assert ControlClient(str(path)).wait_ready(10, on_retry=retried.append)
        assert time.monotonic() - started >= 0.5
    finally:
        timer.join()
        server.stop()
    assert retried
    assert all(isinstance(exc, DaemonUnavailable) for exc in retried)


def test_wait_ready_waits_through_a_stale_socket(short_dir: Path, fleet: MemNetFleet) -> None:
    path = short_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # what a killed daemon leaves behind: connecting is refused
    dead.close()
    server, timer = _serve_later(fleet, path, 0.5)
    try:
        assert ControlClient(str(path)).wait_ready(10)
    finally:
        timer.join()
        server.stop()


def test_wait_ready_times_out_saying_why(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    started = time.monotonic()
    with pytest.raises(WaitTimedOut, match="daemon not running") as info:
        ControlClient(str(path)).wait_ready(0.5)
    assert time.monotonic() - started >= 0.5
    assert isinstance(info.value.last_error, DaemonUnavailable)


def test_a_wait_gives_up_at_once_when_waiting_cannot_help() -> None:
    started = time.monotonic()
    with pytest.raises(SocketAccessDenied):
        ControlClient("/tmp/" + "y" * 200).wait_ready(30)
    assert time.monotonic() - started < 5


def test_wait_peer_waits_for_the_name_to_become_known(served: Served) -> None:
    fleet, client = served
    # robot2 has a direct path; the name robot7 for it becomes known a little later (a hosts entry).
    timer = threading.Timer(0.5, fleet.controller.hosts_add, args=("robot7", fleet.fleet.address("robot2")))
    timer.start()
    try:
        assert client.wait_peer("robot7", 10)
    finally:
        timer.join()
    with pytest.raises(WaitTimedOut, match="unknown host 'robot9'"):
        client.wait_peer("robot9", 0.3)
