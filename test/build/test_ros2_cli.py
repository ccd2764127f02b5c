"""The package installed into the venv by scripts/setup.sh, seen through the ros2 command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.build

VENV = Path(sys.prefix)
INTERFACES = {
    "husarnet_ros/msg/Peer",
    "husarnet_ros/msg/PeerArray",
    "husarnet_ros/msg/Status",
    "husarnet_ros/srv/AddPeer",
    "husarnet_ros/srv/RemovePeer",
    "husarnet_ros/srv/ListPeers",
    "husarnet_ros/srv/Ping",
}


def _ros2(*args: str, tmp_path: Path) -> str:
    env = {**os.environ, "AMENT_PREFIX_PATH": str(VENV), "ROS_LOG_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(VENV / "bin" / "ros2"), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"ros2 {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def test_ros2_interface_show_peer_array(tmp_path: Path) -> None:
    shown = _ros2("interface", "show", "husarnet_ros/msg/PeerArray", tmp_path=tmp_path)
    assert "std_msgs/Header header" in shown
    assert "Peer[] peers" in shown
    assert "uint8 PATH_TUNNELLED=2" in shown
    assert "builtin_interfaces/Time last_seen" in shown


def test_ros2_interface_package_lists_every_interface(tmp_path: Path) -> None:
    listed = set(_ros2("interface", "package", "husarnet_ros", tmp_path=tmp_path).split())
    assert listed == INTERFACES


def test_ros2_pkg_prefix_is_the_venv(tmp_path: Path) -> None:
    assert _ros2("pkg", "prefix", "husarnet_ros", tmp_path=tmp_path).strip() == str(VENV)
