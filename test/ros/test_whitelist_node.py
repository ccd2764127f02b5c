"""The whitelist manager with real rclpy service clients against the real control API and the real daemon
controller on the in-memory network (test/ros/conftest.py's ``daemon``)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.core.base_client import MAX_BASE_SERVERS
from husarnet_ros.daemon.control import ControlServer
from husarnet_ros.daemon.node_controller import NodeController
from husarnet_ros.testing.memnet_daemon import MemNetFleet, ServedFleet, member_address
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
UNHEARD = "fc94::4"  # on the daemon fixture's whitelist, but no robot has that address


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
def controller(daemon: ServedFleet) -> NodeController:
    return daemon.controller


@pytest.fixture
def harness(daemon: ServedFleet, harness_factory: Callable[..., Harness]) -> Harness:
    """A whitelist node with the default parameters, on robot1's daemon."""
    return harness_factory(daemon.socket_path)


def whitelisted(controller: NodeController) -> list[str]:
    return controller.whitelist().addresses


def host_entries(controller: NodeController) -> dict[str, str]:
    return {entry.hostname: entry.address for entry in controller.hosts()}


# --- add_peer ------------------------------------------------------------------------------------------


def test_add_valid_address(controller: NodeController, harness: Harness) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address="FC94:0::9", hostname="")
    assert response.success, response.message
    assert "fc94::9" in whitelisted(controller)
    assert "whitelisted fc94::9" in response.message
    again = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert again.success
    assert "already on the whitelist" in again.message


def test_add_with_hostname_writes_the_hosts_block(daemon: ServedFleet, harness: Harness) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="Lab-Cam")
    assert response.success, response.message
    assert host_entries(daemon.controller)["lab-cam"] == "fc94::9"
    assert "fc94::9" in whitelisted(daemon.controller)
    written = daemon.fleet.member("robot1").hosts_file.entries
    assert [(e.hostname, e.address_text) for e in written] == [("lab-cam", "fc94::9")]


def test_added_robot_is_reached(daemon: ServedFleet, harness: Harness) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address=member_address("robot3"), hostname="")
    assert response.success, response.message
    # robot3 already allowed robot1: now both do, and they find a direct path.
    assert daemon.fleet.wait(lambda: daemon.fleet.path("robot1", "robot3") == "direct", CONDITION_TIMEOUT_S)


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
    controller: NodeController, harness: Harness, address: str, hostname: str, expected: str
) -> None:
    before = whitelisted(controller)
    response = harness.call(AddPeer, "husarnet/add_peer", address=address, hostname=hostname)
    assert not response.success
    assert expected in response.message
    assert whitelisted(controller) == before
    following = harness.call(AddPeer, "husarnet/add_peer", address="fc94::a", hostname="")
    assert following.success, following.message


def test_own_address_is_refused_by_the_daemon(daemon: ServedFleet, harness: Harness) -> None:
    response = harness.call(AddPeer, "husarnet/add_peer", address=daemon.address, hostname="")
    assert not response.success
    assert "own address" in response.message


def test_hostname_only_is_resolved_by_the_daemon(daemon: ServedFleet, harness: Harness) -> None:
    # robot2 is a peer, and its signed beacon told the daemon its name.
    known = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="robot2")
    assert known.success, known.message
    assert f"{member_address('robot2')} (robot2) was already on the whitelist" in known.message
    # A name from the daemon's hosts block is whitelisted, and not written again.
    daemon.controller.hosts_add("robot3", member_address("robot3"))
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="robot3")
    assert response.success, response.message
    assert member_address("robot3") in whitelisted(daemon.controller)
    assert host_entries(daemon.controller) == {"robot3": member_address("robot3")}


def test_unknown_hostname_only(controller: NodeController, harness: Harness) -> None:
    before = whitelisted(controller)
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="nobody")
    assert not response.success
    assert "cannot resolve hostname 'nobody'" in response.message
    assert whitelisted(controller) == before


def test_hostname_only_is_resolved_by_the_fleet_file(
    fleet_file: Path, daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    harness = harness_factory(daemon.socket_path, fleet_file=str(fleet_file))
    response = harness.call(AddPeer, "husarnet/add_peer", address="", hostname="robot4")
    assert response.success, response.message
    assert member_address("robot4") in whitelisted(daemon.controller)
    assert host_entries(daemon.controller)["robot4"] == member_address("robot4")


# --- remove_peer ---------------------------------------------------------------------------------------


def test_remove_by_address_also_forgets_its_names(
    daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    controller = daemon.controller
    controller.hosts_add("printer", "fc94::99")
    harness = harness_factory(daemon.socket_path)
    assert harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="cam").success
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="fc94::9", hostname="")
    assert response.success, response.message
    assert "fc94::9" not in whitelisted(controller)
    assert host_entries(controller) == {"printer": "fc94::99"}


def test_remove_by_hostname(controller: NodeController, harness: Harness) -> None:
    assert harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="cam").success
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="", hostname="cam")
    assert response.success, response.message
    assert "fc94::9" not in whitelisted(controller)
    assert "cam" not in host_entries(controller)


