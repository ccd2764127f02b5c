"""Run a function as an unprivileged account, so that tests of "permission denied" also run as root.

Root passes every file permission check (CAP_DAC_OVERRIDE), so such a test would otherwise have to be
skipped under root, which is exactly how CI runs the suite (scripts/test.sh). Instead the function runs in a
forked child that first drops to ``nobody`` (uid and gid 65534: the kernel needs no passwd entry for it).
Its return value or exception comes back pickled. When the caller is not root it already is unprivileged,
and the function simply runs in this process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

NOBODY_UID = NOBODY_GID = 65534
CHILD_TIMEOUT_S = 60.0


class UnprivilegedRunError(RuntimeError):
    """The child did not report back (it crashed, hung or sent something unreadable)."""


def run_unprivileged(function: Callable[[], T], timeout_s: float = CHILD_TIMEOUT_S) -> T:
    """``function()`` as uid/gid 65534 without supplementary groups; returns its result or raises its error.

    Whatever the function needs (paths it reads or writes) must be reachable for that account.
    """
    if os.geteuid() != 0:
        return function()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code (os._exit)
        os.close(read_fd)
        _child(function, write_fd)
    os.close(write_fd)
    try:
        payload = _read_all(read_fd, pid, timeout_s)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise UnprivilegedRunError(f"the unprivileged child reported nothing (wait status {status})")
    kind, value = pickle.loads(payload)  # our own forked child wrote it
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def _child(function: Callable[[], object], write_fd: int) -> None:
    try:
        try:
            os.setgroups([])
            os.setgid(NOBODY_GID)
            os.setuid(NOBODY_UID)  # as root this sets the real, effective and saved uid: no way back
            outcome: tuple[str, object] = ("returned", function())
        except BaseException as exc:  # everything, even SystemExit, goes back to the parent
            outcome = ("raised", exc)
        try:
            payload = pickle.dumps(outcome)
        except Exception as exc:  # an unpicklable result or error
            payload = pickle.dumps(("raised", UnprivilegedRunError(f"cannot send back {outcome!r}: {exc}")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    finally:
        os._exit(0)


def _read_all(fd: int, pid: int, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise UnprivilegedRunError(f"the unprivileged child did not finish within {timeout_s:.0f} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
