"""Dropping every Linux capability once the daemon has done what needs root.

``drop_all_capabilities`` empties, in this order: the bounding set (so no later execve() can
regain anything), the ambient set, and the effective/permitted/inheritable sets (capset(2));
then it sets PR_SET_NO_NEW_PRIVS (setuid binaries and file capabilities grant nothing either).
Uses libc through ctypes: no extra dependency.

Capabilities are per *thread* on Linux: the call changes only the calling thread (threads made
later inherit its sets). Call it from the main thread before any other thread exists; it checks
afterwards that every thread of the process has no capabilities left and raises otherwise.

Capabilities limit the root-only kernel operations (TUN, netlink changes, raw sockets, low ports,
reading other users' files, ptrace, module loading...), not access to root's own files: a process
that keeps uid 0 still has owner permissions on every root-owned file (/etc/hosts, /etc/passwd,
cron directories). So ``drop_privileges(account)`` also switches to an unprivileged account (after
the bounding set is emptied, which needs CAP_SETPCAP, and before the thread sets are cleared).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import HusarnetError

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_FOWNER = 3
_CAP_LAST_CAP_FILE = Path("/proc/sys/kernel/cap_last_cap")
_FALLBACK_LAST_CAP = 63  # probe every bit the 64-bit sets can hold if /proc does not say


class PrivilegeError(HusarnetError):
    """Capabilities could not be dropped; the daemon must not go on running privileged."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capset.restype = ctypes.c_int


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result: int = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def last_capability() -> int:
    """The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    try:
        return int(_CAP_LAST_CAP_FILE.read_text().strip())
    except (OSError, ValueError):
        return _FALLBACK_LAST_CAP


def _drop_bounding_set(keep: frozenset[int]) -> None:
    for cap in range(last_capability() + 1):
        if cap in keep:
            continue
        try:
            if _prctl(PR_CAPBSET_READ, cap) == 0:
                continue  # not in the set (already dropped, or a container never had it)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                continue  # capability unknown to this kernel
            raise
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            raise PrivilegeError(
                f"cannot drop capability {cap} from the bounding set: {exc.strerror} "
                "(dropping needs CAP_SETPCAP: was the daemon started as root?)"
            ) from None


def _clear_ambient_set() -> None:
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: kernel older than 4.3, there is no ambient set
            raise PrivilegeError(f"cannot clear the ambient capability set: {exc.strerror}") from None


def _set_thread_sets(mask: int) -> None:
    """effective = permitted = ``mask``, inheritable = 0, for the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)  # pid 0: the calling thread
    data = (_CapData * 2)()  # version 3: two 32-bit words per set (capabilities 0-31, 32-63)
    for word in range(2):
        bits = (mask >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = bits
        data[word].permitted = bits
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset() failed: {os.strerror(err)}")


def _set_no_new_privs() -> None:
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        raise PrivilegeError(f"cannot set PR_SET_NO_NEW_PRIVS: {exc.strerror}") from None


@dataclass(frozen=True)
class Account:
    """A local account the daemon can run as."""

    name: str
    uid: int
    gid: int


def find_account(name: str) -> Account | None:
    """The account called ``name``, or None when this system has none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, entry.pw_gid)


def blocked_directory(path: Path, account: Account) -> Path | None:
    """The first directory from / down to ``path`` that ``account`` may not enter, or None when it may."""
    target = path.absolute()
    for directory in (*reversed(target.parents), target):
        st = directory.stat()
        if st.st_uid == account.uid:
            needed = stat.S_IXUSR
        elif st.st_gid == account.gid:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not st.st_mode & needed:
            return directory
    return None


def _become(account: Account) -> None:
    # glibc applies set*id to every thread of the process; there is only one at this point anyway.
    try:
        os.setgroups([])
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to user {account.name}: {exc.strerror}") from None
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise PrivilegeError(f"switching to user {account.name} did not take effect")


def restrict_capabilities(keep: Iterable[int] = (), become: Account | None = None) -> None:
    """Give up every capability except those numbered in ``keep`` (and those only if held now).

    With ``become``, also switch to that account (between emptying the bounding set, which needs
    CAP_SETPCAP, and clearing the thread's sets). Same per-thread caveat as ``drop_all_capabilities``;
    the hosts helper uses it to keep only what rewriting a file of any owner needs.
    """
    keep_set = frozenset(keep)
    mask = 0
    for cap in keep_set:
        mask |= 1 << cap
    mask &= capability_sets()["CapPrm"]  # cannot keep what this thread does not have
    _drop_bounding_set(keep_set)
    _clear_ambient_set()
    if become is not None:
        _become(become)
        mask = 0  # a switch away from uid 0 clears the permitted set: nothing is left to keep
    _set_thread_sets(mask)
    _set_no_new_privs()
    still_privileged = [
        tid for tid, sets in thread_capabilities().items() if (sets["CapEff"] | sets["CapPrm"]) & ~mask
    ]
    if still_privileged:
        raise PrivilegeError(
            "capabilities were dropped in the calling thread only, but threads "
            f"{', '.join(map(str, still_privileged))} still hold some: drop_all_capabilities() must run "
            "before any other thread is started"
        )


def drop_all_capabilities(become: Account | None = None) -> None:
    """Irrevocably give up every capability of this process (see the module doc), and uid 0 with ``become``.

    Must run in the main thread before any other thread is started. Raises PrivilegeError if
    something could not be dropped, or if a thread of this process still holds capabilities.
    """
    restrict_capabilities((), become)


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent *thread* exits (PR_SET_PDEATHSIG)."""
    try:
        _prctl(PR_SET_PDEATHSIG, sig)
    except OSError as exc:
        raise PrivilegeError(f"cannot set the parent-death signal: {exc.strerror}") from None


def capability_sets(pid: int | str = "self", task: int | None = None) -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd and CapAmb of a process (or one of its threads) as ints."""
    path = Path("/proc") / str(pid) / ("status" if task is None else f"task/{task}/status")
    sets: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            sets[key] = int(value.strip(), 16)
    return sets


def effective_capabilities(pid: int | str = "self") -> int:
    """CapEff of process ``pid`` from /proc/<pid>/status (0: no capabilities at all)."""
    return capability_sets(pid)["CapEff"]


def thread_capabilities(pid: int | str = "self") -> dict[int, dict[str, int]]:
    """Capability sets of every thread of process ``pid``, by thread id."""
    result = {}
    for task_dir in (Path("/proc") / str(pid) / "task").iterdir():
        try:
            result[int(task_dir.name)] = capability_sets(pid, int(task_dir.name))
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return result


def no_new_privs(pid: int | str = "self") -> bool:
    """Whether PR_SET_NO_NEW_PRIVS is set for process ``pid`` (the NoNewPrivs line in its status)."""
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            return line.split(":", 1)[1].strip() == "1"
    return False
