"""The hosts sync node against the real control API and the real daemon controller on the in-memory network
(robot1 served; the robots it discovers are members of the same network)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.daemon.node_controller import NodeController
from husarnet_ros.testing.memnet_daemon import ServedFleet, member_address, served_fleet
from husarnet_ros.testing.netlab import wait_until
from husarnet_ros.testing.requirements import ros_unavailable

pytestmark = pytest.mark.ros

# Without ROS this module still imports, and the `ros` marker skips its tests with the reason (fails them
# under HUSARNET_ROS_STRICT=1): test/conftest.py, husarnet_ros.testing.requirements.
if ros_unavailable() is None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from husarnet_ros.ros.hosts_node import HostsNode

CONDITION_TIMEOUT_S = 15.0
# Long enough that the timer never fires during a test that drives sync() itself.
MANUAL = 3600.0
# The link that test/ros/conftest.py's fleet_file gives robot1 to robot3.
LINK_TO_ROBOT3 = "  - [robot1, robot3]\n"
ROBOT2, ROBOT3, ROBOT4 = (member_address(name) for name in ("robot2", "robot3", "robot4"))
CAM7 = member_address("Cam7")


@pytest.fixture
def lonely() -> Iterator[ServedFleet]:
    """robot1's daemon, alone on its network, no peers yet (the tests add the ones they need)."""
    with served_fleet("robot1", ()) as served:
        yield served


def entries(controller: NodeController) -> dict[str, str]:
    return {entry.hostname: entry.address for entry in controller.hosts()}


def discover_cam7(daemon: ServedFleet, *, whitelisted: bool = True) -> None:
    """A camera on the network that announces itself as "Cam7" and has robot1 on its whitelist; robot1
    reaches it once it whitelists it (``whitelisted``)."""
    cam = daemon.fleet.add("Cam7")
    cam.whitelist_add(daemon.address)
    if whitelisted:
        daemon.controller.whitelist_add(CAM7)
        daemon.fleet.beacon_now()
        assert daemon.fleet.wait(lambda: daemon.fleet.path("robot1", "Cam7") == "direct")


@pytest.fixture
def make_node(ros_context: Any) -> Iterator[Callable[..., HostsNode]]:
    nodes: list[HostsNode] = []

    def make(socket: str, **params: Any) -> HostsNode:
        params.setdefault("sync_period_s", MANUAL)
        parameters = [Parameter("control_socket", value=socket), Parameter("retry_period_s", value=0.1)]
        parameters += [Parameter(name, value=value) for name, value in params.items()]
        node = HostsNode(context=ros_context, parameter_overrides=parameters)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()
        node.destroy_node()


def _drop_link_to_robot3(fleet_file: Path) -> None:
    text = fleet_file.read_text(encoding="utf-8")
    assert LINK_TO_ROBOT3 in text
    fleet_file.write_text(text.replace(LINK_TO_ROBOT3, ""), encoding="utf-8")


def test_fleet_names_written_at_start_foreign_entries_kept(
    lonely: ServedFleet, fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller = lonely.controller
    controller.hosts_add("printer", "fc94::99")
    make_node(lonely.socket_path, fleet_file=str(fleet_file))
    assert entries(controller) == {"printer": "fc94::99", "robot2": ROBOT2, "robot3": ROBOT3}
    written = lonely.fleet.member("robot1").hosts_file.entries
    assert [e.hostname for e in written] == ["printer", "robot2", "robot3"]  # the hosts file itself


def test_peer_leaving_the_fleet_view_loses_its_name(
    lonely: ServedFleet, fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller = lonely.controller
    controller.hosts_add("printer", "fc94::99")
    node = make_node(lonely.socket_path, fleet_file=str(fleet_file))
    assert "robot3" in entries(controller)
    _drop_link_to_robot3(fleet_file)
    node.sync()
    assert entries(controller) == {"printer": "fc94::99", "robot2": ROBOT2}


def test_leftover_fleet_name_from_an_earlier_run_is_cleaned(
    lonely: ServedFleet, fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller = lonely.controller
    controller.hosts_add("robot4", ROBOT4)
    controller.hosts_add("robot5", "fc94::5")
    make_node(lonely.socket_path, fleet_file=str(fleet_file))
    assert "robot4" not in entries(controller)  # a fleet robot this one does not talk to
    assert entries(controller)["robot5"] == "fc94::5"  # not a fleet robot: not ours


def test_discovered_names_follow_the_whitelist(
    lonely: ServedFleet, make_node: Callable[..., HostsNode]
) -> None:
    controller = lonely.controller
    controller.hosts_add("printer", "fc94::99")
    discover_cam7(lonely)
    cam8 = lonely.fleet.add("cam8")  # heard by robot1, but not on its whitelist
    cam8.whitelist_add(lonely.address)
    node = make_node(lonely.socket_path)
    assert entries(controller) == {"cam7": CAM7, "printer": "fc94::99"}  # its announced name, lower-cased
    controller.whitelist_remove(CAM7)
    node.sync()
    assert entries(controller) == {"printer": "fc94::99"}


def test_include_discovered_off(lonely: ServedFleet, make_node: Callable[..., HostsNode]) -> None:
    discover_cam7(lonely)
    make_node(lonely.socket_path, include_discovered=False)
    assert entries(lonely.controller) == {}


def test_a_name_repointed_by_the_user_is_left_alone(
    lonely: ServedFleet, fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller = lonely.controller
    node = make_node(lonely.socket_path, fleet_file=str(fleet_file))
    controller.hosts_add("robot3", "fc94::33")  # the user took the name over
    _drop_link_to_robot3(fleet_file)
    node.sync()
    assert entries(controller)["robot3"] == "fc94::33"


def test_invalid_fleet_file_keeps_the_last_names(
    lonely: ServedFleet, fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    node = make_node(lonely.socket_path, fleet_file=str(fleet_file))
    fleet_file.write_text("robots: [oops\n", encoding="utf-8")
    node.sync()
    assert entries(lonely.controller) == {"robot2": ROBOT2, "robot3": ROBOT3}


def test_robot_not_in_fleet_writes_only_discovered_names(
    lonely: ServedFleet, fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    discover_cam7(lonely)
    make_node(lonely.socket_path, fleet_file=str(fleet_file), robot="ghost")
    assert entries(lonely.controller) == {"cam7": CAM7}


def test_daemon_down_is_no_crash(tmp_path: Path, make_node: Callable[..., HostsNode]) -> None:
    node = make_node(str(tmp_path / "none.sock"))
    node.sync()
    assert node.ledger.owned == {}


def test_periodic_sync_picks_up_a_newly_whitelisted_peer(
    lonely: ServedFleet, ros_context: Any, make_node: Callable[..., HostsNode]
) -> None:
    controller = lonely.controller
    discover_cam7(lonely, whitelisted=False)
    node = make_node(lonely.socket_path, sync_period_s=0.2)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        controller.whitelist_add(CAM7)  # then robot1 reaches it, and learns its name
        wait_until(
            lambda: entries(controller).get("cam7") == CAM7,
            CONDITION_TIMEOUT_S,
            what="cam7 written by the timer",
        )
        controller.whitelist_remove(CAM7)
        wait_until(
            lambda: "cam7" not in entries(controller),
            CONDITION_TIMEOUT_S,
            what="cam7 removed by the timer",
        )
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=10.0)
