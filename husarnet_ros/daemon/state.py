"""The daemon's persistent state: one directory holding identity, whitelist and hosts record.

Layout (directory mode 0700, files 0600, every write atomic via ``fileio.atomic_write``)::

    identity        Husarnet format: "<ipv6> <hex public key> <hex secret key>"
    whitelist.json  {"version": 1, "enabled": true, "addresses": ["fc94:...", ...]}
    clock.json      {"version": 1, "timestamp_floor_ns": N}: handshake timestamps stay above N (restarts)
    hosts.json      {"version": 1, "entries": [{"hostname": "...", "address": "fc94:..."}]}
    base_servers.json {"version": 1, "servers": ["host:port", ...]}: written by `husarnet-ros base add|rm`;
                    once it exists it wins over the configured base servers
    static_endpoints.json {"version": 1, "endpoints": [{"address": "fc94:...", "endpoint": "host:port"}]}:
                    peers' static endpoints, written by `husarnet-ros endpoint add|rm` (and the fleet sync)
    license.json    the pinned Dashboard's license as it was served (signed; checked again when read), written
                    by `husarnet-ros setup-server`
    managed.json    {"version": 1, "installation_id": "...", "config": DeviceConfig}: the whitelist and
                    hosts Websetup last gave this device (apart from the local ones; used offline)
    lock            flock()ed by the running daemon; holds its pid for the error message

A damaged file is never replaced or "repaired": loading it is an error whose message names the
file, and the file stays as it was for the user to inspect, restore or move away. A file that cannot be
written (full or read-only file system, no permission) is a StateError naming it and saying what to do;
the atomic writer leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from ..core.base_client import base_server_name
from ..core.errors import ConfigError, HusarnetError, IdentityError
from ..core.hosts import HostEntry, canonical_entries
from ..core.identity import Identity, IdentityFileError, read_identity_file
from ..core.license import License, LicenseError, parse_license
from ..core.peer_endpoint import StaticEndpoint, check_limits
from ..core.websetup import DeviceConfig
from ..core.whitelist import Whitelist, WhitelistError
from ..fileio import FileMissingError, FileReadError, atomic_write_text, read_bounded

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity"
WHITELIST_FILE = "whitelist.json"
HOSTS_FILE = "hosts.json"
CLOCK_FILE = "clock.json"
BASE_SERVERS_FILE = "base_servers.json"
STATIC_ENDPOINTS_FILE = "static_endpoints.json"
LICENSE_FILE = "license.json"
MANAGED_FILE = "managed.json"
MANAGED_FORMAT_VERSION = 1
LOCK_FILE = "lock"
HOSTS_FORMAT_VERSION = 1
CLOCK_FORMAT_VERSION = 1
BASE_SERVERS_FORMAT_VERSION = 1
STATIC_ENDPOINTS_FORMAT_VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_STATE_FILE_SIZE = 16 << 20  # far above any real whitelist; stops a bogus huge file early


class StateError(HusarnetError):
    """The state directory or one of its files cannot be used; the message names the path."""


def _what_to_do(exc: OSError) -> str:
    """What the user can do about a failed write in the state directory, for the common causes."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "; its file system is full: free some space there, or give the daemon another --state-dir"
    if exc.errno == errno.EROFS:
        return "; its file system is read-only: remount it read-write, or give the daemon another --state-dir"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "; the daemon needs write access there: run it as root, or give it another --state-dir"
    return ""


def _cannot(action: str, path: Path, exc: OSError) -> StateError:
    return StateError(f"cannot {action} {path}: {exc.strerror or exc}{_what_to_do(exc)}")


