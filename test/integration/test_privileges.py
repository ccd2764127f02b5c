"""drop_all_capabilities in a real process: what is gone, and what uid 0 keeps.

Each check runs in a child process: dropping capabilities cannot be undone. The child runs in a network
namespace of its own (``unshare --net``), where the kernel's defaults hold whatever this machine's are
(``net.ipv4.ip_unprivileged_port_start`` is 0 in many containers), and a TUN device it might create by
mistake would vanish with it.

What the product promises is that an attempt is refused, not which errno the kernel picks: opening
/dev/net/tun fails with EACCES where the device is mode 0600 (the usual case) before TUNSETIFF could fail
with EPERM, so every refusal (PermissionError: EACCES or EPERM) is reported as "denied".
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

pytestmark = pytest.mark.integration  # root (capabilities to drop), see test/conftest.py

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
        except PermissionError:  # EACCES or EPERM: which one depends on the check that refused first
            report[name] = "denied"
        except OSError as exc:
            report[name] = errno.errorcode.get(exc.errno, str(exc.errno))

    def make_tun():
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"hrcaptest0", 0x0001 | 0x1000))  # TUNSETIFF
        finally:
            os.close(fd)

    # Ports below this one need CAP_NET_BIND_SERVICE (1024 in a new network namespace; a container may set 0).
    first_free_port = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    report["ip_unprivileged_port_start"] = first_free_port

    def bind_privileged_port():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", first_free_port - 1))

    def raw_socket():
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()

    attempt("tun", make_tun)
    attempt("bind_privileged_port", bind_privileged_port)
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
        ["unshare", "--net", sys.executable, "-c", PROBE, str(workdir), become],
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
    assert report["tun"] == "denied"  # CAP_NET_ADMIN (and, at mode 0600, CAP_DAC_OVERRIDE for a non-root uid)
    assert report["ip_unprivileged_port_start"] > 0, "the probe's namespace has no privileged ports to test"
    assert report["bind_privileged_port"] == "denied"  # CAP_NET_BIND_SERVICE
    assert report["raw_socket"] == "denied"  # CAP_NET_RAW
    assert report["read_other_users_0600_file"] == "denied"  # CAP_DAC_OVERRIDE / DAC_READ_SEARCH
    assert report["chown_to_other_user"] == "denied"  # CAP_CHOWN
    if become == "root":
        # Kept: uid 0 is still the owner of root's files, so owner permissions apply ...
        assert report["uids"] == [0, 0, 0]
        assert report["write_root_0700_dir"] == "ok"
        assert report["write_root_0644_file"] == "ok"
        assert (workdir / "root0644").read_text() == "changed"
    else:
        # ... which is why the daemon switches to an account of its own: then root's files are closed too.
        assert report["uids"] == [DAEMON_UID] * 3
        assert report["write_root_0700_dir"] == "denied"
        assert report["write_root_0644_file"] == "denied"
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
