"""The project's file reading and writing rules, each in one place.

Reading: ``read_bounded`` reads at most a given number of bytes (a file that is larger is refused, never
truncated or read whole), and every failure is a :class:`FileReadError` whose message names what the file is
and where it is, so each caller only adds what its user should do about it.

Writing: crash-safe file replacement: a reader sees either the whole old file or the whole new one.
The new content goes to a temporary file in the same directory (so ``os.replace`` is an atomic
rename on the same filesystem), is fsynced, gets its final mode *before* the rename (so the
file is never visible with looser permissions), replaces the target, and finally the directory
is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .core.errors import HusarnetError


class FileReadError(HusarnetError):
    """A file that cannot be read, or is larger than its limit; the message names what it is and its path."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[type[FileReadError], tuple[str, Path]]:
        # Keeps the error picklable (it crosses process boundaries in tests) despite the extra argument.
        return (type(self), (str(self), self.path))


class FileMissingError(FileReadError):
    """The file does not exist (callers that treat "none yet" as normal catch this one)."""


def read_bounded(path: Path | str, limit: int, what: str) -> bytes:
    """The content of ``path``, at most ``limit`` bytes; ``what`` says what the file is, for the message.

    FileMissingError if it does not exist, FileReadError if it cannot be read (a directory, no permission,
    an I/O error) or is larger than ``limit``: a bigger file is the wrong file (or an attack on the parser),
    and reading only the first ``limit`` bytes would silently use part of it.
    """
    target = Path(path)
    try:
        with target.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        message = f"cannot read {what} {target}: {exc.strerror or exc}"
        if exc.errno == errno.ENOENT:
            raise FileMissingError(message, target) from None
        raise FileReadError(message, target) from None
    if len(data) > limit:
        raise FileReadError(f"{what} {target} is larger than {limit} bytes", target)
    return data


def read_bounded_text(
    path: Path | str, limit: int, what: str, *, encoding: str = "utf-8", errors: str = "strict"
) -> str:
    """``read_bounded`` decoded as ``encoding``; with ``errors="strict"`` undecodable bytes are a
    FileReadError too (other ``errors`` handlers, e.g. "replace", decide themselves)."""
    data = read_bounded(path, limit, what)
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        raise FileReadError(
            f"{what} {path} is not {encoding} text (byte {exc.start} cannot be decoded)", Path(path)
        ) from None


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
