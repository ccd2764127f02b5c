"""Suite-wide rules for the test markers (registered in pyproject.toml).

A test marked `integration`, `ros` or `build` is skipped, with the reason, when this machine cannot run it:
not root, no TUN device, no rclpy/launch_ros, no colcon/cmake (the checks live in
husarnet_ros.testing.requirements, where test modules that import ROS find them too). scripts/test.sh sets
HUSARNET_ROS_STRICT=1 when it runs as root; then a missing requirement fails the test instead, and so does
every other skip (a skipif, a skip in a fixture, a module-level skip): CI cannot go green by skipping.

It also collects launch_testing files (a module-level `generate_test_description` marked `launch_test` or
`rostest`). pyproject.toml disables launch_testing's own pytest plugins: they import every test module during
collection, outside pytest's error handling, so one module-level skip or import error there silently drops
every test of its directory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from husarnet_ros.testing.requirements import (
    STRICT_ENV,
    build_unavailable,
    integration_unavailable,
    ros_unavailable,
    strict,
)

STRICT = strict()

# How long an example takes depends on the machine and its load (CI shares two cores among several runs), not
# on the code: no per-example deadline and no "too slow" health check unless a test sets its own bound on
# purpose (test/unit/test_fuzz.py does, against pathological slowdowns).
settings.register_profile("husarnet_ros", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("husarnet_ros")

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
            pytest.fail(f"{marker} test cannot run: {reason} ({STRICT_ENV}=1)", pytrace=False)
        pytest.skip(f"{marker}: {reason}")


def _fail_instead_of_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under HUSARNET_ROS_STRICT=1 a skipped test or module is a failure that gives the skip's reason."""
    if not STRICT or not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, but under {STRICT_ENV}=1 every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    _fail_instead_of_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_instead_of_skip(outcome.get_result())


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


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory under /tmp, for Unix sockets: their paths are limited to 107 bytes, and pytest's
    tmp_path may be longer. Removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="hr-t-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
