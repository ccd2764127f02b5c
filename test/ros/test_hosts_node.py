"""The hosts sync node against the real control API of a fake daemon."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.api import PeerStatus
from husarnet_ros.testing.fake_controller import FakeController, serve_fake
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


@pytest.fixture
def fake() -> Iterator[tuple[FakeController, str]]:
    """A daemon that knows no peers yet (the tests add the ones they need)."""
    with serve_fake(FakeController()) as served:
        yield served


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
    fake: tuple[FakeController, str], fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    controller.host_entries["printer"] = "fc94::99"
    make_node(socket, fleet_file=str(fleet_file))
    assert controller.host_entries == {"printer": "fc94::99", "robot2": "fc94::2", "robot3": "fc94::3"}


def test_peer_leaving_the_fleet_view_loses_its_name(
    fake: tuple[FakeController, str], fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    controller.host_entries["printer"] = "fc94::99"
    node = make_node(socket, fleet_file=str(fleet_file))
    assert "robot3" in controller.host_entries
    _drop_link_to_robot3(fleet_file)
    node.sync()
    assert controller.host_entries == {"printer": "fc94::99", "robot2": "fc94::2"}
    assert ("hosts_remove", "printer") not in controller.calls


def test_leftover_fleet_name_from_an_earlier_run_is_cleaned(
    fake: tuple[FakeController, str], fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    controller.host_entries.update({"robot4": "fc94::4", "robot5": "fc94::5"})
    make_node(socket, fleet_file=str(fleet_file))
    assert "robot4" not in controller.host_entries  # a fleet robot this one does not talk to
    assert controller.host_entries["robot5"] == "fc94::5"  # not a fleet robot: not ours


def test_discovered_names_follow_the_whitelist(
    fake: tuple[FakeController, str], make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    controller.host_entries["printer"] = "fc94::99"
    controller.add_peer(PeerStatus(address="fc94::7", hostname="Cam7"))
    controller.add_peer(PeerStatus(address="fc94::8", hostname="cam8"))
    controller.allowed.append("fc94::7")
    node = make_node(socket)
    assert controller.host_entries == {"cam7": "fc94::7", "printer": "fc94::99"}
    controller.allowed.remove("fc94::7")
    node.sync()
    assert controller.host_entries == {"printer": "fc94::99"}


def test_include_discovered_off(
    fake: tuple[FakeController, str], make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    controller.add_peer(PeerStatus(address="fc94::7", hostname="cam7"))
    controller.allowed.append("fc94::7")
    make_node(socket, include_discovered=False)
    assert controller.host_entries == {}


def test_a_name_repointed_by_the_user_is_left_alone(
    fake: tuple[FakeController, str], fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    node = make_node(socket, fleet_file=str(fleet_file))
    controller.host_entries["robot3"] = "fc94::33"  # the user took the name over
    _drop_link_to_robot3(fleet_file)
    node.sync()
    assert controller.host_entries["robot3"] == "fc94::33"


def test_invalid_fleet_file_keeps_the_last_names(
    fake: tuple[FakeController, str], fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    node = make_node(socket, fleet_file=str(fleet_file))
    fleet_file.write_text("robots: [oops\n", encoding="utf-8")
    node.sync()
    assert controller.host_entries == {"robot2": "fc94::2", "robot3": "fc94::3"}


def test_robot_not_in_fleet_writes_only_discovered_names(
    fake: tuple[FakeController, str], fleet_file: Path, make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    controller.add_peer(PeerStatus(address="fc94::7", hostname="cam7"))
    controller.allowed.append("fc94::7")
    make_node(socket, fleet_file=str(fleet_file), robot="ghost")
    assert controller.host_entries == {"cam7": "fc94::7"}


def test_daemon_down_is_no_crash(tmp_path: Path, make_node: Callable[..., HostsNode]) -> None:
    node = make_node(str(tmp_path / "none.sock"))
    node.sync()
    assert node.ledger.owned == {}


def test_periodic_sync_picks_up_a_newly_whitelisted_peer(
    fake: tuple[FakeController, str], ros_context: Any, make_node: Callable[..., HostsNode]
) -> None:
    controller, socket = fake
    node = make_node(socket, sync_period_s=0.2)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        controller.add_peer(PeerStatus(address="fc94::7", hostname="cam7"))
        controller.allowed.append("fc94::7")
        wait_until(
            lambda: controller.host_entries.get("cam7") == "fc94::7",
            CONDITION_TIMEOUT_S,
            what="cam7 written by the timer",
        )
        controller.allowed.remove("fc94::7")
        wait_until(
            lambda: "cam7" not in controller.host_entries,
            CONDITION_TIMEOUT_S,
            what="cam7 removed by the timer",
        )
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=10.0)
