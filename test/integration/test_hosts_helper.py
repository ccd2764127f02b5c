"""The privileged hosts helper as the daemon uses it: started as root, serving a parent that has
dropped every capability; rewriting only the managed block, keeping mode, owner and every other
byte; refusing garbage; going away with its parent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.core.hosts import BEGIN_MARKER, END_MARKER, HostEntry, HostsEntryError
from husarnet_ros.daemon.hosts_helper import MAX_REQUEST_SIZE, HostsHelper, HostsHelperError
from husarnet_ros.daemon.privileges import capability_sets, no_new_privs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the helper runs privileged)"),
]

REPO = Path(__file__).resolve().parents[2]
A1 = "fc94:1111:1111:1111:1111:1111:1111:1111"
A2 = "fc94:2222:2222:2222:2222:2222:2222:2222"
# CRLF line, a comment, a tab, bytes that are not UTF-8, and no newline at the end.
USER_BYTES = b"127.0.0.1\tlocalhost\r\n# comment \xff\xfe kept\n::1 localhost ip6-localhost\n10.0.0.9 nas"
OWNER = (1234, 5678)
MODE = 0o640

# A stand-in for the daemon: starts the helper as root, drops all capabilities, then relays
# "set entries" requests read from stdin (one JSON list of [hostname, address] per line).
PARENT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from husarnet_ros.core.hosts import HostEntry
    from husarnet_ros.daemon.hosts_helper import HostsHelper, HostsHelperError
    from husarnet_ros.daemon.privileges import drop_all_capabilities

    helper = HostsHelper.start(Path(sys.argv[1]))
    drop_all_capabilities()
    print(json.dumps({"helper_pid": helper.pid}), flush=True)
    for line in sys.stdin:
        pairs = json.loads(line)
        try:
            helper.set_entries([HostEntry.from_text(name, address) for name, address in pairs])
            print(json.dumps({"ok": True}), flush=True)
        except HostsHelperError as exc:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
    helper.stop()
    """
)


class Parent:
    """The stand-in daemon process and the helper it started."""

    def __init__(self, hosts_file: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(hosts_file)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        helper_pid = hello["helper_pid"]
        assert isinstance(helper_pid, int), hello
        self.helper_pid = helper_pid

    def _read(self) -> dict[str, object]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"parent process ended (exit status {self.process.wait(30)})")
        result: dict[str, object] = json.loads(line)
        return result

    def set_entries(self, pairs: list[tuple[str, str]]) -> dict[str, object]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(pairs) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        _kill_if_alive(self.helper_pid)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state and "X" not in state


