"""The whitelist manager with real rclpy service clients against the real control API of a fake daemon."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from husarnet_ros.msg import Peer  # noqa: E402
from husarnet_ros.ros.whitelist_node import WhitelistNode  # noqa: E402
from husarnet_ros.srv import AddPeer, ListPeers, Ping, RemovePeer  # noqa: E402
from husarnet_ros.testing.fake_controller import FakeController, sample_peers, serve_fake  # noqa: E402

# Bounds of every wait; a test that hits one fails with a message, it never asserts on time.
CALL_TIMEOUT_S = 20.0
CONDITION_TIMEOUT_S = 15.0
FLEET = """\
robots:
  robot1: {address: fc94::1}
  robot2: {address: fc94::2}
  robot3: {address: fc94::3}
  robot4: {address: fc94::4}
links:
  - [robot1, robot2]
  - [robot1, robot3]
"""


@pytest.fixture(scope="module")
def ros_context() -> Iterator[Any]:
    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_LOG_DIR", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    log_dir = tempfile.mkdtemp(prefix="hr-roslog-")
    os.environ["ROS_DOMAIN_ID"] = str(120 + os.getpid() % 50)  # unique-ish, distinct from other modules
    os.environ["ROS_LOG_DIR"] = log_dir
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Harness:
    """A whitelist node and a client node spun by one executor in a background thread."""

    def __init__(self, context: Any, parameters: list[Parameter[Any]]) -> None:
        self.context = context
        self.node = WhitelistNode(context=context, parameter_overrides=parameters)
        self.client_node = Node("whitelist_test_client", context=context)
        self.executor = MultiThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client_node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.clients: dict[str, Any] = {}

    def call(self, srv_type: Any, name: str, **fields: Any) -> Any:
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = self.client_node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=CALL_TIMEOUT_S), f"service {name} did not appear"
        request = srv_type.Request(**fields)
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(CALL_TIMEOUT_S), f"no answer from {name} within {CALL_TIMEOUT_S} s"
        return future.result()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=10.0)
        self.node.close()
        self.node.destroy_node()
        self.client_node.destroy_node()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + CONDITION_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def fake() -> Iterator[tuple[FakeController, str]]:
    controller = FakeController()
    for peer in sample_peers():
        controller.add_peer(peer)
    with serve_fake(controller) as served:
        yield served


@pytest.fixture
def harness_factory(ros_context: Any) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(socket: str, **params: Any) -> Harness:
        parameters: list[Parameter[Any]] = [
            Parameter("control_socket", value=socket),
            Parameter("retry_period_s", value=0.2),
        ]
        parameters += [Parameter(name, value=value) for name, value in params.items()]
        harness = Harness(ros_context, parameters)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


# --- add_peer ------------------------------------------------------------------------------------------


def test_add_valid_address(fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    response = harness.call(AddPeer, "husarnet/add_peer", address="FC94:0::9", hostname="")
    assert response.success, response.message
    assert "fc94::9" in controller.allowed
    assert "whitelisted fc94::9" in response.message
    again = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert again.success
    assert "already on the whitelist" in again.message


def test_add_with_hostname_writes_the_hosts_block(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    response = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="Lab-Cam")
    assert response.success, response.message
    assert controller.host_entries["lab-cam"] == "fc94::9"
    assert "fc94::9" in controller.allowed


@pytest.mark.parametrize(
    ("address", "hostname", "expected"),
    [
        ("2001:db8::1", "", "fc94::/16"),
        ("not-an-address", "", "not an IPv6 address"),
        ("", "", "give the peer's overlay address"),
        ("fc94::9", "bad_name!", "invalid hostname"),
    ],
)
def test_malformed_request_fails_cleanly_and_the_node_keeps_serving(
    fake: tuple[FakeController, str],
    harness_factory: Callable[..., Harness],
    address: str,
    hostname: str,
    expected: str,
) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    response = harness.call(AddPeer, "husarnet/add_peer", address=address, hostname=hostname)
    assert not response.success
    assert expected in response.message
    assert not any(call[0] == "whitelist_add" for call in controller.calls)
    following = harness.call(AddPeer, "husarnet/add_peer", address="fc94::a", hostname="")
    assert following.success, following.message


def test_hostname_only_is_resolved_by_the_daemon(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="robot3")
    assert response.success, response.message
    assert "fc94::3" in controller.allowed
    assert "robot3" not in controller.host_entries  # the daemon already knows that name


def test_unknown_hostname_only(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="nobody")
    assert not response.success
    assert "cannot resolve hostname 'nobody'" in response.message
    assert controller.allowed == []


def test_hostname_only_is_resolved_by_the_fleet_file(
    tmp_path: Path, fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET, encoding="utf-8")
    harness = harness_factory(socket, fleet_file=str(fleet))
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="robot4")
    assert response.success, response.message
    assert "fc94::4" in controller.allowed
    assert controller.host_entries["robot4"] == "fc94::4"


# --- remove_peer ---------------------------------------------------------------------------------------


def test_remove_by_address_also_forgets_its_names(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    controller.host_entries["printer"] = "fc94::99"
    harness = harness_factory(socket)
    assert harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="cam").success
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="fc94::9", hostname="")
    assert response.success, response.message
    assert "fc94::9" not in controller.allowed
    assert "cam" not in controller.host_entries
    assert controller.host_entries == {"printer": "fc94::99"}


def test_remove_by_hostname(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    assert harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="cam").success
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="", hostname="cam")
    assert response.success, response.message
    assert controller.allowed == []
    assert "cam" not in controller.host_entries


def test_remove_absent_peer_succeeds_and_says_so(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    _, socket = fake
    harness = harness_factory(socket)
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="fc94::77", hostname="")
    assert response.success
    assert "was not on the whitelist" in response.message
    bad = harness.call(RemovePeer, "husarnet/remove_peer", address="10.0.0.1", hostname="")
    assert not bad.success
    assert "not an IPv6 address" in bad.message


# --- list_peers and ping -------------------------------------------------------------------------------


def test_list_peers(fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]) -> None:
    controller, socket = fake
    controller.allowed.append("fc94::2")
    harness = harness_factory(socket)
    response = harness.call(ListPeers, "husarnet/list_peers")
    assert [p.address for p in response.peers] == ["fc94::2", "fc94::3", "fc94::4"]
    by_address = {p.address: p for p in response.peers}
    assert by_address["fc94::2"].path == Peer.PATH_DIRECT
    assert by_address["fc94::2"].whitelisted
    assert by_address["fc94::3"].path == Peer.PATH_TUNNELLED
    assert not by_address["fc94::3"].whitelisted
    assert by_address["fc94::4"].hostname == ""
    assert response.whitelist_enabled


def test_ping_a_direct_peer(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    response = harness.call(Ping, "husarnet/ping", address="fc94::2", hostname="", timeout_s=1.5)
    assert response.success, response.message
    assert response.rtt_ms == pytest.approx(0.42)
    assert response.path == Peer.PATH_DIRECT
    assert ("ping", "fc94::2", 1, 1.0, 1.5) in controller.calls


def test_ping_by_hostname_default_timeout(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    harness = harness_factory(socket)
    response = harness.call(Ping, "husarnet/ping", address="", hostname="robot3", timeout_s=0.0)
    assert response.success, response.message
    assert response.path == Peer.PATH_TUNNELLED
    assert ("ping", "fc94::3", 1, 1.0, 2.0) in controller.calls


def test_ping_without_reply_and_unknown_peer(
    fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    _, socket = fake
    harness = harness_factory(socket)
    silent = harness.call(Ping, "husarnet/ping", address="fc94::4", hostname="", timeout_s=0.5)
    assert not silent.success
    assert silent.rtt_ms < 0
    assert silent.path == Peer.PATH_NONE
    assert "no reply from fc94::4" in silent.message
    unknown = harness.call(Ping, "husarnet/ping", address="fc94::55", hostname="", timeout_s=0.5)
    assert not unknown.success
    assert "not a known peer" in unknown.message
    bad = harness.call(Ping, "husarnet/ping", address="fc94::2", hostname="", timeout_s=999.0)
    assert not bad.success
    assert "timeout_s must be between" in bad.message


# --- the fleet file ------------------------------------------------------------------------------------


def test_fleet_file_applied_at_start(
    tmp_path: Path, fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    controller.host_entries["printer"] = "fc94::99"
    controller.allowed.append("fc94::50")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET, encoding="utf-8")
    harness_factory(socket, fleet_file=str(fleet))  # robot "" = the daemon's hostname, robot1
    wait_for(lambda: {"fc94::2", "fc94::3"} <= set(controller.allowed), "the fleet peers on the whitelist")
    wait_for(lambda: "robot3" in controller.host_entries, "the fleet names in the hosts block")
    assert controller.host_entries == {"printer": "fc94::99", "robot2": "fc94::2", "robot3": "fc94::3"}
    assert "fc94::1" not in controller.allowed  # never itself
    assert "fc94::4" not in controller.allowed  # not linked to robot1
    assert "fc94::50" in controller.allowed  # the user's entries stay


def test_fleet_file_applied_again_after_a_daemon_restart(
    tmp_path: Path, harness_factory: Callable[..., Harness]
) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET, encoding="utf-8")
    first = FakeController()
    with serve_fake(first) as (_, socket):
        harness = harness_factory(socket, fleet_file=str(fleet), robot="robot2")
        wait_for(lambda: first.allowed == ["fc94::1"], "robot2's fleet peer on the whitelist")
        alive = harness.call(ListPeers, "husarnet/list_peers")
        assert alive.whitelist_enabled
        socket_path = socket
    # The daemon is gone: services answer with a clear failure.
    down = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert not down.success
    assert "daemon not running" in down.message
    # A new daemon on the same socket, with an empty whitelist: the fleet is applied again.
    second = FakeController(hostname="robot2", address="fc94::2")
    from husarnet_ros.daemon.control import ControlServer

    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    server = ControlServer(second, socket_path, group=None)
    server.start()
    try:
        wait_for(lambda: second.allowed == ["fc94::1"], "the fleet applied to the restarted daemon")
        assert second.host_entries == {"robot1": "fc94::1"}
    finally:
        server.stop()


def test_bad_fleet_file_keeps_the_services_up(
    tmp_path: Path, fake: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("robots:\n  robot1: {address: 2001:db8::1}\n", encoding="utf-8")
    harness = harness_factory(socket, fleet_file=str(fleet))
    response = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert response.success, response.message
    assert controller.allowed == ["fc94::9"]
    # Fixing the file is picked up without a restart.
    fleet.write_text(FLEET, encoding="utf-8")
    wait_for(lambda: "fc94::2" in controller.allowed, "the corrected fleet file applied")


# --- no daemon -----------------------------------------------------------------------------------------


def test_daemon_down_gives_clear_failures(tmp_path: Path, harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(str(tmp_path / "no-daemon.sock"))
    for srv_type, name, fields in (
        (AddPeer, "husarnet/add_peer", {"address": "fc94::9"}),
        (RemovePeer, "husarnet/remove_peer", {"address": "fc94::9"}),
        (Ping, "husarnet/ping", {"address": "fc94::9", "timeout_s": 0.5}),
    ):
        response = harness.call(srv_type, name, **fields)
        assert not response.success
        assert "daemon not running" in response.message
        assert "no-daemon.sock" in response.message
    listed = harness.call(ListPeers, "husarnet/list_peers")
    assert list(listed.peers) == []