class StateDir:
    """The daemon's state directory. Creating the object creates the directory (mode 0700) if it
    does not exist yet; an existing one is used as it is, unless it is world-writable."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        try:
            self.path.mkdir(mode=DIR_MODE, parents=True)
            self.path.chmod(DIR_MODE)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            self._check_existing_dir()
        except OSError as exc:
            raise _cannot("create state directory", self.path, exc) from None

    def _check_existing_dir(self) -> None:
        # An existing directory is never chmod-ed: --state-dir pointing at a shared directory must
        # not change that directory's permissions. World-writable would let anyone swap the key.
        try:
            st = self.path.stat()
        except OSError as exc:
            raise StateError(f"cannot use state directory {self.path}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state directory {self.path} exists but is not a directory")
        mode = stat.S_IMODE(st.st_mode)
        if mode & stat.S_IWOTH:
            raise StateError(
                f"state directory {self.path} is writable by every user (mode {mode:o}); "
                "use a directory only root can write, e.g. mode 700"
            )
        if mode & 0o077:
            log.warning(
                "state directory %s is accessible to other users (mode %o); 700 is advised", self.path, mode
            )

    # -- paths ---------------------------------------------------------------------------------

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def whitelist_path(self) -> Path:
        return self.path / WHITELIST_FILE

    @property
    def hosts_path(self) -> Path:
        return self.path / HOSTS_FILE

    @property
    def clock_path(self) -> Path:
        return self.path / CLOCK_FILE

    @property
    def base_servers_path(self) -> Path:
        return self.path / BASE_SERVERS_FILE

    @property
    def static_endpoints_path(self) -> Path:
        return self.path / STATIC_ENDPOINTS_FILE

    @property
    def license_path(self) -> Path:
        return self.path / LICENSE_FILE

    @property
    def managed_path(self) -> Path:
        return self.path / MANAGED_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    # -- lock ----------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the directory for this process; StateError if another daemon holds it.

        flock() is released by the kernel when the holder dies, so a crashed daemon never leaves a
        stale lock behind. Calling it twice on the same object is a no-op.
        """
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise _cannot("open lock file", self.lock_path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_small(fd).strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise StateError(
                    f"state directory {self.path} is in use by another husarnet-ros daemon{who}; "
                    "stop it or give this one its own --state-dir"
                ) from None
            raise StateError(f"cannot lock {self.lock_path}: {exc.strerror or exc}") from None
        try:
            # The pid is only for the message another daemon shows; writing it can still fail (full disk).
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)  # releases the lock; the (empty) lock file stays, as after unlock()
            raise _cannot("write lock file", self.lock_path, exc) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock (the lock file stays: deleting it would race with a new daemon)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def give_to(self, uid: int, gid: int) -> None:
        """Let the account ``uid``:``gid`` keep this directory current once the daemon runs as it.

        The directory, the whitelist, the hosts record and the lock file change owner; the identity
        stays root's (0600): it is read once at start, as root, and the daemon never needs it again.
        """
        paths = (
            self.whitelist_path,
            self.hosts_path,
            self.clock_path,
            self.base_servers_path,
            self.static_endpoints_path,
            self.license_path,
            self.managed_path,
            self.lock_path,
        )
        for path in (self.path, *paths):
            try:
                os.chown(path, uid, gid)
            except FileNotFoundError:
                continue  # not written yet: the daemon will create it as that account
            except OSError as exc:
                raise StateError(
                    f"cannot give {path} to uid {uid}: {exc.strerror or exc}{_what_to_do(exc)}"
                ) from None

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def __enter__(self) -> StateDir:
        self.lock()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unlock()

    # -- identity ------------------------------------------------------------------------------

    def load_identity(self) -> Identity | None:
        """The saved identity, None if there is none yet; IdentityError naming the file if corrupt,
        StateError if it cannot be read."""
        try:
            identity = read_identity_file(self.identity_path)
        except FileMissingError:
            return None
        except FileReadError as exc:
            raise StateError(str(exc)) from None
        except IdentityFileError as exc:
            raise IdentityError(
                f"identity file {self.identity_path} is corrupt ({exc.problem}); it was left untouched. "
                "Restore it from a backup, or move it away to start over with a new identity "
                "(this node's overlay address would change)"
            ) from None
        self._tighten_mode(self.identity_path, FILE_MODE)
        return identity

    def save_identity(self, identity: Identity) -> None:
        """Write ``identity`` (mode 0600, atomically), replacing any previous one."""
        self._write_text(self.identity_path, identity.to_file_text())

    def load_or_create_identity(self) -> Identity:
        """The saved identity, or a newly generated one that is saved first. Never replaces a file."""
        identity = self.load_identity()
        if identity is None:
            identity = Identity.generate()
            self.save_identity(identity)
            log.info("created a new identity in %s", self.identity_path)
        return identity

    # -- whitelist -----------------------------------------------------------------------------

    def load_whitelist(self, default_enabled: bool = True) -> Whitelist:
        """The saved whitelist; on the very first start an empty one, enabled as ``default_enabled``,
        which is saved at once so later starts keep that choice whatever the config then says."""
        text = self._read_text(self.whitelist_path)
        if text is None:
            whitelist = Whitelist(enabled=default_enabled)
            self.save_whitelist(whitelist)
            return whitelist
        try:
            return Whitelist.loads(text)
        except WhitelistError as exc:
            raise StateError(self._corrupt_message(self.whitelist_path, exc)) from None

    def save_whitelist(self, whitelist: Whitelist) -> None:
        self._write_text(self.whitelist_path, whitelist.dumps())

    # -- hosts ---------------------------------------------------------------------------------

    def load_hosts(self) -> list[HostEntry]:
        """The daemon's record of its managed hosts entries (canonical order); [] if none yet."""
        text = self._read_text(self.hosts_path)
        if text is None:
            return []
        try:
            return _hosts_from_json(json.loads(text))
        except (ValueError, RecursionError, HusarnetError) as exc:  # JSONDecodeError is a ValueError
            raise StateError(self._corrupt_message(self.hosts_path, exc)) from None

    def save_hosts(self, entries: list[HostEntry]) -> None:
        document = {
            "version": HOSTS_FORMAT_VERSION,
            "entries": [entry.to_json() for entry in canonical_entries(entries)],
        }
        self._write_text(self.hosts_path, json.dumps(document, indent=2) + "\n")

    # -- base servers --------------------------------------------------------------------------

    def load_base_servers(self) -> list[str] | None:
        """The base servers saved by ``husarnet-ros base add|rm`` (canonical names, in the user's order), or
        None if the list was never changed at run time (the configured one applies then)."""
        path = self.base_servers_path
        text = self._read_text(path)
        if text is None:
            return None
        try:
            return _base_servers_from_json(json.loads(text))
        except (ValueError, RecursionError, ConfigError) as exc:  # JSONDecodeError is a ValueError
            raise StateError(self._corrupt_message(path, exc)) from None

    def save_base_servers(self, servers: list[str]) -> None:
        document = {"version": BASE_SERVERS_FORMAT_VERSION, "servers": [base_server_name(s) for s in servers]}
        self._write_text(self.base_servers_path, json.dumps(document, indent=2) + "\n")

    # -- static endpoints ------------------------------------------------------------------------

    def load_static_endpoints(self) -> list[StaticEndpoint]:
        """The peers' static endpoints saved by ``husarnet-ros endpoint add|rm``, in the order added (none
        when never saved)."""
        path = self.static_endpoints_path
        text = self._read_text(path)
        if text is None:
            return []
        try:
            return _static_endpoints_from_json(json.loads(text))
        except (ValueError, RecursionError, ConfigError) as exc:  # JSONDecodeError is a ValueError
            raise StateError(self._corrupt_message(path, exc)) from None

    def save_static_endpoints(self, entries: list[StaticEndpoint]) -> None:
        document = {
            "version": STATIC_ENDPOINTS_FORMAT_VERSION,
            "endpoints": [entry.model_dump() for entry in entries],
        }
        self._write_text(self.static_endpoints_path, json.dumps(document, indent=2) + "\n")

    # -- the pinned license and what Websetup manages ------------------------------------------

    def load_license(self) -> License | None:
        """The pinned license (signature checked again), None if no server was set up; StateError naming
        the file if it is damaged. Its dates are the caller's to check: an expired one is still read, to say
        so."""
        path = self.license_path
        text = self._read_text(path)
        if text is None:
            return None
        try:
            return parse_license(text)
        except LicenseError as exc:
            raise StateError(
                f"state file {path} is damaged ({exc}); it was left untouched. Restore it, or move it away "
                "and run husarnet-ros setup-server ADDR again"
            ) from None

    def save_license(self, license_: License) -> None:
        self._write_text(self.license_path, license_.to_json())

    def load_managed(self) -> tuple[str, DeviceConfig] | None:
        """The installation id and the config Websetup last gave this device, None if none was saved."""
        path = self.managed_path
        text = self._read_text(path)
        if text is None:
            return None
        try:
            return _managed_from_json(json.loads(text))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and ValidationError are ValueErrors
            raise StateError(self._corrupt_message(path, exc)) from None

    def save_managed(self, installation_id: str, config: DeviceConfig) -> None:
        document = {
            "version": MANAGED_FORMAT_VERSION,
            "installation_id": installation_id,
            "config": config.model_dump(mode="json"),
        }
        self._write_text(self.managed_path, json.dumps(document, indent=2) + "\n")

    def forget_managed(self) -> None:
        """Remove the managed config (the device was released, or another installation was pinned)."""
        try:
            self.managed_path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _cannot("remove", self.managed_path, exc) from None

    # -- handshake timestamps ------------------------------------------------------------------

    def load_timestamp_floor(self) -> int:
        """The floor this node's handshake and beacon timestamps must stay above (0 if none yet): peers
        refuse a timestamp not newer than the last they saw, so it must grow across restarts even when the
        wall clock went back (a robot without a real-time clock, before NTP)."""
        path = self.clock_path
        text = self._read_text(path)
        if text is None:
            return 0
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("version") != CLOCK_FORMAT_VERSION:
                raise ValueError(f"expected {{'version': {CLOCK_FORMAT_VERSION}, 'timestamp_floor_ns': ...}}")
            floor = document.get("timestamp_floor_ns")
            if not isinstance(floor, int) or isinstance(floor, bool) or not 0 <= floor < 2**63:
                raise ValueError("'timestamp_floor_ns' must be a non-negative 64-bit integer")
        except (ValueError, RecursionError) as exc:
            raise StateError(self._corrupt_message(path, exc)) from None
        return floor

    def save_timestamp_floor(self, floor_ns: int) -> None:
        document = {"version": CLOCK_FORMAT_VERSION, "timestamp_floor_ns": floor_ns}
        self._write_text(self.clock_path, json.dumps(document) + "\n")

    # -- generic JSON documents (for other state, e.g. a license pin) --------------------------

    def load_json(self, name: str) -> Any:
        """The parsed JSON file ``name`` in the state directory, None if it does not exist."""
        path = self._child(name)
        text = self._read_text(path)
        if text is None:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise StateError(self._corrupt_message(path, exc)) from None

    def save_json(self, name: str, document: Any) -> None:
        self._write_text(self._child(name), json.dumps(document, indent=2) + "\n")

    # -- helpers -------------------------------------------------------------------------------

    def _child(self, name: str) -> Path:
        if not name or "/" in name or name in (".", "..") or name.startswith("."):
            raise StateError(f"{name!r} is not a plain file name inside the state directory")
        return self.path / name

    @staticmethod
    def _corrupt_message(path: Path, exc: BaseException) -> str:
        return (
            f"state file {path} is damaged ({exc}); it was left untouched. "
            "Fix or restore it, or move it away to start with an empty one"
        )

    @staticmethod
    def _read_text(path: Path) -> str | None:
        try:
            data = read_bounded(path, MAX_STATE_FILE_SIZE, "state file")
        except FileMissingError:
            return None
        except FileReadError as exc:
            raise StateError(str(exc)) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise StateError(
                f"state file {path} is damaged (not UTF-8 text); it was left untouched. "
                "Fix or restore it, or move it away"
            ) from None

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        try:
            atomic_write_text(path, text, FILE_MODE)
        except OSError as exc:
            raise _cannot("write", path, exc) from None

    @staticmethod
    def _tighten_mode(path: Path, mode: int) -> None:
        # Only ever removes permissions: a key readable by others must not stay that way.
        try:
            current = stat.S_IMODE(path.stat().st_mode)
            if current & ~mode:
                path.chmod(current & mode)
                log.warning("%s was accessible to other users; changed its mode to %o", path, current & mode)
        except OSError as exc:
            raise _cannot("restrict the permissions of", path, exc) from None


