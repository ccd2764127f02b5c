"""What each kind of test needs from the machine, and the rule for when it is missing.

test/conftest.py applies the rule to the markers `integration`, `ros` and `build`: a test whose requirement
is missing is skipped with the reason, unless HUSARNET_ROS_STRICT=1 (scripts/test.sh sets it when it runs as
root): then it fails, so a run cannot pass by skipping. Test modules that import ROS at module level use
``ros_unavailable()`` to decide whether they can, so that without ROS they still import and the marker rule
decides.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path

STRICT_ENV = "HUSARNET_ROS_STRICT"


def strict() -> bool:
    """True when every test must run: a missing requirement (or any skip) is a failure."""
    return os.environ.get(STRICT_ENV) == "1"


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


@functools.cache
def postgresql_unavailable() -> str | None:
    """Why Dashboard tests cannot start their own PostgreSQL server here, or None when they can."""
    if _missing_modules("psycopg"):
        return "needs the psycopg Python package (a dependency: run scripts/setup.sh)"
    from .postgres import PostgresUnavailableError, find_server_binaries, server_account

    try:
        find_server_binaries()
        server_account()
    except PostgresUnavailableError as exc:
        return str(exc)
    return None


@functools.cache
def browser_unavailable() -> str | None:
    """Why Dashboard UI tests cannot drive Debian's Chromium with playwright here, or None when they can."""
    from .browser import CHROMIUM_PATH

    if _missing_modules("playwright"):
        return "needs the playwright Python package (a dev dependency: run scripts/setup.sh)"
    if not os.access(CHROMIUM_PATH, os.X_OK):
        return f"needs {CHROMIUM_PATH}: install Debian's chromium package (scripts/test.sh does)"
    return None
