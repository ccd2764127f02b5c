"""Which account the daemon switches to once set up, and when it stays uid 0 (with a reason in the log)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.core.config import DaemonConfig
from husarnet_ros.daemon.privileges import Account, blocked_directory, find_account
from husarnet_ros.daemon.service import Daemon

# Every Debian system has it; the tests never switch to it, they only look it up.
SYSTEM_ACCOUNT = "nobody"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"


@pytest.fixture
def daemon_log() -> Iterator[_Lines]:
    """What the daemon logs, caught at its own logger: other tests (launch, rclpy) reconfigure logging, and
    a logger that an earlier dictConfig disabled would leave caplog empty."""
    logger = logging.getLogger("husarnet_ros.daemon")
    handler = _Lines()
    saved = (logger.disabled, logger.level)
    logger.disabled = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.disabled, logger.level = saved


def daemon_with(state_dir: Path, user: str) -> Daemon:
    config = DaemonConfig(state_dir=state_dir, control_socket=state_dir.parent / "ctl.sock", user=user)
    return Daemon(config)


def test_find_account() -> None:
    root = find_account("root")
    assert root == Account("root", 0, 0)
    assert find_account("no-such-account-husarnet") is None


def test_blocked_directory_names_the_first_closed_one(open_dir: Path) -> None:
    nobody = find_account(SYSTEM_ACCOUNT)
    assert nobody is not None
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    (closed / "inner").mkdir()
    assert blocked_directory(open_dir, nobody) is None
    assert blocked_directory(closed / "inner", nobody) == closed
    # Its own directory is open to the owner even at 0700; a group directory to the group.
    os.chown(closed, nobody.uid, 0)
    assert blocked_directory(closed / "inner", nobody) is None
    os.chown(closed, 0, nobody.gid)
    closed.chmod(0o710)
    assert blocked_directory(closed / "inner", nobody) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch accounts, so only root looks one up")
def test_daemon_picks_the_configured_account_when_it_can_reach_its_state(open_dir: Path) -> None:
    daemon = daemon_with(open_dir / "state", SYSTEM_ACCOUNT)
    try:
        account = daemon.unprivileged_account()
    finally:
        daemon.close()
    assert account is not None
    assert account.name == SYSTEM_ACCOUNT
    assert account.uid != 0


@pytest.mark.parametrize(
    ("user", "expected_log"),
    [
        ("", "stay uid 0"),
        ("root", "stay uid 0"),
        ("no-such-account-husarnet", "does not exist"),
    ],
)
def test_daemon_stays_uid_0_and_says_why(
    open_dir: Path, user: str, expected_log: str, daemon_log: _Lines
) -> None:
    daemon = daemon_with(open_dir / "state", user)
    try:
        assert daemon.unprivileged_account() is None
    finally:
        daemon.close()
    assert expected_log in daemon_log.text


def test_daemon_stays_uid_0_when_the_account_cannot_reach_the_state_dir(
    open_dir: Path, daemon_log: _Lines
) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    daemon = daemon_with(closed / "state", SYSTEM_ACCOUNT)
    try:
        assert daemon.unprivileged_account() is None
    finally:
        daemon.close()
    assert f"cannot reach the state directory {closed / 'state'}" in daemon_log.text
    assert f"{closed} is closed to it" in daemon_log.text
