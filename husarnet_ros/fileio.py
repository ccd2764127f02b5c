"""Crash-safe file replacement: a reader sees either the whole old file or the whole new one.

The new content goes to a temporary file in the same directory (so ``os.replace`` is an atomic
rename on the same filesystem), is fsynced, gets its final mode *before* the rename (so the
file is never visible with looser permissions), replaces the target, and finally the directory
is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(
    path: Path | str,
    data: bytes,
    mode: int = 0o644,
    *,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically, with permission bits ``mode``.

    ``owner`` is an optional ``(uid, gid)`` applied before the rename (used to keep the owner
    of a file such as /etc/hosts). On any error the temporary file is removed, the old file is
    left untouched and the original exception propagates.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            # fchmod/fchown on the open descriptor: no window where another process could swap the path.
            os.fchmod(tmp.fileno(), mode)
            if owner is not None:
                os.fchown(tmp.fileno(), owner[0], owner[1])
            os.fsync(tmp.fileno())
        tmp_path.replace(target)  # os.replace: atomic within one filesystem
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def atomic_write_text(
    path: Path | str,
    text: str,
    mode: int = 0o644,
    *,
    encoding: str = "utf-8",
    owner: tuple[int, int] | None = None,
) -> None:
    """``atomic_write`` for text. No newline translation: the caller's line endings are kept."""
    atomic_write(path, text.encode(encoding), mode, owner=owner)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable. Some filesystems refuse fsync on a directory; the data itself
    # is already safe then, so that is not worth failing a write that has happened.
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
