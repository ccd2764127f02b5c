"""Fixtures for integration tests: network-namespace labs and husarnet-ros daemons in them.

Every test here needs root and working ``ip netns``; otherwise it is skipped with the reason, and under
HUSARNET_ROS_STRICT=1 (scripts/test.sh as root) that skip is a failure (test/conftest.py turns every skip
into one). The same holds for what scripts/setup.sh provides (the daemon's account and the control group).
Labs and daemons are torn down by finalizers, also when the test fails; a failed test's
report carries the tail of every daemon log (and its path, kept on disk).
"""

from __future__ import annotations

import functools
import grp
import pwd
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from husarnet_ros.core.config import DEFAULT_DAEMON_USER
from husarnet_ros.daemon.control import CONTROL_GROUP
from husarnet_ros.testing.lab_daemon import Daemon, husarnet_ros_missing
from husarnet_ros.testing.netlab import Host, Lab, cleanup_stale, netns_supported

LabFactory = Callable[[], Lab]
DaemonFactory = Callable[..., Daemon]


@functools.cache
def _netns_skip_reason() -> str | None:
    return netns_supported()


@pytest.fixture(scope="session")
def netns_available() -> None:
    """Skip unless root with working ``ip netns``; also removes leftovers of crashed runs of ours."""
    reason = _netns_skip_reason()
    if reason:
        pytest.skip(reason)
    cleanup_stale()


@pytest.fixture
def lab_factory(netns_available: None) -> Iterator[LabFactory]:
    """Call to get a new :class:`Lab`; every lab made is closed when the test ends."""
    labs: list[Lab] = []

    def make() -> Lab:
        lab = Lab()
        labs.append(lab)
        return lab

    yield make
    errors = []
    for lab in reversed(labs):
        try:
            lab.close()
        except Exception as exc:  # close every lab, then report them all
            errors.append(str(exc))
    if errors:
        pytest.fail("lab cleanup failed: " + "; ".join(errors))


@pytest.fixture
def lab(lab_factory: LabFactory) -> Lab:
    return lab_factory()


@pytest.fixture(scope="session")
def husarnet_ros_available() -> None:
    missing = husarnet_ros_missing()
    if missing:
        pytest.skip(f"husarnet-ros CLI not available: {missing}")


@dataclass(frozen=True)
class SetupAccounts:
    """What scripts/setup.sh creates on the machine: the daemon's own account and the control group."""

    daemon_user: pwd.struct_passwd
    control_group: grp.struct_group


@pytest.fixture(scope="session")
def setup_accounts() -> SetupAccounts:
    """The daemon account and control group; skipped with the reason (a failure when STRICT) if missing."""
    try:
        user = pwd.getpwnam(DEFAULT_DAEMON_USER)
        group = grp.getgrnam(CONTROL_GROUP)
    except KeyError as exc:
        pytest.skip(
            f"needs the account {DEFAULT_DAEMON_USER!r} and the group {CONTROL_GROUP!r} "
            f"({exc.args[0]}): scripts/setup.sh creates them"
        )
    return SetupAccounts(user, group)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    """On failure, attach each daemon's log tail (and log path) to the test report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        item.stash[_FAILED_KEY] = True
        for daemon in item.stash.get(_DAEMONS_KEY, []):
            report.sections.append(
                (f"daemon {daemon.hostname} log ({daemon.log_path}) [{call.when}]", daemon.log_tail(200))
            )


_DAEMONS_KEY = pytest.StashKey[list[Daemon]]()
_FAILED_KEY = pytest.StashKey[bool]()


@pytest.fixture
def daemon_factory(request: pytest.FixtureRequest, husarnet_ros_available: None) -> Iterator[DaemonFactory]:
    """``daemon_factory(host, hostname, start=True, **Daemon options)`` -> a running :class:`Daemon`.

    Daemons are stopped at the end of the test; their files are removed unless the test failed.
    """
    daemons: list[Daemon] = []
    request.node.stash[_DAEMONS_KEY] = daemons

    def make(host: Host, hostname: str, *, start: bool = True, **kwargs: Any) -> Daemon:
        daemon = Daemon.create(host, hostname, **kwargs)
        daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in daemons:
        daemon.stop()
    if not request.node.stash.get(_FAILED_KEY, False):
        for daemon in daemons:
            daemon.remove_files()


@pytest.fixture
def fleet(lab: Lab, daemon_factory: DaemonFactory) -> Callable[..., list[Daemon]]:
    """``fleet(n)`` -> n running daemons (robot-a, robot-b, ...) on one LAN, not yet whitelisted."""

    def make(count: int = 3, **kwargs: Any) -> list[Daemon]:
        hostnames = [f"robot-{chr(ord('a') + i)}" for i in range(count)]
        hosts = lab.lan(count, labels=hostnames)
        daemons = [
            daemon_factory(host, name, start=False, **kwargs)
            for host, name in zip(hosts, hostnames, strict=True)
        ]
        for daemon in daemons:
            daemon.start(wait_ready=False)
        for daemon in daemons:
            daemon.wait_ready()
        return daemons

    return make
