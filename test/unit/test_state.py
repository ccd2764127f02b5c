"""StateDir: permissions, identity that is never replaced, whitelist/hosts persistence, the lock, and a
clear error naming the file (and what to do) for every file that cannot be read or written.

Tests of refused permissions run their StateDir calls through ``run_unprivileged`` (a child as nobody when
the suite runs as root), so they run under root too instead of being skipped.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from husarnet_ros.core.errors import HusarnetError, IdentityError
from husarnet_ros.core.hosts import HostEntry
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.whitelist import Whitelist
from husarnet_ros.daemon import state as state_module
from husarnet_ros.daemon.state import StateDir, StateError
from husarnet_ros.testing.unprivileged import run_unprivileged

A1 = bytes.fromhex("fc94" + "11" * 14)
A2 = bytes.fromhex("fc94" + "22" * 14)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# --- directory ------------------------------------------------------------------------------


def test_creates_directory_0700_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        sd = StateDir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert sd.path.is_dir()
    assert _mode(sd.path) == 0o700


def test_existing_directory_is_used_without_chmod(tmp_path: Path) -> None:
    existing = tmp_path / "shared"
    existing.mkdir()
    existing.chmod(0o755)
    StateDir(existing)
    assert _mode(existing) == 0o755


def test_world_writable_directory_refused(tmp_path: Path) -> None:
    existing = tmp_path / "open"
    existing.mkdir()
    existing.chmod(0o777)
    with pytest.raises(StateError, match="writable by every user"):
        StateDir(existing)


def test_path_that_is_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StateError, match="not a directory"):
        StateDir(tmp_path / "f")


def test_uncreatable_directory_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StateError, match="cannot create state directory"):
        StateDir(tmp_path / "f" / "sub")


def test_state_error_is_a_husarnet_error() -> None:
    assert issubclass(StateError, HusarnetError)


# --- identity -------------------------------------------------------------------------------


def test_identity_created_once_and_kept(state: StateDir) -> None:
    first = state.load_or_create_identity()
    assert _mode(state.identity_path) == 0o600
    text = state.identity_path.read_text()
    second = StateDir(state.path).load_or_create_identity()
    assert second.address == first.address
    assert second.secret_key == first.secret_key
    assert state.identity_path.read_text() == text


def test_identity_file_is_husarnet_format(state: StateDir) -> None:
    identity = state.load_or_create_identity()
    assert Identity.from_file_text(state.identity_path.read_text()).address == identity.address


def test_load_identity_none_when_missing(state: StateDir) -> None:
    assert state.load_identity() is None


@pytest.mark.parametrize("content", ["", "garbage\n", "fc94::1 00 00\n", b"\xff\xfe"])
def test_corrupt_identity_is_error_and_file_untouched(state: StateDir, content: str | bytes) -> None:
    raw = content if isinstance(content, bytes) else content.encode()
    state.identity_path.write_bytes(raw)
    with pytest.raises(HusarnetError, match=str(state.identity_path)) as info:
        state.load_or_create_identity()
    assert "left untouched" in str(info.value)
    assert state.identity_path.read_bytes() == raw


def test_corrupt_identity_raises_identity_error(state: StateDir) -> None:
    state.identity_path.write_text("garbage\n")
    with pytest.raises(IdentityError, match="is corrupt"):
        state.load_identity()


def test_loose_identity_permissions_are_tightened(state: StateDir) -> None:
    state.load_or_create_identity()
    state.identity_path.chmod(0o644)
    state.load_or_create_identity()
    assert _mode(state.identity_path) == 0o600


def test_save_identity_replaces(state: StateDir) -> None:
    state.load_or_create_identity()
    other = Identity.generate()
    state.save_identity(other)
    loaded = state.load_identity()
    assert loaded is not None
    assert loaded.address == other.address


def test_unreadable_identity_is_state_error(open_dir: Path) -> None:
    state = StateDir(open_dir / "state")
    state.load_or_create_identity()
    state.path.chmod(0o711)  # enterable, so the refusal comes from the identity file's own mode
    state.identity_path.chmod(0o000)
    with pytest.raises(StateError, match=rf"cannot read identity file {state.identity_path}: "):
        run_unprivileged(state.load_identity)
    assert _mode(state.identity_path) == 0o000  # left as it was


def test_identity_file_too_large_is_refused_unread(state: StateDir) -> None:
    state.identity_path.write_bytes(b"x" * (1 << 20))
    with pytest.raises(StateError, match=rf"identity file {state.identity_path} is larger than \d+ bytes"):
        state.load_identity()


# --- whitelist ------------------------------------------------------------------------------


def test_first_whitelist_uses_default_and_is_saved(state: StateDir) -> None:
    wl = state.load_whitelist(default_enabled=False)
    assert wl == Whitelist(enabled=False)
    assert state.whitelist_path.exists()
    assert _mode(state.whitelist_path) == 0o600
    # Later starts keep the saved choice whatever the config now says.
    assert state.load_whitelist(default_enabled=True).enabled is False


def test_whitelist_round_trip(state: StateDir) -> None:
    wl = Whitelist([A1, A2], enabled=True)
    state.save_whitelist(wl)
    assert StateDir(state.path).load_whitelist(default_enabled=False) == wl
    assert json.loads(state.whitelist_path.read_text())["enabled"] is True


@pytest.mark.parametrize(
    "content",
    ["", "{", '{"addresses": ["10.0.0.1"]}', '{"enabled": "x"}', "[]", b"\xff", "[" * 50_000],
)
def test_corrupt_whitelist_is_error_and_file_untouched(state: StateDir, content: str | bytes) -> None:
    raw = content if isinstance(content, bytes) else content.encode()
    state.whitelist_path.write_bytes(raw)
    with pytest.raises(StateError, match=r"whitelist\.json is damaged") as info:
        state.load_whitelist()
    assert "left untouched" in str(info.value)
    assert state.whitelist_path.read_bytes() == raw


# --- hosts ----------------------------------------------------------------------------------


def test_hosts_empty_when_missing(state: StateDir) -> None:
    assert state.load_hosts() == []
    assert not state.hosts_path.exists()


def test_hosts_round_trip_canonical(state: StateDir) -> None:
    entries = [HostEntry("robot2", A2), HostEntry("Robot1", A1), HostEntry("robot2", A2)]
    state.save_hosts(entries)
    assert _mode(state.hosts_path) == 0o600
    assert StateDir(state.path).load_hosts() == [HostEntry("robot1", A1), HostEntry("robot2", A2)]
    document = json.loads(state.hosts_path.read_text())
    assert document["version"] == 1
    assert document["entries"][0] == {
        "hostname": "robot1",
        "address": "fc94:1111:1111:1111:1111:1111:1111:1111",
    }


@pytest.mark.parametrize(
    "content",
    [
        "",
        "nope",
        "[]",
        '{"entries": []}',
        '{"version": 2, "entries": []}',
        '{"version": 1, "entries": {}}',
        '{"version": 1, "entries": [], "x": 1}',
        '{"version": 1, "entries": [{"hostname": "bad_name", "address": "fc94::1"}]}',
        '{"version": 1, "entries": [{"hostname": "r", "address": "fd00::1"}]}',
        '{"version": 1, "entries": [{"hostname": "r", "address": "fc94::1"}, '
        '{"hostname": "r", "address": "fc94::2"}]}',
    ],
)
def test_corrupt_hosts_is_error_and_file_untouched(state: StateDir, content: str) -> None:
    state.hosts_path.write_text(content)
    with pytest.raises(StateError, match=r"hosts\.json is damaged"):
        state.load_hosts()
    assert state.hosts_path.read_text() == content


def test_failed_save_keeps_previous_file(state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    state.save_hosts([HostEntry("robot1", A1)])
    before = state.hosts_path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StateError, match=r"cannot write .*hosts\.json: No space left"):
        state.save_hosts([HostEntry("robot2", A2)])
    monkeypatch.undo()
    assert state.hosts_path.read_bytes() == before
    assert sorted(p.name for p in state.path.iterdir()) == ["hosts.json"]


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "file system is full: free some space there, or give the daemon another --state-dir"),
        (errno.EDQUOT, "file system is full: free some space there, or give the daemon another --state-dir"),
        (errno.EROFS, "is read-only: remount it read-write, or give the daemon another --state-dir"),
        (errno.EACCES, "needs write access there: run it as root, or give it another --state-dir"),
    ],
)
def test_a_failed_write_says_which_file_and_what_to_do(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, code: int, advice: str
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError) as info:
        state.load_or_create_identity()
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(f"cannot write {state.identity_path}: {os.strerror(code)}; ")
    assert advice in message
    assert "\n" not in message
    assert _entries(state.path) == []  # no identity, no temporary file


def test_lock_file_that_cannot_be_written_is_a_state_error_and_not_held(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a full file system the lock file can be created (an inode) but not given the pid (a data block).
    def full_pwrite(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state_module.os, "pwrite", full_pwrite)
    with pytest.raises(StateError, match=rf"cannot write lock file {state.lock_path}: .*file system is full"):
        state.lock()
    monkeypatch.undo()
    assert not state.locked
    other = StateDir(state.path)
    other.lock()  # the failed attempt released the lock
    other.unlock()


def test_state_directory_without_write_permission(open_dir: Path) -> None:
    state = StateDir(open_dir / "state")
    state.path.chmod(0o555)  # not writable for an unprivileged account, owner or not
    advice = "the daemon needs write access there: run it as root, or give it another --state-dir"
    with pytest.raises(StateError, match=rf"cannot open lock file {state.lock_path}: .*; {advice}"):
        run_unprivileged(state.lock)
    with pytest.raises(StateError, match=rf"cannot write {state.identity_path}: .*; {advice}"):
        run_unprivileged(state.load_or_create_identity)
    assert _entries(state.path) == []


def test_uncreatable_state_directory_says_what_to_do(open_dir: Path) -> None:
    open_dir.chmod(0o555)
    with pytest.raises(StateError, match=r"cannot create state directory .*; the daemon needs write access"):
        run_unprivileged(lambda: StateDir(open_dir / "state"))


# --- generic JSON ---------------------------------------------------------------------------


def test_json_documents(state: StateDir) -> None:
    assert state.load_json("license_pin.json") is None
    state.save_json("license_pin.json", {"fingerprint": "ab"})
    assert state.load_json("license_pin.json") == {"fingerprint": "ab"}
    (state.path / "bad.json").write_text("{")
    with pytest.raises(StateError, match=r"bad\.json is damaged"):
        state.load_json("bad.json")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", ".."])
def test_json_names_must_be_plain(state: StateDir, name: str) -> None:
    with pytest.raises(StateError, match="not a plain file name"):
        state.save_json(name, {})


# --- lock -----------------------------------------------------------------------------------


def test_second_lock_refused_with_pid(state: StateDir) -> None:
    state.lock()
    other = StateDir(state.path)
    with pytest.raises(StateError, match=rf"in use by another husarnet-ros daemon \(pid {os.getpid()}\)"):
        other.lock()
    state.unlock()
    other.lock()
    assert other.locked
    other.unlock()


def test_lock_is_idempotent_and_context_manager(state: StateDir) -> None:
    with state:
        state.lock()
        assert state.locked
    assert not state.locked
    state.unlock()  # unlocking twice is harmless


def test_lock_released_when_holder_dies(state: StateDir) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from husarnet_ros.daemon.state import StateDir; "
            "s = StateDir(sys.argv[1]); s.lock(); print('locked', flush=True); sys.stdin.read()",
            str(state.path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateError, match=f"pid {holder.pid}"):
            state.lock()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    state.lock()  # the kernel dropped the dead holder's lock
    assert state.locked
    state.unlock()


def test_timestamp_floor_round_trip_and_damage(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert state.load_timestamp_floor() == 0  # none yet
    state.save_timestamp_floor(1_700_000_000_123_456_789)
    assert state.load_timestamp_floor() == 1_700_000_000_123_456_789
    assert stat.S_IMODE(state.clock_path.stat().st_mode) == 0o600
    for damaged in (
        "{",
        '{"version": 2, "timestamp_floor_ns": 1}',
        '{"version": 1, "timestamp_floor_ns": -1}',
        '{"version": 1, "timestamp_floor_ns": "1"}',
        '{"version": 1, "timestamp_floor_ns": true}',
    ):
        state.clock_path.write_text(damaged)
        with pytest.raises(StateError, match=r"clock\.json is damaged"):
            state.load_timestamp_floor()
        assert state.clock_path.read_text() == damaged  # left as it was
