"""The typed client against the real control server with a fake daemon behind it."""

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
from husarnet_ros.testing.fake_controller import FakeController, sample_peers, serve_fake


@pytest.fixture
def served() -> Iterator[tuple[FakeController, ControlClient]]:
    fake = FakeController()
    for peer in sample_peers():
        fake.add_peer(peer)
    with serve_fake(fake) as (_, path), ControlClient(path) as client:
        yield fake, client


def test_status_and_peers_are_typed(served: tuple[FakeController, ControlClient]) -> None:
    _, client = served
    status = client.status()
    assert status.address == "fc94::1"
    assert all(isinstance(p, PeerStatus) for p in status.peers)
    assert [p.address for p in client.peers()] == ["fc94::2", "fc94::3", "fc94::4"]
    assert client.peer("robot2").endpoint == "198.18.0.2:5582"
    assert client.health().ok is True
    assert client.is_alive()


def test_whitelist_calls(served: tuple[FakeController, ControlClient]) -> None:
    fake, client = served
    assert client.whitelist_add("FC94::2") == Whitelist(enabled=True, addresses=["fc94::2"])
    assert client.whitelist_set_enabled(False).enabled is False
    assert client.whitelist() == Whitelist(enabled=False, addresses=["fc94::2"])
    assert client.whitelist_remove("fc94::2").addresses == []
    assert fake.calls == [
        ("whitelist_add", "fc94::2"),
        ("whitelist_set_enabled", False),
        ("whitelist_remove", "fc94::2"),
    ]


def test_hosts_calls(served: tuple[FakeController, ControlClient]) -> None:
    _, client = served
    assert client.hosts() == []
    assert client.hosts_add("robot5", "fc94::5") == [HostEntry(hostname="robot5", address="fc94::5")]
    assert client.resolve("robot5") == "fc94::5"
    assert client.resolve("FC94::0:7") == "fc94::7"
    assert client.hosts_remove("robot5") == []


def test_ping_wait_logs(served: tuple[FakeController, ControlClient]) -> None:
    fake, client = served
    fake.log_lines = ["a", "b", "c"]
    result = client.ping("robot3", count=2, interval_s=0.01, timeout_s=0.5)
    assert (result.path, result.base_server, result.received) == ("tunnelled", "198.18.0.100:5582", 2)
    assert client.wait_ready(0)
    assert client.wait_peer("robot2", 0)
    assert not client.wait_peer("fc94::4", 0)
    assert client.logs(2) == ["b", "c"]


@pytest.mark.parametrize(
    ("call", "status", "needle"),
    [
        (lambda c: c.whitelist_add("nope"), 422, "'nope' is not an IPv6 address"),
        (lambda c: c.whitelist_remove("fc94::9"), 404, "not on the whitelist"),
        (lambda c: c.whitelist_remove("a/b"), 422, "a/b"),
        (lambda c: c.hosts_add("bad name", "fc94::2"), 422, "hostname"),
        (lambda c: c.hosts_remove("robot9"), 404, "no host entry"),
        (lambda c: c.resolve("robot9"), 404, "unknown host name 'robot9'"),
        (lambda c: c.peer("fc94::99"), 404, "not a known peer"),
        (lambda c: c.ping("robot2", count=0), 422, "count"),
        (lambda c: c.ping("fc94::1"), 422, "own address"),
        (lambda c: c.wait_peer("a b", 0), 422, "a b"),
        (lambda c: c.logs(0), 422, "limit"),
    ],
)
def test_refusals_carry_the_daemons_message(
    served: tuple[FakeController, ControlClient], call: object, status: int, needle: str
) -> None:
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
    with serve_fake() as (_, path):
        client = ControlClient(path)
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


class _SlowController(FakeController):
    def logs(self, limit: int) -> list[str]:
        time.sleep(1.0)  # longer than the client's timeout below
        return []


def test_a_daemon_that_does_not_answer_in_time_is_an_error_not_a_hang() -> None:
    with (
        serve_fake(_SlowController()) as (_, path),
        ControlClient(path, timeout_s=0.2) as client,
        pytest.raises(ControlError, match="did not answer within"),
    ):
        client.logs()


def test_every_client_error_is_a_client_error() -> None:
    assert issubclass(DaemonUnavailable, ClientError)
    assert issubclass(ControlError, ClientError)


# --- waits that start before the daemon ------------------------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="hr-w-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _serve_later(path: Path, delay_s: float) -> tuple[ControlServer, threading.Timer]:
    server = ControlServer(FakeController(), str(path), group=None)
    timer = threading.Timer(delay_s, server.start)
    timer.start()
    return server, timer


def test_wait_ready_waits_for_the_socket_to_appear(socket_dir: Path) -> None:
    path = socket_dir / "control.sock"
    server, timer = _serve_later(path, 0.5)
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


def test_wait_ready_waits_through_a_stale_socket(socket_dir: Path) -> None:
    path = socket_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # what a killed daemon leaves behind: connecting is refused
    dead.close()
    server, timer = _serve_later(path, 0.5)
    try:
        assert ControlClient(str(path)).wait_ready(10)
    finally:
        timer.join()
        server.stop()


def test_wait_ready_times_out_saying_why(socket_dir: Path) -> None:
    path = socket_dir / "control.sock"
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


def test_wait_peer_waits_for_the_name_to_become_known(served: tuple[FakeController, ControlClient]) -> None:
    fake, client = served
    # fc94::2 has a direct path; the name robot7 becomes known a little later (hosts entry, or handshake).
    timer = threading.Timer(0.5, fake.hosts_add, args=("robot7", "fc94::2"))
    timer.start()
    try:
        assert client.wait_peer("robot7", 10)
    finally:
        timer.join()
    with pytest.raises(WaitTimedOut, match="unknown host name 'robot9'"):
        client.wait_peer("robot9", 0.3)
