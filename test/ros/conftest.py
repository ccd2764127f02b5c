"""Fixtures shared by the rclpy tests of test/ros/ (kept generic: each test module brings its own helpers).

- ``ros_domain_id`` (module): a ROS_DOMAIN_ID of its own per test module and process (100..199), so tests
  running in parallel (other modules, other checkouts) do not see each other's topics.
- ``ros_env`` (module): sets ROS_DOMAIN_ID and ROS_LOG_DIR (a temp dir) in os.environ for the module's
  duration and returns an environment for subprocesses (also with PYTHONPATH = the working tree).
- ``rclpy_context`` (function): an initialised rclpy Context of its own on that domain, shut down after.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ros_domain_id(request: pytest.FixtureRequest) -> int:
    module_hash = zlib.crc32(request.module.__name__.encode())
    return 100 + (os.getpid() + module_hash) % 100


@pytest.fixture(scope="module")
def ros_env(ros_domain_id: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    log_dir = tmp_path_factory.mktemp("ros-log")
    changes = {"ROS_DOMAIN_ID": str(ros_domain_id), "ROS_LOG_DIR": str(log_dir)}
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def rclpy_context(ros_env: dict[str, str], ros_domain_id: int) -> Iterator[Any]:
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        yield context
    finally:
        context.try_shutdown()
