"""A full or read-only file system under the state directory, for real: a 64 KiB tmpfs mounted by the test.

Whatever the daemon cannot write (its lock file, identity or whitelist on a first start) ends it with one
line on stderr naming the file and what to do (free space, remount, or another --state-dir), a non-zero
exit status, no traceback, and no partial or temporary file left behind. ``atomic_write`` never leaves its
temporary file behind either. Every mount is unmounted by a finalizer, also when the test fails.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from husarnet_ros.core.identity import Identity
from husarnet_ros.daemon.state import StateDir, StateError
from husarnet_ros.fileio import atomic_write
from husarnet_ros.testing.lab_daemon import husarnet_ros_command, husarnet_ros_env
from husarnet_ros.testing.netlab import Lab, run_command

pytestmark = pytest.mark.integration  # root: mount(2), and a daemon in a namespace of its own

TMPFS_SIZE = "64k"
FILLER = "filler"
DAEMON_TIMEOUT_S = 60.0  # the daemon must fail at once; this only bounds a daemon that wrongly starts
FULL_ADVICE = "its file system is full: free some space there, or give the daemon another --state-dir"
READ_ONLY_ADVICE = (
    "its file system is read-only: remount it read-write, or give the daemon another --state-dir"
)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A short directory under /tmp for the tmpfs and the daemon's other files (socket, hosts file)."""
    path = Path(tempfile.mkdtemp(prefix="hr-disk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpfs(work_dir: Path) -> Iterator[Path]:
    """A fresh 64 KiB tmpfs (mode 0755), unmounted afterwards."""
    mount_point = work_dir / "fs"
    mount_point.mkdir()
    run_command(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(mount_point)])
    try:
        yield mount_point
    finally:
        if run_command(["umount", str(mount_point)], check=False).returncode != 0:
            run_command(["umount", "--lazy", str(mount_point)], check=False)


def fill(mount_point: Path) -> None:
    """Take every free block of the file system (bounded: a 64 KiB tmpfs is full after 16 pages)."""
    fd = os.open(mount_point / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(10_000):
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return
                raise
    finally:
        os.close(fd)
    raise AssertionError(f"{mount_point} did not fill up; is it the {TMPFS_SIZE} tmpfs?")


def remount_read_only(mount_point: Path) -> None:
    run_command(["mount", "-o", "remount,ro", str(mount_point)])


def listing(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# --- atomic_write and StateDir, in this process -------------------------------------------------------


def test_atomic_write_on_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmpfs: Path) -> None:
    precious = tmpfs / "precious"
    precious.write_bytes(b"old content")
    fill(tmpfs)
    before = listing(tmpfs)
    no_space = os.strerror(errno.ENOSPC)
    with pytest.raises(OSError, match=no_space):
        atomic_write(precious, b"new content" * 1000)
    with pytest.raises(OSError, match=no_space):
        atomic_write(tmpfs / "new-file", b"x" * 8192)
    assert listing(tmpfs) == before  # old file intact, no temporary file, no new file


def test_state_dir_on_a_full_disk_names_the_file_and_what_to_do(tmpfs: Path) -> None:
    state = StateDir(tmpfs / "state")
    fill(tmpfs)
    with pytest.raises(StateError) as info:
        state.load_or_create_identity()
    assert str(info.value) == (
        f"cannot write {state.identity_path}: {os.strerror(errno.ENOSPC)}; {FULL_ADVICE}"
    )
    assert listing(state.path) == {}


def test_state_dir_on_a_read_only_file_system(tmpfs: Path) -> None:
    remount_read_only(tmpfs)
    with pytest.raises(StateError) as info:
        StateDir(tmpfs / "state")
    read_only = os.strerror(errno.EROFS)
    assert (
        str(info.value) == f"cannot create state directory {tmpfs / 'state'}: {read_only}; {READ_ONLY_ADVICE}"
    )


# --- the daemon's first start, as the user runs it ---------------------------------------------------


@pytest.fixture
def run_daemon(lab: Lab, work_dir: Path) -> Callable[[Path], subprocess.CompletedProcess[str]]:
    """``run_daemon(state_dir)``: `husarnet-ros daemon` in a namespace of its own, until it exits."""
    (host,) = lab.lan(1)
    hosts_file = work_dir / "hosts"
    hosts_file.write_text("127.0.0.1\tlocalhost\n")

    def run(state_dir: Path) -> subprocess.CompletedProcess[str]:
        argv = [
            *husarnet_ros_command(), "daemon",
            "--state-dir", str(state_dir),
            "--control-socket", str(work_dir / "ctl.sock"),
            "--hosts-file", str(hosts_file),
            "--hostname", "full-disk",
        ]  # fmt: skip
        return host.run(argv, check=False, timeout=DAEMON_TIMEOUT_S, env=husarnet_ros_env())

    return run


def assert_one_clear_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr == f"error: {message}\n", result.stderr


@pytest.mark.parametrize("existing", ["nothing", "lock file", "identity"])
def test_daemon_first_start_on_a_full_disk(
    tmpfs: Path, run_daemon: Callable[[Path], subprocess.CompletedProcess[str]], existing: str
) -> None:
    # What the daemon gets to before the disk stops it: nothing there -> the lock file's pid; a lock file
    # from an earlier start (its block is reused) -> a new identity; an identity too -> the first whitelist.
    state_dir = tmpfs / "state"
    if existing == "nothing":
        failing = state_dir / "lock"
        what = "write lock file"
    else:
        state_dir.mkdir(mode=0o700)
        (state_dir / "lock").write_text("12345\n")
        failing, what = state_dir / "identity", "write"
        if existing == "identity":
            (state_dir / "identity").write_text(Identity.generate().to_file_text())
            (state_dir / "identity").chmod(0o600)
            failing = state_dir / "whitelist.json"
    kept = (
        {name: data for name, data in listing(state_dir).items() if name != "lock"}
        if existing != "nothing"
        else {}
    )
    fill(tmpfs)

    result = run_daemon(state_dir)

    assert_one_clear_line(result, f"cannot {what} {failing}: {os.strerror(errno.ENOSPC)}; {FULL_ADVICE}")
    after = listing(state_dir)
    assert set(after) == {"lock", *kept}, after  # no temporary file, nothing half-written
    assert {name: data for name, data in after.items() if name != "lock"} == kept


@pytest.mark.parametrize("existing", ["nothing", "whole state"])
def test_daemon_start_on_a_read_only_file_system(
    tmpfs: Path, run_daemon: Callable[[Path], subprocess.CompletedProcess[str]], existing: str
) -> None:
    state_dir = tmpfs / "state"
    if existing == "nothing":
        message = f"cannot create state directory {state_dir}: {os.strerror(errno.EROFS)}; {READ_ONLY_ADVICE}"
    else:
        store = StateDir(state_dir)
        store.load_or_create_identity()
        store.load_whitelist()
        store.lock()
        store.unlock()
        message = f"cannot open lock file {store.lock_path}: {os.strerror(errno.EROFS)}; {READ_ONLY_ADVICE}"
    before = listing(state_dir) if state_dir.exists() else None
    remount_read_only(tmpfs)

    result = run_daemon(state_dir)

    assert_one_clear_line(result, message)
    assert (listing(state_dir) if state_dir.exists() else None) == before