def _read_small(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace")
    except OSError:
        return ""


def _hosts_from_json(document: object) -> list[HostEntry]:
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object with 'version' and 'entries'")
    if document.get("version") != HOSTS_FORMAT_VERSION:
        raise ValueError(f"format version {document.get('version')!r} is not supported")
    unknown = set(document) - {"version", "entries"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    entries = document.get("entries", [])
    if not isinstance(entries, list):
        raise ValueError("'entries' must be a list")
    return canonical_entries(HostEntry.from_json(item) for item in entries)


def _base_servers_from_json(document: object) -> list[str]:
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object with 'version' and 'servers'")
    if document.get("version") != BASE_SERVERS_FORMAT_VERSION:
        raise ValueError(f"format version {document.get('version')!r} is not supported")
    unknown = set(document) - {"version", "servers"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    servers = document.get("servers")
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise ValueError("'servers' must be a list of strings")
    names: list[str] = []
    for server in servers:
        name = base_server_name(server)
        if name not in names:
            names.append(name)
    return names


def _static_endpoints_from_json(document: object) -> list[StaticEndpoint]:
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object with 'version' and 'endpoints'")
    if document.get("version") != STATIC_ENDPOINTS_FORMAT_VERSION:
        raise ValueError(f"format version {document.get('version')!r} is not supported")
    unknown = set(document) - {"version", "endpoints"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    items = document.get("endpoints")
    if not isinstance(items, list):
        raise ValueError("'endpoints' must be a list")
    entries: dict[tuple[str, str], StaticEndpoint] = {}
    for index, item in enumerate(items):
        try:
            entry = StaticEndpoint.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise ValueError(f"endpoints[{index}]: {problems}") from None
        entries.setdefault(entry.key, entry)
    result = list(entries.values())
    check_limits(result)
    return result


def _managed_from_json(document: object) -> tuple[str, DeviceConfig]:
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object with 'version', 'installation_id' and 'config'")
    if document.get("version") != MANAGED_FORMAT_VERSION:
        raise ValueError(f"format version {document.get('version')!r} is not supported")
    unknown = set(document) - {"version", "installation_id", "config"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    installation = document.get("installation_id")
    if not isinstance(installation, str) or not installation:
        raise ValueError("'installation_id' must be text")
    try:
        config = DeviceConfig.model_validate(document.get("config"))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()[:3]
        )
        raise ValueError(f"config: {problems}") from None
    return installation, config
