"""Suite-wide rules for the test markers (registered in pyproject.toml).

A test marked `integration`, `ros` or `build` is skipped, with the reason, when this machine cannot run it:
not root, no TUN device, no rclpy/launch_ros, no colcon/cmake. scripts/test.sh sets HUSARNET_ROS_STRICT=1
when it runs as root; then a missing requirement fails the test instead, so CI cannot go green by skipping.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

STRICT = os.environ.get("HUSARNET_ROS_STRICT") == "1"


def _missing_modules(*names: str) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


@functools.cache
def integration_unavailable() -> str | None:
    """Why integration tests (root, network namespaces, TUN) cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN)"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


@functools.cache
def ros_unavailable() -> str | None:
    """Why ROS tests (rclpy, launch, launch_ros) cannot run here, or None when they can."""
    missing = _missing_modules("rclpy", "launch", "launch_ros")
    return f"needs {', '.join(missing)} (run scripts/setup.sh)" if missing else None


@functools.cache
def build_unavailable() -> str | None:
    """Why package build tests (colcon, cmake, ros2 CLI) cannot run here, or None when they can."""
    missing = _missing_modules("colcon_core", "ros2cli")
    if shutil.which("cmake") is None:
        missing.append("cmake")
    return f"needs {', '.join(missing)} (run scripts/setup.sh)" if missing else None


_REQUIREMENTS = {
    "integration": integration_unavailable,
    "ros": ros_unavailable,
    "build": build_unavailable,
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, unavailable in _REQUIREMENTS.items():
        if item.get_closest_marker(marker) is None:
            continue
        reason = unavailable()
        if reason is None:
            continue
        if STRICT:
            pytest.fail(f"{marker} test cannot run: {reason} (HUSARNET_ROS_STRICT=1)", pytrace=False)
        pytest.skip(f"{marker}: {reason}")