def _wait_gone(pid: int, attempts: int = 400) -> bool:
    for _ in range(attempts):  # bounded: at most ~20 s
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _kill_if_alive(pid: int) -> None:
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def hosts_file(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_bytes(USER_BYTES)
    path.chmod(MODE)
    os.chown(path, *OWNER)
    return path


@pytest.fixture
def parent(hosts_file: Path) -> Iterator[Parent]:
    p = Parent(hosts_file)
    yield p
    p.close()


@pytest.fixture
def helper(hosts_file: Path) -> Iterator[HostsHelper]:
    h = HostsHelper.start(hosts_file)
    yield h
    h.stop()
    _kill_if_alive(h.pid)


def _block(*lines: str) -> bytes:
    return "".join(f"{line}\n" for line in (BEGIN_MARKER, *lines)).encode() + END_MARKER.encode()


# --- through a capability-less parent, as in the daemon ---------------------------------------


def test_parent_without_capabilities_updates_hosts(parent: Parent, hosts_file: Path) -> None:
    assert capability_sets(parent.process.pid)["CapEff"] == 0
    assert parent.set_entries([("robot2", A2), ("Robot1", A1)]) == {"ok": True}
    # The file had no final newline: its last line got one, the block records that by having none.
    assert hosts_file.read_bytes() == USER_BYTES + b"\n" + _block(f"{A1} robot1", f"{A2} robot2")
    st = hosts_file.stat()
    assert stat.S_IMODE(st.st_mode) == MODE
    assert (st.st_uid, st.st_gid) == OWNER  # a capability-less parent could not have kept this

    assert parent.set_entries([("robot3", A2)]) == {"ok": True}
    assert hosts_file.read_bytes() == USER_BYTES + b"\n" + _block(f"{A2} robot3")

    assert parent.set_entries([]) == {"ok": True}
    assert hosts_file.read_bytes() == USER_BYTES  # byte for byte as before
    assert (hosts_file.stat().st_uid, hosts_file.stat().st_gid) == OWNER


def test_helper_is_confined(parent: Parent) -> None:
    sets = capability_sets(parent.helper_pid)
    allowed = (1 << 0) | (1 << 1) | (1 << 3)  # CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER
    assert sets["CapEff"] == allowed
    assert sets["CapPrm"] == allowed
    assert sets["CapBnd"] == allowed
    assert sets["CapInh"] == sets["CapAmb"] == 0
    assert no_new_privs(parent.helper_pid)


def test_helper_exits_when_parent_is_killed(parent: Parent) -> None:
    assert _alive(parent.helper_pid)
    parent.process.kill()
    parent.process.wait(30)
    assert _wait_gone(parent.helper_pid), "hosts helper outlived the daemon"


def test_helper_exits_when_parent_closes_channel(parent: Parent) -> None:
    assert parent.process.stdin is not None
    parent.process.stdin.close()  # the parent calls helper.stop() and exits
    assert parent.process.wait(30) == 0
    assert _wait_gone(parent.helper_pid)


# --- directly ---------------------------------------------------------------------------------


def _raw(helper: HostsHelper, data: bytes) -> dict[str, object]:
    # Goes around set_entries' own validation, as a compromised daemon could.
    sock = helper._sock
    sock.settimeout(30)
    sock.send(data)
    reply: dict[str, object] = json.loads(sock.recv(65536))
    return reply


@pytest.mark.parametrize(
    ("request_bytes", "fragment"),
    [
        (b"garbage", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be"),
        (b'{"op": "set"}', "must be"),
        (b'{"op": "set", "entries": [], "path": "/etc/shadow"}', "must be"),
        (b'{"op": "write", "entries": []}', "only 'set'"),
        (b'{"op": "set", "entries": {}}', "must be a list"),
        (b'{"op": "set", "entries": [1]}', "must be an object"),
        (b'{"op": "set", "entries": [{"hostname": "a b", "address": "fc94::1"}]}', "may contain only"),
        pytest.param(
            b'{"op": "set", "entries": [{"hostname": "x\\nfc94::2 y", "address": "fc94::1"}]}',
            "may contain only",
            id="newline-injection",
        ),
        (b'{"op": "set", "entries": [{"hostname": "localhost", "address": "fc94::1"}]}', "reserved"),
        (b'{"op": "set", "entries": [{"hostname": "evil", "address": "10.0.0.1"}]}', "not an IPv6"),
        (b'{"op": "set", "entries": [{"hostname": "evil", "address": "::1"}]}', "overlay"),
        (
            b'{"op": "set", "entries": [{"hostname": "r", "address": "fc94::1"},'
            b' {"hostname": "r", "address": "fc94::2"}]}',
            "two addresses",
        ),
        pytest.param(b"[" * 60_000, "not valid JSON", id="deep-nesting"),
        pytest.param(b" " * (MAX_REQUEST_SIZE + 1), "larger than", id="oversize"),
    ],
)
def test_garbage_rejected_file_untouched(
    helper: HostsHelper, hosts_file: Path, request_bytes: bytes, fragment: str
) -> None:
    reply = _raw(helper, request_bytes)
    assert reply["ok"] is False
    assert fragment in str(reply["error"])
    assert hosts_file.read_bytes() == USER_BYTES
    # ...and the helper still works afterwards.
    helper.set_entries([HostEntry.from_text("robot1", A1)])
    assert _block(f"{A1} robot1") in hosts_file.read_bytes()


def test_invalid_entries_rejected_before_sending(helper: HostsHelper, hosts_file: Path) -> None:
    with pytest.raises(HostsEntryError, match="two addresses"):
        helper.set_entries([HostEntry.from_text("r", A1), HostEntry.from_text("r", A2)])
    assert helper.running()
    assert hosts_file.read_bytes() == USER_BYTES


def test_too_many_entries_refused_client_side(helper: HostsHelper) -> None:
    many = [HostEntry.from_text(f"robot-{i}", A1) for i in range(2000)]
    with pytest.raises(HostsHelperError, match="too many host entries"):
        helper.set_entries(many)
    assert helper.running()


def test_unchanged_request_does_not_rewrite(helper: HostsHelper, hosts_file: Path) -> None:
    helper.set_entries([HostEntry.from_text("robot1", A1)])
    inode = hosts_file.stat().st_ino
    helper.set_entries([HostEntry.from_text("robot1", A1)])
    assert hosts_file.stat().st_ino == inode


def test_symlink_target_rewritten_link_kept(tmp_path: Path) -> None:
    target = tmp_path / "real-hosts"
    target.write_text("127.0.0.1 localhost\n")
    link = tmp_path / "hosts"
    link.symlink_to(target)
    h = HostsHelper.start(link)
    try:
        h.set_entries([HostEntry.from_text("robot1", A1)])
    finally:
        h.stop()
    assert link.is_symlink()
    assert target.read_bytes() == b"127.0.0.1 localhost\n" + _block(f"{A1} robot1") + b"\n"


def test_missing_file_created_only_when_needed(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    h = HostsHelper.start(path)
    try:
        h.set_entries([])
        assert not path.exists()
        h.set_entries([HostEntry.from_text("robot1", A1)])
    finally:
        h.stop()
    assert path.read_bytes() == _block(f"{A1} robot1") + b"\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_failure_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "hosts"
    h = HostsHelper.start(path)
    try:
        with pytest.raises(HostsHelperError, match=r"could not update .*hosts: cannot write"):
            h.set_entries([HostEntry.from_text("robot1", A1)])
        assert h.running()
    finally:
        h.stop()


def test_directory_instead_of_file_is_reported(tmp_path: Path) -> None:
    h = HostsHelper.start(tmp_path)
    try:
        with pytest.raises(HostsHelperError, match="not a regular file"):
            h.set_entries([HostEntry.from_text("robot1", A1)])
    finally:
        h.stop()


def test_stop_ends_helper_and_later_use_fails(helper: HostsHelper) -> None:
    helper.stop()
    assert not helper.running()
    with pytest.raises(HostsHelperError, match="not running"):
        helper.set_entries([HostEntry.from_text("robot1", A1)])


def test_dead_helper_reported(helper: HostsHelper) -> None:
    os.kill(helper.pid, signal.SIGKILL)
    helper._process.wait(30)
    with pytest.raises(HostsHelperError, match=r"not running|stopped"):
        helper.set_entries([HostEntry.from_text("robot1", A1)])


def test_helper_imports_no_heavy_modules(tmp_path: Path) -> None:
    # The helper is a fresh interpreter; check what its module pulls in.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import husarnet_ros.daemon.hosts_helper; "
        "print(' '.join(sorted(sys.modules)))"
    )
    command = [sys.executable, "-I", "-c", script, str(REPO)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    modules = set(result.stdout.split())
    for heavy in ("nacl", "pydantic", "yaml", "fastapi", "pyroute2", "pytun", "rclpy", "asyncio"):
        assert heavy not in modules