def test_removed_robot_is_cut_off(daemon: ServedFleet, harness: Harness) -> None:
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="", hostname="robot2")
    assert response.success, response.message
    assert daemon.fleet.peer("robot1", "robot2") is None  # forgotten at once


def test_remove_absent_peer_succeeds_and_says_so(harness: Harness) -> None:
    response = harness.call(RemovePeer, "husarnet/remove_peer", address="fc94::77", hostname="")
    assert response.success
    assert "was not on the whitelist" in response.message
    bad = harness.call(RemovePeer, "husarnet/remove_peer", address="10.0.0.1", hostname="")
    assert not bad.success
    assert "not an IPv6 address" in bad.message


# --- list_peers and ping -------------------------------------------------------------------------------


def test_list_peers(harness: Harness) -> None:
    response = harness.call(ListPeers, "husarnet/list_peers")
    assert [p.address for p in response.peers] == sorted([member_address("robot2"), UNHEARD])
    by_address = {p.address: p for p in response.peers}
    robot2 = by_address[member_address("robot2")]
    assert (robot2.hostname, robot2.path, robot2.endpoint) == ("robot2", Peer.PATH_DIRECT, "198.18.0.11:5582")
    assert robot2.whitelisted
    assert by_address[UNHEARD].path == Peer.PATH_NONE
    assert by_address[UNHEARD].whitelisted
    assert by_address[UNHEARD].hostname == ""
    assert response.whitelist_enabled


@pytest.mark.parametrize(
    ("address", "hostname"),
    [
        pytest.param(member_address("robot2"), "", id="by-address"),
        pytest.param("", "robot2", id="by-hostname"),
    ],
)
def test_ping_a_peer(harness: Harness, address: str, hostname: str) -> None:
    response = harness.call(Ping, "husarnet/ping", address=address, hostname=hostname, timeout_s=5.0)
    assert response.success, response.message
    assert response.rtt_ms >= 0
    assert response.path == Peer.PATH_DIRECT
    assert f"reply from {member_address('robot2')} (robot2)" in response.message


def test_ping_without_reply_and_unknown_peer(daemon: ServedFleet, harness: Harness) -> None:
    silent = harness.call(Ping, "husarnet/ping", address=UNHEARD, hostname="", timeout_s=0.5)
    assert not silent.success
    assert silent.rtt_ms < 0
    assert silent.path == Peer.PATH_NONE
    assert f"no reply from {UNHEARD} within 0.5 s" in silent.message
    # timeout_s 0: the daemon is asked with the node's default of 2 s.
    default = harness.call(Ping, "husarnet/ping", address=UNHEARD, hostname="", timeout_s=0.0)
    assert "within 2 s" in default.message
    unknown = harness.call(Ping, "husarnet/ping", address="fc94::55", hostname="", timeout_s=0.5)
    assert not unknown.success
    assert "fc94::55 is not on the whitelist" in unknown.message
    bad = harness.call(Ping, "husarnet/ping", address=member_address("robot2"), hostname="", timeout_s=999.0)
    assert not bad.success
    assert "timeout_s must be between" in bad.message


def test_ping_a_robot_switched_off(daemon: ServedFleet, harness: Harness) -> None:
    daemon.fleet.set_online("robot2", False)
    response = harness.call(Ping, "husarnet/ping", address="", hostname="robot2", timeout_s=0.3)
    assert not response.success
    assert f"no reply from {member_address('robot2')} (robot2) within 0.3 s" in response.message


# --- the fleet file ------------------------------------------------------------------------------------


