"""Make helper modules beside the unit tests (fixed_identities) importable under --import-mode=importlib."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.testing.memnet_daemon import MemNetFleet

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory under /tmp that any account may enter (pytest's tmp_path sits below a 0700 one), so that
    a refusal seen by an unprivileged process comes from the mode of the file or directory under test."""
    path = Path(tempfile.mkdtemp(prefix="hr-open-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fleet() -> Iterator[MemNetFleet]:
    """Real daemon controllers on the in-memory network, pumped in real time (testing.memnet_daemon)."""
    with MemNetFleet() as fleet:
        yield fleet
