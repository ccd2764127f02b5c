"""The hosts helper: a tiny privileged process whose only power is rewriting the managed block
of one hosts file.

The daemon starts it (``HostsHelper.start``) while still root, before dropping its own
capabilities, and then asks it to "set these entries"; nothing else is accepted. The helper:

- is a fresh interpreter (``python -I``: no environment, no user site, no current directory on
  the path) that imports only the standard library and ``husarnet_ros.core.hosts``;
- keeps only CAP_CHOWN, CAP_DAC_OVERRIDE and CAP_FOWNER (enough to rewrite a file of any owner
  and give it back its owner and mode) and sets PR_SET_NO_NEW_PRIVS;
- talks over a SOCK_SEQPACKET socket pair: one JSON request per message, at most
  ``MAX_REQUEST_SIZE`` bytes, validated with ``core.hosts``; replies ``{"ok": true}`` or
  ``{"ok": false, "error": "..."}``;
- rewrites the file atomically (temp file + fsync + rename), every line outside the managed
  block kept byte for byte (undecodable bytes included), mode and owner kept. A symlink is
  followed and its target rewritten. If the file is a mount point (Docker bind-mounts
  /etc/hosts), a rename onto it is impossible (EBUSY): then it is rewritten in place, which is
  the only way to change such a file;
- exits when the daemon closes the socket or dies (EOF), and also gets SIGTERM through
  PR_SET_PDEATHSIG when the daemon thread that started it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import HusarnetError
from ..core.hosts import HostEntry, canonical_entries, render
from ..fileio import FileMissingError, FileReadError, atomic_write, read_bounded_text

MAX_REQUEST_SIZE = 64 * 1024  # ~700 entries; a request that does not fit is refused, not truncated
MAX_HOSTS_FILE_SIZE = 16 * 1024 * 1024
REPLY_TIMEOUT = 30.0  # seconds; a rewrite is one small file, so this only catches a wedged helper
START_TIMEOUT = 30.0
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # any byte sequence survives decode + encode unchanged
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class HostsHelperError(HusarnetError):
    """The hosts helper refused a request, failed to write, or is not running."""


# ================================================================================ client side


class HostsHelper:
    """Handle on a running hosts helper process (see the module doc)."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket, hosts_file: Path) -> None:
        self._process = process
        self._sock = sock
        self.hosts_file = hosts_file
        self._lock = threading.Lock()

    @classmethod
    def start(cls, hosts_file: Path, timeout: float = START_TIMEOUT) -> HostsHelper:
        """Start the helper for ``hosts_file`` and wait until it is ready.

        Call it as root, from the thread that lives as long as the daemon (the parent-death
        signal follows the thread), before capabilities are dropped.
        """
        helper = cls.spawn(hosts_file)
        helper.wait_started(timeout)
        return helper

    @classmethod
    def spawn(cls, hosts_file: Path) -> HostsHelper:
        """Start the helper without waiting for it (as ``start``: as root, from the daemon's lasting thread);
        ``wait_started`` then waits, from any thread. The daemon's data path need not wait for a second
        interpreter to start."""
        hosts_file = Path(hosts_file).absolute()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",  # isolated: ignore PYTHON* variables, user site and the current directory
                    "-c",
                    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                    "from husarnet_ros.daemon.hosts_helper import main; sys.exit(main())",
                    str(_PACKAGE_ROOT),
                    "--fd",
                    str(theirs.fileno()),
                    "--hosts-file",
                    str(hosts_file),
                    "--parent-pid",
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
            )
        except OSError as exc:
            ours.close()
            raise HostsHelperError(f"cannot start the hosts helper: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        return cls(process, ours, hosts_file)

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the helper ``spawn`` started says it is ready; if it does not: HostsHelperError, helper
        stopped."""
        try:
            reply = self._receive(timeout)
        except HostsHelperError:
            self.stop()
            raise
        if not reply.get("ok"):
            self.stop()
            raise HostsHelperError(f"the hosts helper could not start: {reply.get('error', 'unknown error')}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def running(self) -> bool:
        return self._process.poll() is None

    def set_entries(self, entries: Iterable[HostEntry]) -> None:
        """Make the managed block hold exactly ``entries``; HostsHelperError with the reason if not."""
        canonical = canonical_entries(entries)  # bad input fails here, before anything is sent
        request = json.dumps({"op": "set", "entries": [e.to_json() for e in canonical]}).encode()
        if len(request) > MAX_REQUEST_SIZE:
            raise HostsHelperError(
                f"too many host entries ({len(canonical)}): the request exceeds {MAX_REQUEST_SIZE} bytes"
            )
        with self._lock:
            try:
                self._sock.sendall(request)
            except OSError as exc:
                raise HostsHelperError(f"the hosts helper is not running ({exc.strerror or exc})") from None
            reply = self._receive(REPLY_TIMEOUT)
        if not reply.get("ok"):
            raise HostsHelperError(
                f"could not update {self.hosts_file}: {reply.get('error', 'unknown error')}"
            )

    def _receive(self, timeout: float) -> dict[str, object]:
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(MAX_REQUEST_SIZE)
        except TimeoutError:
            # A late answer would be taken as the reply to the next request: give up on this helper.
            self.stop()
            raise HostsHelperError(f"the hosts helper did not answer within {timeout:.0f} s") from None
        except OSError as exc:
            raise HostsHelperError(f"the hosts helper is not running ({exc.strerror or exc})") from None
        if not data:
            code = self._process.poll()
            status = f"exit status {code}" if code is not None else "closed its socket"
            raise HostsHelperError(f"the hosts helper stopped ({status}); see the daemon log")
        try:
            reply = json.loads(data)
        except ValueError:
            raise HostsHelperError("the hosts helper sent a malformed reply") from None
        if not isinstance(reply, dict):
            raise HostsHelperError("the hosts helper sent a malformed reply")
        return reply

    def stop(self, timeout: float = 10.0) -> None:
        """Close the channel (the helper exits on EOF) and reap it; kill it if it lingers."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout)


# ================================================================================ helper side


def read_hosts_text(path: Path) -> str:
    """The file as text that encodes back to the very same bytes ('' if it does not exist)."""
    try:
        return read_bounded_text(path, MAX_HOSTS_FILE_SIZE, "hosts file", encoding=_ENCODING, errors=_ERRORS)
    except FileMissingError:
        return ""
    except FileReadError as exc:
        raise HostsHelperError(f"{exc}; refusing to rewrite it") from None


def write_managed_block(hosts_file: Path, entries: list[HostEntry]) -> None:
    """Rewrite the managed block of ``hosts_file`` to hold ``entries``; every other byte kept."""
    target = hosts_file.resolve()  # a symlink (e.g. to /run/...) is followed, not replaced
    try:
        st = target.stat()
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
        if not stat.S_ISREG(st.st_mode):
            raise HostsHelperError(f"{target} is not a regular file")
    except FileNotFoundError:
        mode, owner = 0o644, None
    old = read_hosts_text(target)
    new = render(old, entries)
    if new == old:
        return  # nothing to change: leave the file (and its timestamps) alone; never create it empty
    data = new.encode(_ENCODING, _ERRORS)
    try:
        atomic_write(target, data, mode, owner=owner)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        _rewrite_in_place(target, data)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    # Only for a bind-mounted file, where rename() cannot work. Write first, then truncate, so a
    # crash leaves at worst trailing old bytes, not an empty file.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], written)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_request(data: bytes) -> list[HostEntry]:
    """The entries of a "set" request; HostsHelperError (or a ConfigError) naming what is wrong."""
    try:
        request = json.loads(data)
    except (ValueError, RecursionError):
        raise HostsHelperError("request is not valid JSON") from None
    if not isinstance(request, dict) or set(request) != {"op", "entries"}:
        raise HostsHelperError('a request must be {"op": "set", "entries": [...]}')
    if request["op"] != "set":
        raise HostsHelperError(f"unknown operation {str(request['op'])[:40]!r}; only 'set' is accepted")
    if not isinstance(request["entries"], list):
        raise HostsHelperError("'entries' must be a list")
    return canonical_entries(HostEntry.from_json(item) for item in request["entries"])


def handle(data: bytes, hosts_file: Path) -> dict[str, object]:
    """One request in, one reply out; never raises for bad input or a failed write."""
    try:
        write_managed_block(hosts_file, parse_request(data))
    except HusarnetError as exc:
        return {"ok": False, "error": str(exc)}
    except OSError as exc:
        return {"ok": False, "error": f"cannot write {hosts_file}: {exc.strerror or exc}"}
    except Exception as exc:  # a bug must cost one request, not the helper (it cannot be restarted)
        return {"ok": False, "error": f"internal error in the hosts helper: {type(exc).__name__}: {exc}"}
    return {"ok": True}


def serve(sock: socket.socket, hosts_file: Path) -> None:
    """Answer requests until the daemon closes its end."""
    while True:
        try:
            data, _, flags, _ = sock.recvmsg(MAX_REQUEST_SIZE + 1)
        except InterruptedError:
            continue
        except ConnectionResetError:
            return
        if not data:
            return  # EOF: the daemon stopped or died
        if flags & socket.MSG_TRUNC or len(data) > MAX_REQUEST_SIZE:
            reply: dict[str, object] = {"ok": False, "error": f"request larger than {MAX_REQUEST_SIZE} bytes"}
        else:
            reply = handle(data, hosts_file)
        try:
            sock.send(json.dumps(reply).encode())
        except OSError:
            return


def _confine(parent_pid: int) -> None:
    from .privileges import (
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_FOWNER,
        restrict_capabilities,
        set_parent_death_signal,
    )

    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise HostsHelperError("the daemon exited while the hosts helper was starting")
    if os.geteuid() == 0:
        restrict_capabilities((CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="husarnet-ros-hosts-helper", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="inherited SOCK_SEQPACKET socket")
    parser.add_argument("--hosts-file", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C in the daemon's terminal reaches the whole process group; the daemon decides when we go.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        _confine(args.parent_pid)
    except HusarnetError as exc:
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"ok": False, "error": str(exc)}).encode())
        return 1
    sock.send(json.dumps({"ok": True, "ready": True}).encode())
    serve(sock, args.hosts_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
