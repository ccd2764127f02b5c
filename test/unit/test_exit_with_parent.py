"""husarnet_ros.exit_with_parent: a process started with the variable ends when its parent ends.

The real thing runs in child processes (the prctl would otherwise tie this pytest process to its own
parent): a middle process starts a child with the variable naming the middle process, then exits
without stopping it; the child must be gone within a few seconds. Every process started here is
killed by PID in a finalizer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.core.errors import ConfigError
from husarnet_ros.exit_with_parent import (
    EXIT_WITH_PARENT_ENV,
    child_environment,
    exit_with_parent_if_asked,
)

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 5.0

# Started by MIDDLE: asks to end with its parent, says so, then would live for 60 s.
CHILD = textwrap.dedent(
    """
    import sys, time
    from husarnet_ros.exit_with_parent import exit_with_parent_if_asked
    print("asked" if exit_with_parent_if_asked() else "not asked", flush=True)
    time.sleep(60)
    """
)
# Starts CHILD with the variable naming itself (as the launch files do), prints the child's pid and what the
# child said, then exits at once without touching the child: what a SIGTERMed `ros2 launch` does.
MIDDLE = textwrap.dedent(
    """
    import os, subprocess, sys
    from husarnet_ros.exit_with_parent import child_environment
    env = os.environ | (child_environment() if sys.argv[1] == "ask" else {})
    argv = [sys.executable, "-c", sys.argv[2]]
    # Only the child's stdout comes back here: the test reads the middle's output until EOF.
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    print(child.pid, child.stdout.readline().strip(), flush=True)
    os._exit(0)
    """
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != EXIT_WITH_PARENT_ENV}
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")


@pytest.fixture
def started() -> Iterator[list[int]]:
    """PIDs of grandchildren a test made; killed at the end whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _orphan(mode: str, started: list[int]) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-c", MIDDLE, mode, CHILD], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    pid_text, said = result.stdout.split(maxsplit=1)
    started.append(int(pid_text))
    return int(pid_text), said.strip()


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_child_that_asked_ends_when_its_parent_exits(started: list[int]) -> None:
    pid, said = _orphan("ask", started)
    assert said == "asked"
    assert _gone_within(pid, GONE_WITHIN_S), f"child {pid} outlived its parent by {GONE_WITHIN_S:.0f} s"


def test_a_child_that_was_not_asked_is_left_alone(started: list[int]) -> None:
    pid, said = _orphan("plain", started)
    assert said == "not asked"
    assert not _gone_within(pid, 1.0), "a process started without the variable was ended with its parent"


def test_a_parent_gone_before_the_call_is_noticed() -> None:
    # The race the prctl cannot cover: the launch died between fork and the call. Simulated with the pid
    # of a process that has already exited (and is not this child's parent).
    ended = subprocess.Popen(["true"])
    ended.wait(timeout=30)
    program = "from husarnet_ros.exit_with_parent import exit_with_parent_if_asked as f; f(); print('ran')"
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=_env() | child_environment(ended.pid),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ran" not in result.stdout
    assert f"(pid {ended.pid}) has already exited" in result.stderr


def test_without_the_variable_nothing_happens() -> None:
    assert exit_with_parent_if_asked({}) is False
    assert exit_with_parent_if_asked({EXIT_WITH_PARENT_ENV: ""}) is False


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1", "12 34", "x" * 10_000])
def test_a_malformed_variable_is_a_short_clear_error(value: str) -> None:
    with pytest.raises(ConfigError, match=EXIT_WITH_PARENT_ENV) as error:
        exit_with_parent_if_asked({EXIT_WITH_PARENT_ENV: value})
    assert len(str(error.value)) < 300  # the value is quoted, not echoed whole


def test_child_environment_names_this_process() -> None:
    assert child_environment() == {EXIT_WITH_PARENT_ENV: str(os.getpid())}
    assert child_environment(1234) == {EXIT_WITH_PARENT_ENV: "1234"}
