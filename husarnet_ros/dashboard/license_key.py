"""The installation's Ed25519 license key (``<data-dir>/license.key``) and the license it signs.

The key is made on first start and never changes: daemons pin it (docs/CONTROL_PLANE.md, "license.json"), so
losing it means every daemon must be pointed at the new one with ``setup-server --replace --fingerprint``.
The file holds the 32-byte seed in base64, mode 0600, written to a temporary file and linked into place, so a
reader never sees half a key and two processes starting at once end up with the same one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
import tempfile
from datetime import datetime
from pathlib import Path

from nacl.signing import SigningKey

from ..core.errors import HusarnetError
from ..core.license import License, LicenseError, issue_license
from ..fileio import FileMissingError, FileReadError, read_bounded
from .settings import DashboardSettings

LICENSE_KEY_FILE = "license.key"
SEED_SIZE = 32
_MAX_FILE_SIZE = 1024


class LicenseKeyError(HusarnetError):
    """The license key file cannot be read, written, or is not a key: the message says what to do."""


def license_key_path(data_dir: Path) -> Path:
    return data_dir / LICENSE_KEY_FILE


def load_or_create_license_key(data_dir: Path) -> SigningKey:
    """The installation's key, created (with its directory) if there is none yet."""
    path = license_key_path(data_dir)
    try:
        return _load(path)
    except FileMissingError:
        pass
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create(path, SigningKey.generate())
    except OSError as exc:
        raise LicenseKeyError(
            f"cannot create the license key {path}: {exc.strerror or exc}; check --data-dir and its "
            "permissions"
        ) from None
    return _load(path)


def load_license_key(data_dir: Path) -> SigningKey:
    """The existing key; LicenseKeyError if there is none (the Dashboard has never started here)."""
    path = license_key_path(data_dir)
    try:
        return _load(path)
    except FileMissingError:
        raise LicenseKeyError(
            f"no license key at {path}: start the Dashboard once (husarnet-ros dashboard serve) or check "
            "--data-dir"
        ) from None


def _load(path: Path) -> SigningKey:
    try:
        data = read_bounded(path, _MAX_FILE_SIZE, "license key")
    except FileMissingError:
        raise
    except FileReadError as exc:
        raise LicenseKeyError(f"{exc}: check the file and its permissions") from None
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LicenseKeyError(
            f"license key {path} can be read by other users (mode {stat.S_IMODE(mode):o}): run "
            f"chmod 600 {path}"
        )
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != SEED_SIZE:
        raise LicenseKeyError(
            f"license key {path} is corrupt (not {SEED_SIZE} bytes of base64): restore it from a backup. "
            "Only if it is lost for good, delete it: a new key is made at start, and every daemon must "
            "then run husarnet-ros setup-server --replace --fingerprint NEW"
        )
    return SigningKey(seed)


def _create(path: Path, key: SigningKey) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(base64.b64encode(bytes(key)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        # link, not rename: it fails if the file exists, so a key another process made first is kept.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def current_license(
    settings: DashboardSettings, key: SigningKey, installation_id: str, now: datetime
) -> License:
    """The license this Dashboard serves, issued ``now`` and valid for the configured time."""
    if settings.websetup_address is None:
        raise LicenseError(
            "no Websetup address is configured, so daemons could not be managed: start the Dashboard with "
            "--websetup-address (the fc94 address of the server's daemon)"
        )
    issued = now.replace(microsecond=0)
    return issue_license(
        key,
        installation_id=installation_id,
        name=settings.name,
        dashboard_url=settings.public_url,
        base_servers=list(settings.base_servers),
        websetup_address=settings.websetup_address,
        websetup_port=settings.websetup_port,
        max_devices=settings.max_devices,
        issued=issued,
        valid_until=issued + settings.license_validity,
    )
