"""Servers that server.launch.py starts end with the launch however it ends (not only on Ctrl-C).

The launch gives each child HUSARNET_ROS_EXIT_WITH_PARENT=<its pid>; here a stand-in parent starts the server
with that variable and is then killed outright (as SIGKILL or a SIGTERM that skips launch's own clean-up
would): the server must go too. Loopback only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.exit_with_parent import EXIT_WITH_PARENT_ENV

pytestmark = [pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
# Starts the command it is given with the variable naming itself, prints the child's pid, then waits.
STAND_IN_LAUNCH = f"""
import os, subprocess, sys, time
env = {{**os.environ, "{EXIT_WITH_PARENT_ENV}": str(os.getpid())}}
child = subprocess.Popen(sys.argv[1:], env=env)
print(child.pid, flush=True)
time.sleep(120)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def husarnet_ros(*args: str) -> list[str]:
    return [sys.executable, "-m", "husarnet_ros.cli.main", *args]


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids of servers a test started through a stand-in; killed at the end if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def run_under_stand_in(argv: list[str], listening: tuple[str, int], pids: list[int]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", STAND_IN_LAUNCH, *argv], stdout=subprocess.PIPE, text=True, env=env
    )
    assert parent.stdout is not None
    pids.append(int(parent.stdout.readline()))
    deadline = time.monotonic() + 30
    while True:
        with socket.socket(socket.AF_INET6 if ":" in listening[0] else socket.AF_INET) as probe:
            if probe.connect_ex(listening) == 0:
                break
        assert alive(pids[-1]), f"{argv[3]} exited before it listened"
        assert time.monotonic() < deadline, f"{argv[3]} did not listen within 30 s"
        time.sleep(0.1)
    return parent


def assert_ends_with(parent: subprocess.Popen[str], pid: int) -> None:
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the server outlived the launch that started it"
        time.sleep(0.1)


def test_a_base_server_ends_with_its_launch(started: list[int]) -> None:
    port = free_port()
    argv = husarnet_ros(
        "base-server", "--listen", "127.0.0.1", "--udp-port", str(port), "--tcp-port", str(port)
    )
    parent = run_under_stand_in(argv, ("127.0.0.1", port), started)
    assert_ends_with(parent, started[-1])


def test_websetup_ends_with_its_launch(started: list[int], tmp_path: Path) -> None:
    port = free_port()
    argv = husarnet_ros("websetup", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path))
    parent = run_under_stand_in(argv, ("127.0.0.1", port), started)
    assert_ends_with(parent, started[-1])


def test_the_dashboard_ends_with_its_launch(started: list[int], tmp_path: Path) -> None:
    port = free_port()
    argv = husarnet_ros("dashboard", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path))
    parent = run_under_stand_in(argv, ("127.0.0.1", port), started)
    assert_ends_with(parent, started[-1])
