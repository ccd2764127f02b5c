"""The control API's listening Unix socket, apart from the server that answers on it.

The daemon binds it while it still holds its capabilities (giving the socket to the control group needs
CAP_CHOWN), and the HTTP server (``control.ControlServer``: FastAPI, uvicorn, ~0.2 s of imports) takes it
over later, on another thread, once the data path runs. This module therefore needs only the standard
library.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
from pathlib import Path

from ..api import MAX_UNIX_SOCKET_PATH_BYTES
from ..core.errors import HusarnetError

log = logging.getLogger("husarnet_ros.daemon.control")

CONTROL_GROUP = "husarnet"
SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o755


class ControlSocketError(HusarnetError):
    """The control socket cannot be served (already in use, not a socket, permissions, path too long)."""


def socket_is_live(path: str, timeout_s: float = 1.0) -> bool:
    """True if something accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout_s)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise ControlSocketError(f"cannot check control socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    return True


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse if a live one answers or it is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it")
    if socket_is_live(path):
        raise ControlSocketError(
            f"another husarnet-ros daemon is already listening on {path}; stop it first or pass a "
            "different --control-socket"
        )
    log.info("removing stale control socket %s", path)
    Path(path).unlink(missing_ok=True)


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _bind_listening_socket(path: str, group: str | None) -> socket.socket:
    """Bind, restrict and only then listen: nobody can connect while the mode is still the umask's."""
    if len(os.fsencode(path)) > MAX_UNIX_SOCKET_PATH_BYTES:
        raise ControlSocketError(f"control socket path is too long for a Unix socket ({path})")
    parent = Path(path).absolute().parent
    try:
        parent.mkdir(mode=SOCKET_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlSocketError(f"cannot create {parent} for the control socket: {exc.strerror}") from None
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        Path(path).chmod(SOCKET_MODE)
        gid = _group_id(group)
        if gid is not None:
            try:
                os.chown(path, -1, gid)
            except PermissionError:
                log.warning("cannot give control socket %s to group %s (not root?)", path, group)
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot listen on control socket {path}: {exc.strerror or exc}") from None
    return sock


class ControlSocket:
    """A listening Unix socket at ``path`` (mode 0660, group ``group`` if it exists), bound by ``bind``,
    handed to the server by ``take`` and removed by ``remove`` (only if the file is still this one)."""

    def __init__(self, path: str, group: str | None = CONTROL_GROUP) -> None:
        self.path = path
        self._group = group
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._created_dir: Path | None = None  # the socket's directory, when bind() had to create it

    def bind(self) -> None:
        """Create the listening socket now (once); ControlSocketError if it cannot be served."""
        if self._sock is not None or self._inode is not None:
            return
        parent = Path(self.path).absolute().parent
        self._created_dir = None if parent.exists() else parent
        self._sock = _bind_listening_socket(self.path, self._group)
        st = Path(self.path).stat()
        self._inode = (st.st_dev, st.st_ino)

    def give_to(self, uid: int) -> None:
        """Make the bound socket file (and its directory, if bind() created it) owned by ``uid``, group
        unchanged, so the daemon can still remove the socket after switching to that account."""
        if self._sock is None:
            return
        paths = [Path(self.path)] + ([self._created_dir] if self._created_dir is not None else [])
        for path in paths:
            try:
                os.chown(path, uid, -1)
            except OSError as exc:
                log.warning("cannot give %s to uid %d: %s", path, uid, exc.strerror)

    def take(self) -> socket.socket:
        """The listening socket (bound first if need be), now the caller's to serve and close."""
        self.bind()
        sock, self._sock = self._sock, None
        if sock is None:
            raise ControlSocketError(f"control socket {self.path} was already taken")
        return sock

    def close(self) -> None:
        """Close the socket if nobody took it (the file stays until ``remove``)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def remove(self) -> None:
        """Remove the socket file if it is still the one bound here (a daemon started after this one may
        already own the path). Never raises: a daemon that switched to its own account may not be allowed
        to; that is logged, and the next daemon replaces the stale socket."""
        self.close()
        inode, self._inode = self._inode, None
        if inode is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == inode:
                Path(self.path).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            # One line, not an error: the daemon stopped cleanly all the same.
            log.warning(
                "cannot remove control socket %s (%s); the next daemon replaces it",
                self.path,
                exc.strerror or exc,
            )
