"""Suite-wide rules for the test markers (registered in pyproject.toml).

A test marked `integration`, `ros` or `build` is skipped, with the reason, when this machine cannot run it:
not root, no TUN device, no rclpy/launch_ros, no colcon/cmake. scripts/test.sh sets HUSARNET_ROS_STRICT=1
when it runs as root; then a missing requirement fails the test instead, so CI cannot go green by skipping.

It also collects launch_testing files (a module-level `generate_test_description` marked `launch_test` or
`rostest`). pyproject.toml disables launch_testing's own pytest plugins: they import every test module during
collection, outside pytest's error handling, so one module-level skip or import error there silently drops
every test of its directory.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

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


def pytest_addoption(parser: pytest.Parser) -> None:
    # Read by launch_testing's test items (normally added by its disabled plugin).
    parser.addoption(
        "--launch-args", action="append", nargs="*", default=[], help="arguments for launch_testing tests"
    )


def _launch_test_module(path: Path, parent: pytest.Collector, entrypoint: Any) -> pytest.File | None:
    marks = {mark.name: mark for mark in getattr(entrypoint, "pytestmark", [])}
    module: pytest.File
    if "rostest" in marks:
        from launch_testing_ros.pytest.hooks import LaunchROSTestModule

        module = LaunchROSTestModule.from_parent(parent=parent, path=path)
    elif "launch_test" in marks:
        from launch_testing.pytest.hooks import LaunchTestModule

        module = LaunchTestModule.from_parent(parent=parent, path=path)
    else:
        return None
    for mark in marks.values():
        module.add_marker(getattr(pytest.mark, mark.name)(*mark.args, **mark.kwargs))
    return module


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.File | None:
    # Only files that can be launch tests are imported here; pytest imports (and reports) all others itself.
    if "generate_test_description" not in module_path.read_text(encoding="utf-8", errors="replace"):
        return None
    from launch_testing.pytest.hooks import find_launch_test_entrypoint

    entrypoint = find_launch_test_entrypoint(module_path)
    return None if entrypoint is None else _launch_test_module(module_path, parent, entrypoint)
