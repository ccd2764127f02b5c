"""A SIGTERM to `ros2 launch husarnet_ros robot.launch.py start_daemon:=true` ends the daemon and nodes too.

`docker stop`, systemd and a plain `kill` send SIGTERM, on which upstream launch exits at once without
stopping its children. The launch file has each child ask the kernel for a SIGTERM when the launch exits
(husarnet_ros.exit_with_parent), so: every process the launch started is gone within a few seconds, and
``hnet0`` with them.

The launch runs in a lab namespace (root: the daemon creates hnet0 there) with this working tree's code
first on PYTHONPATH. Every process it started is recorded and killed by PID in a finalizer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import husarnet_ros
from husarnet_ros.client import ClientError, ControlClient
from husarnet_ros.testing.netlab import Lab, wait_until
from husarnet_ros.testing.ros_launch import RobotLaunch, private_domain_id

pytestmark = [pytest.mark.integration, pytest.mark.ros]

NODE_EXECUTABLES = ("peers-node", "whitelist-node", "hosts-node", "dds-node")  # husarnet-ros-<name>
START_S = 60.0  # bound for the daemon to answer and the four nodes to run
GONE_WITHIN_S = 5.0  # what the product promises: children end within a few seconds of the launch
TREE = str(Path(husarnet_ros.__file__).resolve().parent.parent)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1]); None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(")")[2].split()


def _running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has ended


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    pending, found = _children(pid), []
    while pending:
        child = pending.pop()
        found.append(child)
        pending += _children(child)
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.fixture
def robot(lab: Lab) -> Iterator[RobotLaunch]:
    (host,) = lab.lan(1, labels=["robot-a"])
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-lifetime-", dir="/tmp"))
    workdir.chmod(0o711)  # the daemon, once it runs as its own account, must still reach state/
    (workdir / "state").mkdir(mode=0o700)
    (workdir / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    pythonpath = os.pathsep.join(filter(None, [TREE, os.environ.get("PYTHONPATH")]))
    launch = RobotLaunch(
        "robot-a", host, workdir, private_domain_id(53), extra_env={"PYTHONPATH": pythonpath}
    )
    try:
        yield launch
    finally:
        launch.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _daemon_answers(socket_path: str) -> bool:
    try:
        with ControlClient(socket_path, timeout_s=2.0) as client:
            client.status()
            return True
    except ClientError:
        return False


def test_sigterm_to_the_launch_ends_the_daemon_and_the_nodes(robot: RobotLaunch) -> None:
    control_socket = str(robot.workdir / "ctl.sock")
    robot.start(
        "robot.launch.py",
        {
            "start_daemon": "true",
            "hostname": "robot-a",
            "control_socket": control_socket,
            "state_dir": str(robot.workdir / "state"),
            "hosts_file": str(robot.workdir / "hosts"),
            "dds_output_dir": str(robot.workdir / "dds"),
        },
    )
    assert robot.process is not None
    launch_pid = robot.process.pid
    started: set[int] = set()
    try:

        def everything_up() -> dict[str, int] | None:
            if robot.process is not None and robot.process.poll() is not None:
                raise AssertionError(f"the launch exited early:\n{robot.log()[-4000:]}")
            children = _children(launch_pid)
            started.update(_descendants(launch_pid))
            by_role: dict[str, int] = {}
            for pid in children:
                command = _command_line(pid)
                if " daemon" in command and "husarnet-ros" in command:
                    by_role["daemon"] = pid
                for name in NODE_EXECUTABLES:
                    if f"husarnet-ros-{name}" in command:
                        by_role[name] = pid
            complete = len(by_role) == 1 + len(NODE_EXECUTABLES) and _daemon_answers(control_socket)
            return by_role if complete else None

        roles = wait_until(everything_up, START_S, interval=0.2, what="the daemon and the four nodes")
        assert robot.host.interface_exists("hnet0")
        everything = set(_descendants(launch_pid))  # also the daemon's hosts helper
        started |= everything

        os.kill(launch_pid, signal.SIGTERM)  # what `docker stop` / `kill` sends; only to the launch itself
        robot.process.wait(timeout=GONE_WITHIN_S)

        deadline = time.monotonic() + GONE_WITHIN_S

        def left(pids: set[int]) -> set[int]:
            while time.monotonic() < deadline and any(_running(pid) for pid in pids):
                time.sleep(0.05)
            return {pid for pid in pids if _running(pid)}

        nodes = {pid for role, pid in roles.items() if role != "daemon"}
        assert left(nodes) == set(), (
            f"nodes outlived the SIGTERMed launch by {GONE_WITHIN_S:.0f} s: "
            + ", ".join(f"{pid} ({_command_line(pid)[:80]})" for pid in left(nodes))
        )
        # Needs the daemon to call husarnet_ros.exit_with_parent.exit_with_parent_if_asked() once it has
        # dropped root (daemon/service.py): a uid change clears the parent-death signal.
        assert left({roles["daemon"]}) == set(), "the daemon outlived the SIGTERMed launch (hnet0 stays up)"
        assert left(everything) == set(), "a process the launch started outlived it"
        assert not robot.host.interface_exists("hnet0"), "hnet0 outlived the SIGTERMed launch"
    finally:
        for pid in started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
