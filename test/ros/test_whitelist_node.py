"""The whitelist manager with real rclpy service clients against the real control API of a fake daemon."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.testing.fake_controller import FakeController, serve_fake
from husarnet_ros.testing.netlab import wait_until
from husarnet_ros.testing.requirements import ros_unavailable

pytestmark = pytest.mark.ros

# Without ROS this module still imports, and the `ros` marker skips its tests with the reason (fails them
# under HUSARNET_ROS_STRICT=1): test/conftest.py, husarnet_ros.testing.requirements.
if ros_unavailable() is None:
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from husarnet_ros.msg import Peer
    from husarnet_ros.ros.whitelist_node import WhitelistNode
    from husarnet_ros.srv import AddPeer, ListPeers, Ping, RemovePeer

# Bounds of every wait; a test that hits one fails with a message, it never asserts on time.
CALL_TIMEOUT_S = 20.0
CONDITION_TIMEOUT_S = 15.0


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


@pytest.fixture
def controller(fake_daemon: tuple[FakeController, str]) -> FakeController:
    return fake_daemon[0]


@pytest.fixture
def harness(fake_daemon: tuple[FakeController, str], harness_factory: Callable[..., Harness]) -> Harness:
    """A whitelist node with the default parameters, on the fake daemon."""
    return harness_factory(fake_daemon[1])


# --- add_peer ------------------------------------------------------------------------------------------


def test_add_valid_address(controller: FakeController, harness: Harness) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address="FC94:0::9", hostname="")
    assert response.success, response.message
    assert "fc94::9" in controller.allowed
    assert "whitelisted fc94::9" in response.message
    again = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert again.success
    assert "already on the whitelist" in again.message


def test_add_with_hostname_writes_the_hosts_block(controller: FakeController, harness: Harness) -> None:
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
    controller: FakeController, harness: Harness, address: str, hostname: str, expected: str
) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address=address, hostname=hostname)
    assert not response.success
    assert expected in response.message
    assert not any(call[0] == "whitelist_add" for call in controller.calls)
    following = harness.call(AddPeer, "husarnet/add_peer", address="fc94::a", hostname="")
    assert following.success, following.message


def test_hostname_only_is_resolved_by_the_daemon(controller: FakeController, harness: Harness) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="robot3")
    assert response.success, response.message
    assert "fc94::3" in controller.allowed
    assert "robot3" not in controller.host_entries  # the daemon already knows that name


def test_unknown_hostname_only(controller: FakeController, harness: Harness) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="nobody")
    assert not response.success
    assert "cannot resolve hostname 'nobody'" in response.message
    assert controller.allowed == []


def test_hostname_only_is_resolved_by_the_fleet_file(
    fleet_file: Path, fake_daemon: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake_daemon
    harness = harness_factory(socket, fleet_file=str(fleet_file))
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="robot4")
    assert response.success, response.message
    assert "fc94::4" in controller.allowed
    assert controller.host_entries["robot4"] == "fc94::4"


# --- remove_peer ---------------------------------------------------------------------------------------


def test_remove_by_address_also_forgets_its_names(
    fake_daemon: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake_daemon
    controller.host_entries["printer"] = "fc94::99"
    harness = harness_factory(socket)
    assert harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="cam").success
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="fc94::9", hostname="")
    assert response.success, response.message
    assert "fc94::9" not in controller.allowed
    assert "cam" not in controller.host_entries
    assert controller.host_entries == {"printer": "fc94::99"}


def test_remove_by_hostname(controller: FakeController, harness: Harness) -> None:
    assert harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="cam").success
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="", hostname="cam")
    assert response.success, response.message
    assert controller.allowed == []
    assert "cam" not in controller.host_entries


def test_remove_absent_peer_succeeds_and_says_so(harness: Harness) -> None:
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="fc94::77", hostname="")
    assert response.success
    assert "was not on the whitelist" in response.message
    bad = harness.call(RemovePeer, "husarnet/remove_peer", address="10.0.0.1", hostname="")
    assert not bad.success
    assert "not an IPv6 address" in bad.message


# --- list_peers and ping -------------------------------------------------------------------------------


def test_list_peers(fake_daemon: tuple[FakeController, str], harness_factory: Callable[..., Harness]) -> None:
    controller, socket = fake_daemon
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


@pytest.mark.parametrize(
    ("address", "hostname", "timeout_s", "rtt_ms", "path", "pinged"),
    [
        pytest.param("fc94::2", "", 1.5, 0.42, "PATH_DIRECT", ("fc94::2", 1.5), id="direct-peer-by-address"),
        # timeout_s 0: the daemon is asked with the node's default of 2 s
        pytest.param(
            "", "robot3", 0.0, 21.5, "PATH_TUNNELLED", ("fc94::3", 2.0), id="by-hostname-default-timeout"
        ),
    ],
)
def test_ping_a_peer(
    controller: FakeController,
    harness: Harness,
    address: str,
    hostname: str,
    timeout_s: float,
    rtt_ms: float,
    path: str,
    pinged: tuple[str, float],
) -> None:
    response = harness.call(Ping, "husarnet/ping", address=address, hostname=hostname, timeout_s=timeout_s)
    assert response.success, response.message
    assert response.rtt_ms == pytest.approx(rtt_ms)
    assert response.path == getattr(Peer, path)  # a name: Peer exists only where ROS is installed
    pinged_address, daemon_timeout_s = pinged
    assert ("ping", pinged_address, 1, 1.0, daemon_timeout_s) in controller.calls


def test_ping_without_reply_and_unknown_peer(harness: Harness) -> None:
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
    fleet_file: Path, fake_daemon: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake_daemon
    controller.host_entries["printer"] = "fc94::99"
    controller.allowed.append("fc94::50")
    harness_factory(socket, fleet_file=str(fleet_file))  # robot "" = the daemon's hostname, robot1
    wait_until(
        lambda: {"fc94::2", "fc94::3"} <= set(controller.allowed),
        CONDITION_TIMEOUT_S,
        what="the fleet peers on the whitelist",
    )
    wait_until(
        lambda: "robot3" in controller.host_entries,
        CONDITION_TIMEOUT_S,
        what="the fleet names in the hosts block",
    )
    assert controller.host_entries == {"printer": "fc94::99", "robot2": "fc94::2", "robot3": "fc94::3"}
    assert "fc94::1" not in controller.allowed  # never itself
    assert "fc94::4" not in controller.allowed  # not linked to robot1
    assert "fc94::50" in controller.allowed  # the user's entries stay


def test_fleet_file_applied_again_after_a_daemon_restart(
    fleet_file: Path, harness_factory: Callable[..., Harness]
) -> None:
    first = FakeController()
    with serve_fake(first) as (_, socket):
        harness = harness_factory(socket, fleet_file=str(fleet_file), robot="robot2")
        wait_until(
            lambda: first.allowed == ["fc94::1"],
            CONDITION_TIMEOUT_S,
            what="robot2's fleet peer on the whitelist",
        )
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
        wait_until(
            lambda: second.allowed == ["fc94::1"],
            CONDITION_TIMEOUT_S,
            what="the fleet applied to the restarted daemon",
        )
        assert second.host_entries == {"robot1": "fc94::1"}
    finally:
        server.stop()


def test_bad_fleet_file_keeps_the_services_up(
    fleet_file: Path, fake_daemon: tuple[FakeController, str], harness_factory: Callable[..., Harness]
) -> None:
    controller, socket = fake_daemon
    good = fleet_file.read_text(encoding="utf-8")
    fleet_file.write_text("robots:\n  robot1: {address: 2001:db8::1}\n", encoding="utf-8")
    harness = harness_factory(socket, fleet_file=str(fleet_file))
    response = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert response.success, response.message
    assert controller.allowed == ["fc94::9"]
    # Fixing the file is picked up without a restart.
    fleet_file.write_text(good, encoding="utf-8")
    wait_until(
        lambda: "fc94::2" in controller.allowed, CONDITION_TIMEOUT_S, what="the corrected fleet file applied"
    )


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
