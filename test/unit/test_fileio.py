"""atomic_write: content, permissions, and the old file surviving every failure (on a real full file
system: test/integration/test_full_disk.py). read_bounded: the limit, and an error naming the file for every
failure."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from husarnet_ros import fileio
from husarnet_ros.core.errors import HusarnetError
from husarnet_ros.fileio import (
    FileMissingError,
    FileReadError,
    atomic_write,
    atomic_write_text,
    read_bounded,
    read_bounded_text,
)
from husarnet_ros.testing.unprivileged import run_unprivileged


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_new_file_with_content_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"hello", 0o600)
    assert target.read_bytes() == b"hello"
    assert _mode(target) == 0o600


def test_default_mode_is_0644_regardless_of_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == 0o644


def test_replaces_existing_file_and_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content that is longer")
    target.chmod(0o666)
    atomic_write(target, b"new", 0o640)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o640


def test_accepts_str_path(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "f"), b"x")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_no_temp_files_left_after_success(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """The only file in its directory, whose content a failed write must leave as it is."""
    target = tmp_path / "f"
    target.write_bytes(b"precious")
    return target


def _assert_only_the_old_file(target: Path) -> None:
    assert target.read_bytes() == b"precious"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left behind


def test_failed_replace_keeps_old_file_and_removes_temp(
    precious: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(self: Path, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.Path, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write(precious, b"new")
    _assert_only_the_old_file(precious)


def test_failed_write_keeps_old_file_and_removes_temp(
    precious: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(fileio.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(precious, b"new")
    _assert_only_the_old_file(precious)


def test_bad_data_type_keeps_old_file(precious: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write(precious, "not bytes")  # type: ignore[arg-type]
    _assert_only_the_old_file(precious)


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nope" / "f", b"x")


def test_text_keeps_line_endings_and_unicode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write_text(target, "a\r\nb\nżółw — ok", 0o600)
    assert target.read_bytes() == "a\r\nb\nżółw — ok".encode()
    assert _mode(target) == 0o600


def test_owner_is_applied(tmp_path: Path) -> None:
    target = tmp_path / "f"
    uid, gid = os.getuid(), os.getgid()
    atomic_write(target, b"x", owner=(uid, gid))
    assert (target.stat().st_uid, target.stat().st_gid) == (uid, gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owner needs root")
def test_owner_can_be_changed_by_root(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"x", owner=(1234, 5678))
    assert (target.stat().st_uid, target.stat().st_gid) == (1234, 5678)


# --- read_bounded ---------------------------------------------------------------------------------


def test_read_bounded_reads_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10, "test file") == b"x" * 10
    assert read_bounded(str(path), 11, "test file") == b"x" * 10


def test_read_bounded_refuses_a_larger_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    with pytest.raises(FileReadError, match=rf"^test file {path} is larger than 10 bytes$") as info:
        read_bounded(path, 10, "test file")
    assert info.value.path == path


def test_read_bounded_reads_no_more_than_the_limit_of_an_endless_file() -> None:
    with pytest.raises(FileReadError, match="larger than 4096 bytes"):
        read_bounded("/dev/zero", 4096, "device")


def test_read_bounded_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none"
    with pytest.raises(FileMissingError, match=rf"^cannot read config file {path}: ") as info:
        read_bounded(path, 10, "config file")
    assert isinstance(info.value, HusarnetError)  # the CLI prints it as one line


def test_read_bounded_directory(tmp_path: Path) -> None:
    with pytest.raises(FileReadError, match=rf"^cannot read config file {tmp_path}: ") as info:
        read_bounded(tmp_path, 10, "config file")
    assert not isinstance(info.value, FileMissingError)


def test_read_bounded_unreadable_file(open_dir: Path) -> None:
    path = open_dir / "secret"
    path.write_bytes(b"x")
    path.chmod(0o000)
    with pytest.raises(FileReadError, match=rf"^cannot read key file {path}: "):
        run_unprivileged(lambda: read_bounded(path, 10, "key file"))


def test_read_bounded_text(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes("żółw\n".encode())
    assert read_bounded_text(path, 100, "text file") == "żółw\n"
    path.write_bytes(b"ok \xff")
    with pytest.raises(
        FileReadError, match=rf"^text file {path} is not utf-8 text \(byte 3 cannot be decoded\)$"
    ):
        read_bounded_text(path, 100, "text file")
    assert read_bounded_text(path, 100, "text file", errors="replace") == "ok \ufffd"
    assert (
        read_bounded_text(path, 100, "text file", errors="surrogateescape").encode("utf-8", "surrogateescape")
        == b"ok \xff"
    )


def test_read_errors_survive_pickling(tmp_path: Path) -> None:
    for error in (FileReadError("message", tmp_path), FileMissingError("gone", tmp_path)):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), str(again), again.path) == (type(error), str(error), error.path)
