"""The husarnet_dds node against the real control API server and the real daemon controller on the in-memory
network (no root needed)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.testing.memnet_daemon import served_fleet
from husarnet_ros.testing.requirements import ros_unavailable
from husarnet_ros.testing.ros_launch import private_domain_id

pytestmark = pytest.mark.ros

# Without ROS this module still imports, and the `ros` marker skips its tests with the reason (fails them
# under HUSARNET_ROS_STRICT=1): test/conftest.py, husarnet_ros.testing.requirements.
if ros_unavailable() is None:
    import rclpy
    from rclpy.parameter import Parameter

FASTDDS_NS = "{http://www.eprosima.com}"


def _initial_peers(path: Path) -> list[str]:
    root = ET.fromstring(path.read_text())
    peers = root.find(f".//{FASTDDS_NS}initialPeersList")
    assert peers is not None
    return [a.text or "" for a in peers.iter(f"{FASTDDS_NS}address")]


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in list(os.environ):
        if name.startswith(("FASTDDS_", "CYCLONEDDS_", "ROS_STATIC", "RMW_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("ROS_DOMAIN_ID", str(private_domain_id(53)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # DDS traffic stays on this host
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros_home"))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def _node(context: Any, **parameters: Any) -> Any:
    from husarnet_ros.ros.dds_node import DdsNode

    namespace = parameters.pop("_ns", "/")
    overrides = [Parameter(name, value=value) for name, value in parameters.items()]
    return DdsNode(context=context, parameter_overrides=overrides, namespace=namespace)


def test_node_writes_the_daemons_peers_and_follows_changes(context: Any, tmp_path: Path) -> None:
    with served_fleet("robot1", ()) as daemon:
        own = daemon.address
        daemon.controller.whitelist_add("fc94::b")
        node = _node(
            context, control_socket=daemon.socket_path, output_dir=str(tmp_path / "dds"), rmw="fastdds"
        )
        try:
            fast = tmp_path / "dds" / "fastdds.xml"
            assert _initial_peers(fast) == [own, "fc94::b"]  # written at start
            assert not (tmp_path / "dds" / "cyclonedds.xml").exists()
            inode = fast.stat().st_ino
            node.poll()
            assert fast.stat().st_ino == inode  # nothing changed, nothing rewritten
            daemon.controller.whitelist_add("fc94::c")
            node.poll()
            assert _initial_peers(fast) == [own, "fc94::b", "fc94::c"]
            node.set_parameters([Parameter("include_discovered", value=False)])
            node.poll()
            assert _initial_peers(fast) == [own]
        finally:
            node.close()
            node.destroy_node()


def test_node_uses_the_fleet_when_the_daemon_is_down(context: Any, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("robots:\n  robot1: {address: 'fc94::1'}\n  robot2: {address: 'fc94::2'}\n")
    node = _node(
        context,
        control_socket=str(tmp_path / "none.sock"),
        fleet_file=str(fleet),
        robot="robot2",
        _ns="/robot2",
    )
    try:
        out = tmp_path / "ros_home" / "husarnet_ros" / "dds" / "robot2"  # default dir, per namespace
        assert _initial_peers(out / "fastdds.xml") == ["fc94::2", "fc94::1"]
        assert "[fc94::1]" in (out / "cyclonedds.xml").read_text()
        # A broken fleet file is logged, and the last good files stay.
        fleet.write_text("robots: [")
        node.poll()
        assert _initial_peers(out / "fastdds.xml") == ["fc94::2", "fc94::1"]
    finally:
        node.close()
        node.destroy_node()


def test_invalid_parameters_are_refused_with_a_reason(context: Any, tmp_path: Path) -> None:
    node = _node(context, control_socket=str(tmp_path / "none.sock"), output_dir=str(tmp_path / "dds"))
    try:
        [result] = node.set_parameters([Parameter("rmw", value="zenoh")])
        assert not result.successful
        assert "rmw must be one of" in result.reason
        [result] = node.set_parameters([Parameter("poll_period_s", value=0.0)])
        assert not result.successful
        [result] = node.set_parameters([Parameter("poll_period_s", value=5.0)])
        assert result.successful
        # Neither daemon nor fleet: nothing to write, and no crash.
        node.poll()
        assert not (tmp_path / "dds").exists()
    finally:
        node.close()
        node.destroy_node()


def test_fleet_file_under_home_is_found(
    context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `fleet_file: ~/fleet.yaml` works for the whitelist and hosts nodes; the DDS node must read it too.
    monkeypatch.setenv("HOME", str(tmp_path))
    robots = "robots:\n  robot1: {address: 'fc94::1'}\n  robot2: {address: 'fc94::2'}\n"
    (tmp_path / "fleet.yaml").write_text(robots)
    node = _node(
        context,
        control_socket=str(tmp_path / "none.sock"),
        fleet_file="~/fleet.yaml",
        robot="robot2",
        output_dir=str(tmp_path / "dds"),
    )
    try:
        assert _initial_peers(tmp_path / "dds" / "fastdds.xml") == ["fc94::2", "fc94::1"]
    finally:
        node.close()
        node.destroy_node()
