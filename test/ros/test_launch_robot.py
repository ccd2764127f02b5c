"""launch_testing: robot.launch.py brings up the husarnet nodes against a daemon, as a user sees them.

The launch file of the working tree runs the INSTALLED executables (lib/husarnet_ros/*; refresh them with
scripts/setup.sh). No root: ``start_daemon:=false``, and the daemon is robot1's real controller on the
in-memory network (husarnet_ros.testing.memnet_daemon), behind the real control API server on a temporary
socket. Its whitelist is off, so it lists robot2 (whitelisted) and robot3 (not), both reached directly.
``dds:=none``: the DDS files
name the robot's overlay address, which does not exist here; the DDS path, with a real daemon started by
the launch, is covered by test/integration/test_ros_two_robots.py, and a SIGTERM to such a launch by
test/integration/test_launch_lifetime.py.

Checked: the three nodes come up (no husarnet_dds with dds:=none); a subscriber created after the table was
published still receives /husarnet/peers (TRANSIENT_LOCAL); /husarnet/add_peer with a valid and an invalid
address; the /diagnostics level of a peer goes from OK to ERROR when that robot is switched off, and back
when it is on again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import launch_testing
import launch_testing.actions
import pytest
from launch.actions import IncludeLaunchDescription
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

from husarnet_ros.daemon.node_controller import NodeController
from husarnet_ros.testing.memnet_daemon import MemNetFleet, member_address, serve
from husarnet_ros.testing.ros_launch import private_domain_id

if TYPE_CHECKING:  # imported for real in setUpClass, as the ros marker's requirement check allows
    from rclpy.client import Client
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

ROBOT_LAUNCH = Path(__file__).resolve().parents[2] / "launch" / "robot.launch.py"
WAIT_S = 30.0  # bound of every wait, never asserted on
NODE_NAMES = ("husarnet_peers", "husarnet_whitelist", "husarnet_hosts")
PEER_A, PEER_B = member_address("robot2"), member_address("robot3")
T = TypeVar("T")


def _robot1_and_its_peers(stack: contextlib.ExitStack) -> tuple[MemNetFleet, NodeController]:
    """robot1 (whitelist off) with robot2 (on its whitelist) and robot3 (not), both reached directly."""
    fleet = stack.enter_context(MemNetFleet())
    robot1 = fleet.add("robot1", whitelist_enabled=False)
    fleet.add("robot2")
    fleet.connect("robot1", "robot2")
    fleet.add("robot3").whitelist_add(member_address("robot1"))
    fleet.beacon_now()
    if not fleet.wait(lambda: fleet.path("robot1", "robot3") == "direct", WAIT_S):
        raise AssertionError("robot1 did not reach robot3 on the in-memory network")
    return fleet, robot1


@pytest.mark.ros
@pytest.mark.launch_test
def generate_test_description() -> tuple[LaunchDescription, dict[str, Any]]:
    stack = contextlib.ExitStack()
    fleet, controller = _robot1_and_its_peers(stack)
    socket_path = stack.enter_context(serve(controller))
    # The launched nodes and this test's own rclpy context: a domain of their own, logs in a temp dir.
    saved = {name: os.environ.get(name) for name in ("ROS_DOMAIN_ID", "ROS_LOG_DIR")}
    os.environ["ROS_DOMAIN_ID"] = str(private_domain_id(7))
    os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="hr-launch-test-log-")
    stack.callback(_restore_all, saved)
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROBOT_LAUNCH)),
        launch_arguments={
            "start_daemon": "false",
            "control_socket": socket_path,
            "dds": "none",
            "hostname": "robot1",
        }.items(),
    )
    description = LaunchDescription([robot, launch_testing.actions.ReadyToTest()])
    return description, {"controller": controller, "fleet": fleet, "socket_path": socket_path, "stack": stack}


def _restore_all(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class TestRobotLaunch(unittest.TestCase):
    # Set by setUpClass: one probe node on a context of its own, shared by the tests of the class.
    context: ClassVar[Context]
    node: ClassVar[Node]
    executor: ClassVar[SingleThreadedExecutor]

    @classmethod
    def setUpClass(cls) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        cls.context = Context()
        rclpy.init(context=cls.context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
        cls.node = rclpy.create_node("launch_test_probe", context=cls.context)
        cls.executor = SingleThreadedExecutor(context=cls.context)
        cls.executor.add_node(cls.node)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.executor.shutdown()
        cls.node.destroy_node()
        cls.context.try_shutdown()

    def spin_until(self, value: Callable[[], T | None], what: str) -> T:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            result = value()
            if result:
                return result
            self.executor.spin_once(timeout_sec=0.1)
        self.fail(f"timed out after {WAIT_S:.0f} s waiting for {what}")

    def wait_for_nodes(self) -> None:
        def up() -> bool:
            names = {name for name, _ns in self.node.get_node_names_and_namespaces()}
            return all(name in names for name in NODE_NAMES)

        self.spin_until(up, f"nodes {', '.join(NODE_NAMES)}")

    def call(self, service_type: Any, name: str, request: Any) -> Any:
        # rclpy's create_client does not tie the client's type parameters to srv_type: name them here.
        client: Client[Any, Any] = self.node.create_client(service_type, name)
        try:
            self.spin_until(lambda: client.service_is_ready(), f"service {name}")
            future = client.call_async(request)
            self.spin_until(lambda: future.done(), f"the answer of {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    # --- the tests ------------------------------------------------------------------------------------------

    def test_1_nodes_come_up(self) -> None:
        self.wait_for_nodes()

    def test_2_late_subscriber_receives_the_peer_table(self) -> None:
        from husarnet_ros.msg import PeerArray
        from husarnet_ros.ros.common import LATCHED_QOS

        first: list[Any] = []
        early = self.node.create_subscription(PeerArray, "/husarnet/peers", first.append, LATCHED_QOS)
        self.spin_until(lambda: first, "a first /husarnet/peers message")
        # The table is published; a subscriber created only now still gets it (TRANSIENT_LOCAL, depth 1).
        late: list[Any] = []
        subscription = self.node.create_subscription(PeerArray, "/husarnet/peers", late.append, LATCHED_QOS)
        try:
            message = self.spin_until(lambda: late and late[-1], "/husarnet/peers for the late subscriber")
            by_address = {peer.address: peer for peer in message.peers}
            assert set(by_address) == {PEER_A, PEER_B}
            assert by_address[PEER_A].hostname == "robot2"
            assert by_address[PEER_A].whitelisted
            assert not by_address[PEER_B].whitelisted
        finally:
            self.node.destroy_subscription(subscription)
            self.node.destroy_subscription(early)

    def test_3_add_peer_valid_and_invalid(self, controller: NodeController) -> None:
        from husarnet_ros.srv import AddPeer

        self.wait_for_nodes()
        good = self.call(AddPeer, "/husarnet/add_peer", AddPeer.Request(address="FC94:0::5", hostname=""))
        assert good.success, good.message
        assert "fc94::5" in controller.whitelist().addresses
        for bad_address in ("10.0.0.1", "fd00::1", "not-an-address"):
            with self.subTest(address=bad_address):
                bad = self.call(
                    AddPeer, "/husarnet/add_peer", AddPeer.Request(address=bad_address, hostname="")
                )
                assert not bad.success
                assert bad_address in bad.message  # the message says what was refused
        assert [a for a in controller.whitelist().addresses if a not in (PEER_A, "fc94::5")] == []

    def test_4_diagnostics_level_follows_a_robot_switched_off(self, fleet: MemNetFleet) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

        name = "husarnet: peer robot3"
        levels: list[int] = []

        def on_diagnostics(message: Any) -> None:
            levels.extend(status.level[0] for status in message.status if status.name == name)

        subscription = self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        try:
            self.spin_until(lambda: levels and levels[-1] == DiagnosticStatus.OK[0], f"{name} OK")
            fleet.set_online("robot3", False)  # robot1 finds its path dead within seconds
            self.spin_until(lambda: levels[-1] == DiagnosticStatus.ERROR[0], f"{name} ERROR once it is off")
            fleet.set_online("robot3", True)
            fleet.beacon_now()
            self.spin_until(lambda: levels[-1] == DiagnosticStatus.OK[0], f"{name} OK again once it is on")
        finally:
            self.node.destroy_subscription(subscription)


@launch_testing.post_shutdown_test()
class TestAfterShutdown(unittest.TestCase):
    def test_nodes_exited_cleanly(self, proc_info: Any, stack: contextlib.ExitStack) -> None:
        try:
            # SIGINT from the launch: each node exits 0 (its main() handles the shutdown).
            launch_testing.asserts.assertExitCodes(proc_info)
        finally:
            stack.close()
