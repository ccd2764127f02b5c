"""drop_all_capabilities in a real process: what is gone, and what uid 0 keeps.

Each check runs in a child process: dropping capabilities cannot be undone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.daemon.privileges import capability_sets, effective_capabilities, no_new_privs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capabilities to drop)"),
]

REPO = Path(__file__).resolve().parents[2]
OTHER_UID = 54321  # owns a private file that only CAP_DAC_OVERRIDE could read

PROBE = textwrap.dedent(
    """
    import errno, fcntl, json, os, socket, struct, subprocess, sys
    from pathlib import Path
    from husarnet_ros.daemon.privileges import Account, capability_sets, drop_all_capabilities, no_new_privs

    work = Path(sys.argv[1])
    become = None if sys.argv[2] == "root" else Account("probe", *map(int, sys.argv[2].split(":")))
    drop_all_capabilities(become)
    report = {"sets": capability_sets(), "no_new_privs": no_new_privs(), "uids": os.getresuid()}

    def attempt(name, fn):
        try:
            fn()
            report[name] = "ok"
        except OSError as exc:
            report[name] = errno.errorcode.get(exc.errno, str(exc.errno))

    def make_tun():
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"hrcaptest0", 0x0001 | 0x1000))  # TUNSETIFF
        finally:
            os.close(fd)

    def bind_low_port():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 443))

    def raw_socket():
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()

    attempt("tun", make_tun)
    attempt("bind_443", bind_low_port)
    attempt("raw_socket", raw_socket)
    attempt("write_root_0700_dir", lambda: (work / "root0700" / "new").write_text("x"))
    attempt("write_root_0644_file", lambda: (work / "root0644").write_text("changed"))
    attempt("read_other_users_0600_file", lambda: (work / "other0600").read_text())
    attempt("chown_to_other_user", lambda: os.chown(work / "root0644", 54321, 54321))
    child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True)
    report["exec_child"] = {
        line.split(":")[0]: int(line.split(":")[1], 16)
        for line in child.stdout.splitlines() if line.startswith(("CapEff", "CapPrm", "CapBnd"))
    }
    print(json.dumps(report), flush=True)
    sys.stdin.read()  # stay alive so the test can look at /proc/<pid>/status from outside
    """
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Under /tmp, open to every account (pytest's tmp_path sits below a 0700 directory): so a refusal seen by
    # the unprivileged probe comes from the file's own permissions, not from a directory on the way.
    tmp_path = Path(tempfile.mkdtemp(prefix="hr-priv-", dir="/tmp"))
    try:
        yield _populate(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _populate(tmp_path: Path) -> Path:
    private = tmp_path / "root0700"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    (tmp_path / "root0644").write_text("original")
    (tmp_path / "root0644").chmod(0o644)
    other = tmp_path / "other0600"
    other.write_text("secret")
    other.chmod(0o600)
    os.chown(other, OTHER_UID, OTHER_UID)
    tmp_path.chmod(0o755)
    return tmp_path


def test_parent_process_still_has_capabilities() -> None:
    # Sanity check that the test below can fail at all.
    assert effective_capabilities() != 0


DAEMON_UID = 54322  # an unprivileged account for the daemon (needs no passwd entry to switch to)


@pytest.mark.parametrize("become", ["root", f"{DAEMON_UID}:{DAEMON_UID}"])
def test_drop_all_capabilities(workdir: Path, become: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(workdir), become],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            pytest.fail(f"probe failed: {child.communicate(timeout=30)[1]}")
        report = json.loads(line)
        # Seen from outside, through /proc, as the daemon's tests check it.
        outside = capability_sets(child.pid)
        assert effective_capabilities(child.pid) == 0
        assert no_new_privs(child.pid)
    finally:
        child.kill()
        child.wait(timeout=30)

    assert outside == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
    assert report["sets"] == outside
    assert report["no_new_privs"] is True
    # Gone: everything that needs a capability.
    assert report["tun"] == "EPERM"  # CAP_NET_ADMIN
    assert report["bind_443"] == "EACCES"  # CAP_NET_BIND_SERVICE (the kernel says EACCES here)
    assert report["raw_socket"] == "EPERM"  # CAP_NET_RAW
    assert report["read_other_users_0600_file"] == "EACCES"  # CAP_DAC_OVERRIDE / DAC_READ_SEARCH
    assert report["chown_to_other_user"] == "EPERM"  # CAP_CHOWN
    if become == "root":
        # Kept: uid 0 is still the owner of root's files, so owner permissions apply ...
        assert report["uids"] == [0, 0, 0]
        assert report["write_root_0700_dir"] == "ok"
        assert report["write_root_0644_file"] == "ok"
        assert (workdir / "root0644").read_text() == "changed"
    else:
        # ... which is why the daemon switches to an account of its own: then root's files are closed too.
        assert report["uids"] == [DAEMON_UID] * 3
        assert report["write_root_0700_dir"] == "EACCES"
        assert report["write_root_0644_file"] == "EACCES"
        assert (workdir / "root0644").read_text() == "original"
    # An exec'd program (even as uid 0) gets nothing back: the bounding set is empty.
    assert report["exec_child"] == {"CapPrm": 0, "CapEff": 0, "CapBnd": 0}


def test_refuses_when_another_thread_exists() -> None:
    script = textwrap.dedent(
        """
        import threading
        from husarnet_ros.daemon.privileges import PrivilegeError, drop_all_capabilities
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        try:
            drop_all_capabilities()
            print("no error")
        except PrivilegeError as exc:
            print("PrivilegeError:", exc)
        finally:
            stop.set()
            worker.join()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.startswith("PrivilegeError:")
    assert "before any other thread is started" in result.stdout
