"""A robot's ROS 2 side in a lab namespace: `ros2 launch husarnet_ros ...` as a user runs it, and its DDS env.

Used by the demo and the end-to-end tests::

    robot = RobotLaunch(name="robot-a", host=host, workdir=tmp, domain_id=42)
    robot.start("robot.launch.py", {"start_daemon": "false", "control_socket": sock, ...})
    env = robot.wait_for_exports(timeout=60)       # the `export` lines the launch printed
    host.run([...], env=robot.user_env())          # a user's own node, with that environment
    robot.stop()                                   # SIGINT, then SIGKILL of its whole session

The launch runs in a session of its own, so stopping it takes down every process it started (daemon, nodes).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lab_daemon import husarnet_ros_env
from .netlab import Host, LabError, wait_until

ROS2 = str(Path(sys.executable).parent / "ros2")
EXPORT_RE = re.compile(r"^export ([A-Z_][A-Z0-9_]*)=(\S+)$", re.MULTILINE)
STOP_TIMEOUT_S = 15.0  # a launch gets this long to stop its daemon and nodes after SIGINT
# ROS_DOMAIN_IDs 1..100: inside the range whose DDS ports (7400 + 250 * id + ...) stay below Linux's ephemeral
# ports (32768+), so a test's participant never collides with a port the kernel handed out; 0 is the default
# every other ROS process on the machine uses.
FIRST_TEST_DOMAIN, TEST_DOMAINS = 1, 100


def private_domain_id(salt: int = 0) -> int:
    """A ROS_DOMAIN_ID for this test process (and ``salt``), so concurrent test runs do not see each other."""
    return FIRST_TEST_DOMAIN + (os.getpid() + salt) % TEST_DOMAINS


# Settings a user's shell may carry that would change what the launch and the nodes do.
_FOREIGN_PREFIXES = ("ROS_", "RMW_", "FASTDDS_", "FASTRTPS_", "CYCLONEDDS_", "HUSARNET_ROS_")


@dataclass
class RobotLaunch:
    name: str
    host: Host
    workdir: Path
    domain_id: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    dds_env: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)  # added to the launch's environment

    @property
    def log_path(self) -> Path:
        return self.workdir / "launch.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no launch log)"

    def base_env(self) -> dict[str, str]:
        """This process's environment without ROS / DDS settings, plus the robot's domain and directories."""
        # The husarnet_ros this process imports (the working tree under pytest) first on the path, as for the
        # lab daemons: the launch's nodes and daemon run the code under test, not an older installed copy.
        env = {k: v for k, v in husarnet_ros_env().items() if not k.startswith(_FOREIGN_PREFIXES)}
        return env | {
            "ROS_DOMAIN_ID": str(self.domain_id),
            "ROS_LOG_DIR": str(self.workdir / "ros-log"),
            "ROS_HOME": str(self.workdir / "ros-home"),
        } | self.extra_env

    def user_env(self) -> dict[str, str]:
        """What a user of this robot has after pasting the launch's `export` lines."""
        return self.base_env() | self.dds_env

    def start(self, launch_file: str, arguments: dict[str, str]) -> None:
        argv = [ROS2, "launch", "husarnet_ros", launch_file, *(f"{k}:={v}" for k, v in arguments.items())]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.started = time.time()
            self.process = self.host.popen(
                argv, env=self.base_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_for_exports(self, timeout: float) -> dict[str, str]:
        """The DDS environment the launch printed; LabError with the launch log if it did not in time."""

        def printed() -> dict[str, str] | None:
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"launch of {self.name} exited early:\n{self.log()[-4000:]}")
            found = dict(EXPORT_RE.findall(self.log()))
            return found if "FASTDDS_DEFAULT_PROFILES_FILE" in found else None

        try:
            self.dds_env = wait_until(printed, timeout, interval=0.1, what=f"the DDS exports of {self.name}")
        except LabError as exc:
            raise LabError(f"{exc}\n{self.log()[-4000:]}") from None
        return self.dds_env

    def stop(self) -> None:
        """SIGINT the launch (it stops what it started), then SIGKILL its session if anything is left."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT_S)
        # The launch ran in a session of its own: its group is the launch and everything it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        subprocess.run(
            self.host.exec_argv([ROS2, "daemon", "stop"]),
            env=self.user_env(),
            capture_output=True,
            timeout=30,
            check=False,
        )
