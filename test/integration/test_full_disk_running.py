"""A running daemon whose state directory fills up or can no longer be written: a whitelist change that cannot
be saved is refused with one line naming the file, and changes nothing, neither now nor after a restart.
(A read-only remount under a running daemon is refused by the kernel, its lock file being open for writing;
the daemon, running as its own account, meets the same refusal when the directory's mode closes it.)"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.testing.lab_daemon import Daemon
from husarnet_ros.testing.netlab import Lab, run_command

pytestmark = pytest.mark.integration

PEER = "fc94::1234"


@pytest.fixture
def daemon_on_tmpfs(lab: Lab, daemon_factory: Any, setup_accounts: Any) -> Iterator[Daemon]:
    """A started daemon whose state directory is a 64 KiB tmpfs of its own (unmounted afterwards). It runs
    as its own account (setup_accounts), as installed: a closed directory mode stops it as it stops users."""
    (host,) = lab.lan(1, ["robot-a"])
    daemon: Daemon = daemon_factory(host, "robot-a", start=False)
    run_command(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(daemon.state_dir)])
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        if run_command(["umount", str(daemon.state_dir)], check=False).returncode != 0:
            run_command(["umount", "--lazy", str(daemon.state_dir)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(10_000):  # bounded: a 64 KiB tmpfs is full after 16 pages
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return filler
                raise
    finally:
        os.close(fd)
    raise AssertionError(f"{directory} did not fill up")


@pytest.mark.parametrize("fault", ["full", "not writable"])
def test_a_whitelist_change_that_cannot_be_saved_is_refused_and_changes_nothing(
    daemon_on_tmpfs: Daemon, fault: str
) -> None:
    daemon = daemon_on_tmpfs
    before = daemon.json("whitelist", "ls")
    if fault == "full":
        filler = _fill(daemon.state_dir)
    else:
        daemon.state_dir.chmod(0o500)
    result = daemon.cli("whitelist", "add", PEER, check=False)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "whitelist.json" in message
    assert "nothing was changed" in message
    assert daemon.json("whitelist", "ls") == before  # not applied in memory either
    # Once the disk is usable again, the same change works; and a restart shows exactly what was saved.
    if fault == "full":
        filler.unlink()
    else:
        daemon.state_dir.chmod(0o700)
    daemon.restart()
    assert daemon.json("whitelist", "ls") == before
    daemon.whitelist_add(PEER)
    daemon.restart()
    assert PEER in daemon.json("whitelist", "ls")["addresses"]