def test_fleet_file_applied_at_start(
    fleet_file: Path, daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    controller = daemon.controller
    controller.hosts_add("printer", "fc94::99")
    controller.whitelist_add("fc94::50")
    harness_factory(daemon.socket_path, fleet_file=str(fleet_file))  # robot "" = the daemon's hostname
    robot2, robot3 = member_address("robot2"), member_address("robot3")
    wait_until(
        lambda: {robot2, robot3} <= set(whitelisted(controller)),
        CONDITION_TIMEOUT_S,
        what="the fleet peers on the whitelist",
    )
    wait_until(
        lambda: "robot3" in host_entries(controller),
        CONDITION_TIMEOUT_S,
        what="the fleet names in the hosts block",
    )
    assert host_entries(controller) == {"printer": "fc94::99", "robot2": robot2, "robot3": robot3}
    assert daemon.address not in whitelisted(controller)  # never itself
    assert member_address("robot4") not in whitelisted(controller)  # not linked to robot1
    assert "fc94::50" in whitelisted(controller)  # the user's entries stay
    # robot3 had robot1 on its whitelist already: the fleet file is all it took to reach it.
    assert daemon.fleet.wait(lambda: daemon.fleet.path("robot1", "robot3") == "direct", CONDITION_TIMEOUT_S)


def test_fleet_file_applied_again_after_a_daemon_restart(
    fleet_file: Path, harness_factory: Callable[..., Harness]
) -> None:
    robot1 = member_address("robot1")
    directory = tempfile.mkdtemp(prefix="hr-wl-", dir="/tmp")  # a Unix socket path must be short
    socket_path = f"{directory}/control.sock"
    try:
        with MemNetFleet() as first_fleet:
            first = first_fleet.add("robot2")
            with ControlServer(first, socket_path, group=None):
                harness = harness_factory(socket_path, fleet_file=str(fleet_file), robot="robot2")
                wait_until(
                    lambda: whitelisted(first) == [robot1],
                    CONDITION_TIMEOUT_S,
                    what="robot2's fleet peer on the whitelist",
                )
                alive = harness.call(ListPeers, "husarnet/list_peers")
                assert alive.whitelist_enabled
        # The daemon is gone: services answer with a clear failure.
        down = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
        assert not down.success
        assert "daemon not running" in down.message
        # A new daemon on the same socket, with a state directory of its own (an empty whitelist): the fleet
        # is applied again.
        with MemNetFleet() as second_fleet:
            second = second_fleet.add("robot2")
            with ControlServer(second, socket_path, group=None):
                wait_until(
                    lambda: whitelisted(second) == [robot1],
                    CONDITION_TIMEOUT_S,
                    what="the fleet applied to the restarted daemon",
                )
                wait_until(
                    lambda: host_entries(second) == {"robot1": robot1},
                    CONDITION_TIMEOUT_S,
                    what="the fleet names written for the restarted daemon",
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_bad_fleet_file_keeps_the_services_up(
    fleet_file: Path, daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    controller = daemon.controller
    good = fleet_file.read_text(encoding="utf-8")
    fleet_file.write_text("robots:\n  robot1: {address: 2001:db8::1}\n", encoding="utf-8")
    harness = harness_factory(daemon.socket_path, fleet_file=str(fleet_file))
    response = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert response.success, response.message
    assert "fc94::9" in whitelisted(controller)
    # Fixing the file is picked up without a restart.
    fleet_file.write_text(good, encoding="utf-8")
    wait_until(
        lambda: member_address("robot3") in whitelisted(controller),
        CONDITION_TIMEOUT_S,
        what="the corrected fleet file applied",
    )


def base_servers(controller: NodeController) -> list[str]:
    return [server.address for server in controller.base_servers()]


def test_fleet_base_servers_synced_both_ways_never_the_users(
    fleet_file: Path, daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    controller = daemon.controller
    controller.base_add("198.18.0.200")  # the user's, before the node starts
    listed = fleet_file.read_text(encoding="utf-8")
    fleet_file.write_text(
        listed + "base_servers: [Base.Example.com, '198.18.0.100:6000']\n", encoding="utf-8"
    )
    harness_factory(daemon.socket_path, fleet_file=str(fleet_file))
    wanted = ["198.18.0.200:5582", "base.example.com:5582", "198.18.0.100:6000"]
    wait_until(
        lambda: base_servers(controller) == wanted, CONDITION_TIMEOUT_S, what="the fleet's base servers"
    )
    # The file drops one and gives another: the node's go and come, the user's stays.
    fleet_file.write_text(
        listed + "base_servers: ['198.18.0.100:6000', '[fd00:98::100]']\n", encoding="utf-8"
    )
    wanted = ["198.18.0.200:5582", "198.18.0.100:6000", "[fd00:98::100]:5582"]
    wait_until(
        lambda: base_servers(controller) == wanted, CONDITION_TIMEOUT_S, what="the edited list applied"
    )
    # No `base_servers:` at all: none of the fleet's is left, the user's still is.
    fleet_file.write_text(listed, encoding="utf-8")
    wait_until(
        lambda: base_servers(controller) == ["198.18.0.200:5582"],
        CONDITION_TIMEOUT_S,
        what="the fleet's base servers removed",
    )


def test_fleet_base_server_refused_by_the_daemon_is_tried_again_when_the_file_changes(
    fleet_file: Path, daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    controller = daemon.controller
    controller.base_add("198.18.0.200")  # the user's: with it, the fleet's last one is over the limit
    fleets = [f"198.18.1.{i}" for i in range(MAX_BASE_SERVERS)]
    listed = fleet_file.read_text(encoding="utf-8")
    with_bases = listed + f"base_servers: [{', '.join(fleets)}]\n"
    fleet_file.write_text(with_bases, encoding="utf-8")
    harness = harness_factory(daemon.socket_path, fleet_file=str(fleet_file))
    wait_until(
        lambda: len(base_servers(controller)) == MAX_BASE_SERVERS,
        CONDITION_TIMEOUT_S,
        what="the daemon filled up to its limit",
    )
    assert f"{fleets[-1]}:5582" not in base_servers(controller)  # refused (and logged)
    response = harness.call(AddPeer, "husarnet/add_peer", address="fc94::9", hostname="")
    assert response.success, response.message  # a refusal does not take the services down
    # The user makes room and saves the file again: the refused one is added.
    controller.base_remove("198.18.0.200")
    fleet_file.write_text(with_bases + "# saved again\n", encoding="utf-8")
    wait_until(
        lambda: base_servers(controller) == [f"{address}:5582" for address in fleets],
        CONDITION_TIMEOUT_S,
        what="the refused base server added once there was room",
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
