"""Fixtures shared by the rclpy tests of test/ros/.

- ``ros_domain_id`` (module): a ROS_DOMAIN_ID of its own per test module and process (1..100, see
  husarnet_ros.testing.ros_launch.private_domain_id), so tests running in parallel (other modules, other
  checkouts) do not see each other's topics.
- ``ros_env`` (module): sets ROS_DOMAIN_ID and ROS_LOG_DIR (a temp dir) in os.environ for the module's
  duration and returns an environment for subprocesses (also with PYTHONPATH = the working tree).
- ``rclpy_context`` (function): an initialised rclpy Context of its own on that domain, shut down after.
- ``ros_context`` (module): one such Context for all tests of a module, with DDS discovery kept to this host
  (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), for modules that create their nodes in-process.
- ``daemon`` (function): robot1's daemon, the real control API on a temporary socket in front of the real
  daemon controller on the in-memory network (husarnet_ros.testing.memnet_daemon.ServedFleet): robot2 is
  whitelisted and reached directly; UNHEARD is whitelisted, but no robot has that address (path none);
  robot3 is on the network and has robot1 on its whitelist, but is not on robot1's (so robot1 lists it
  only once it is whitelisted, and then reaches it).
- ``fleet_file`` (function): a fleet file of four robots, robot1 linked to robot2 and robot3, with the
  addresses those robots have on the in-memory network (``member_address``).
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from husarnet_ros.testing.memnet_daemon import ServedFleet, member_address, served_fleet
from husarnet_ros.testing.ros_launch import private_domain_id

if TYPE_CHECKING:  # rclpy is imported inside the fixtures: the ros marker skips when it is missing
    from rclpy.context import Context

REPO = Path(__file__).resolve().parents[2]
UNHEARD = "fc94::4"
ROBOTS = ("robot1", "robot2", "robot3", "robot4")
FLEET = "robots:\n{robots}links:\n  - [robot1, robot2]\n  - [robot1, robot3]\n"


@contextlib.contextmanager
def _environ(changes: dict[str, str]) -> Iterator[None]:
    """Set ``changes`` in os.environ for the block; afterwards each name has its earlier value (or none)."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _initialised_context(domain_id: int) -> Iterator[Context]:
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture(scope="module")
def ros_domain_id(request: pytest.FixtureRequest) -> int:
    module_hash = zlib.crc32(request.module.__name__.encode())
    return private_domain_id(module_hash)


@pytest.fixture(scope="module")
def ros_env(ros_domain_id: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    log_dir = tmp_path_factory.mktemp("ros-log")
    with _environ({"ROS_DOMAIN_ID": str(ros_domain_id), "ROS_LOG_DIR": str(log_dir)}):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        yield env


@pytest.fixture
def rclpy_context(ros_env: dict[str, str], ros_domain_id: int) -> Iterator[Context]:
    with _initialised_context(ros_domain_id) as context:
        yield context


@pytest.fixture(scope="module")
def ros_context(ros_env: dict[str, str], ros_domain_id: int) -> Iterator[Context]:
    with (
        _environ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}),
        _initialised_context(ros_domain_id) as context,
    ):
        yield context


@pytest.fixture
def daemon() -> Iterator[ServedFleet]:
    with served_fleet("robot1", ("robot2",)) as served:
        served.controller.whitelist_add(UNHEARD)
        robot3 = served.fleet.add("robot3")
        robot3.whitelist_add(served.address)
        yield served


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    robots = "".join(f"  {name}: {{address: '{member_address(name)}'}}\n" for name in ROBOTS)
    path.write_text(FLEET.format(robots=robots), encoding="utf-8")
    return path
