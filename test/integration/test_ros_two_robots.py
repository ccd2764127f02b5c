"""End to end, as a user would run it: two robots from one fleet file, each `ros2 launch` starting its daemon.

Two network namespaces on one LAN; identities are generated first (`husarnet-ros genid` into each state
directory) so the fleet file can list both addresses before anything runs. Multicast is dropped on the
underlay (only the daemon's beacons pass), so ROS 2 discovery has to be unicast over hnet0.

- robot-a: ``ros2 launch husarnet_ros fleet.launch.py fleet:=F robot:=robot-a start_daemon:=true ...``
- robot-b: ``ros2 launch husarnet_ros robot.launch.py fleet:=F robot:=robot-b start_daemon:=true ...``

Then a plain rclpy talker (std_msgs/String) on robot-a and a listener on robot-b, both with the `export`
lines their launch printed, must exchange messages; the time from the launches to the first message is
printed. From the command line on robot-b with that environment: `ros2 topic echo --once` of the peers
topic and `ros2 service call .../add_peer` with a valid and an invalid address.

Uses the INSTALLED package (share/husarnet_ros/launch, lib/husarnet_ros): refresh it with scripts/setup.sh.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from husarnet_ros.client import ClientError, ControlClient
from husarnet_ros.testing.lab_daemon import husarnet_ros_command
from husarnet_ros.testing.netlab import Lab, wait_until
from husarnet_ros.testing.ros_launch import ROS2, RobotLaunch, private_domain_id

pytestmark = [pytest.mark.integration, pytest.mark.ros]

DOMAIN_ID = private_domain_id(31)
LAUNCH_READY_S = 60.0  # bound for a launch to print its DDS environment
PATH_S = 30.0  # bound for the daemons to find a direct path
RUN_S = 60.0  # the talker publishes at most this long
LISTEN_S = 45.0  # the listener gives up after this long

# The same plain rclpy nodes a user would run (husarnet_ros/testing/chatter.py), bounded in time.
CHATTER = [sys.executable, "-m", "husarnet_ros.testing.chatter"]
TALKER = [*CHATTER, "talk", "--seconds", str(RUN_S)]
LISTENER = [*CHATTER, "listen", "--seconds", str(LISTEN_S), "--count", "5"]


@dataclass
class Robot(RobotLaunch):
    """A robot's launch (RobotLaunch: start, wait_for_exports, user_env, stop), files and identity."""

    address: str = ""
    namespace: str = ""

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def control_socket(self) -> str:
        return str(self.workdir / "ctl.sock")


def _generate_identity(robot: Robot) -> None:
    robot.state_dir.mkdir(mode=0o700)
    out = subprocess.run(
        [*husarnet_ros_command(), "genid", "--output", str(robot.state_dir / "identity"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    robot.address = json.loads(out)["address"]


@pytest.fixture
def robots(lab: Lab) -> Iterator[tuple[Robot, Robot, Path]]:
    """Two robots with identities, their fleet file, multicast dropped; launches stopped on teardown."""
    hosts = lab.lan(2)
    made: list[Robot] = []
    try:
        for name, host in zip(("robot-a", "robot-b"), hosts, strict=True):
            workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-{name}-", dir="/tmp"))
            workdir.chmod(0o711)  # the daemon, once it runs as its own account, must still reach state/
            (workdir / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
            robot = Robot(name, host, workdir, DOMAIN_ID)
            made.append(robot)
            _generate_identity(robot)
        a, b = made
        fleet = a.workdir / "fleet.yaml"
        fleet.write_text(
            "robots:\n"
            f"  robot-a: {{address: '{a.address}', namespace: robot_a}}\n"
            f"  robot-b: {{address: '{b.address}', namespace: robot_b}}\n"
        )
        a.namespace, b.namespace = "/robot_a", "/robot_b"
        for host in hosts:
            host.drop_multicast(keep_discovery=True)
        yield a, b, fleet
    finally:
        for robot in made:
            robot.stop()
            shutil.rmtree(robot.workdir, ignore_errors=True)


def _launch(robot: Robot, launch_file: str, fleet: Path) -> None:
    robot.start(
        launch_file,
        {
            "fleet": str(fleet),
            "robot": robot.name,
            "start_daemon": "true",
            "control_socket": robot.control_socket,
            "state_dir": str(robot.state_dir),
            "hosts_file": str(robot.workdir / "hosts"),
            "dds_output_dir": str(robot.workdir / "dds"),
        },
    )


def _direct_path(robot: Robot, peer: str) -> bool:
    try:
        with ControlClient(robot.control_socket, timeout_s=2.0) as client:
            return any(p.address == peer and p.path == "direct" for p in client.peers())
    except ClientError:
        return False


def _ros2(robot: Robot, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return robot.host.run([ROS2, *args], env=robot.user_env(), check=False, timeout=timeout)


def _echo_once(robot: Robot, topic: str) -> str:
    """`ros2 topic echo --once TOPIC` on ``robot`` with its printed environment; the message text."""
    argv = ["topic", "echo", "--once", "--no-daemon", "--timeout", "30", topic, "husarnet_ros/msg/PeerArray"]
    result = _ros2(robot, *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout, (
        f"nothing on {topic} within 30 s\n--- {robot.name} launch ---\n{robot.log()[-6000:]}"
    )
    return result.stdout


def test_two_robots_talk_over_the_overlay_with_what_the_launch_printed(
    robots: tuple[Robot, Robot, Path],
) -> None:
    a, b, fleet = robots
    _launch(a, "fleet.launch.py", fleet)
    _launch(b, "robot.launch.py", fleet)
    for robot in (a, b):
        robot.wait_for_exports(LAUNCH_READY_S)
        assert robot.dds_env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
        profile = Path(robot.dds_env["FASTDDS_DEFAULT_PROFILES_FILE"])
        assert profile.is_file()
        # Fast DDS 2.x (Humble, Jazzy) reads only this name: the printed lines must carry it too.
        assert robot.dds_env["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(profile)
        peer = b if robot is a else a
        assert f"<address>{peer.address}</address>" in profile.read_text()  # the fleet gave the DDS peer
        assert (robot.workdir / "dds" / "env.sh").read_text().count("export ") == len(robot.dds_env)
    exports_at = time.time()
    wait_until(lambda: _direct_path(a, b.address) and _direct_path(b, a.address), PATH_S, interval=0.2,
               what="a direct path both ways (whitelists from the fleet file)")  # fmt: skip
    direct_at = time.time()

    talker = a.host.popen(
        TALKER, env=a.user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        result = b.host.run(
            LISTENER, env=b.user_env(), check=False, timeout=LISTEN_S + 30
        )
        assert result.returncode == 0, f"listener failed: {result.stderr[-3000:]}"
        heard = json.loads(result.stdout.strip().splitlines()[-1])
        assert heard["count"] > 0, (
            f"no message from robot-a reached robot-b\n--- robot-a launch ---\n{a.log()[-3000:]}\n"
            f"--- robot-b launch ---\n{b.log()[-3000:]}"
        )
        assert heard["data"][0].startswith("hello ")
    finally:
        a.host.lab.stop_process(talker)
    launched = min(a.started, b.started)
    print(
        f"\nlaunch -> DDS exports printed: {exports_at - launched:.2f} s; -> direct path both ways: "
        f"{direct_at - launched:.2f} s; -> first message on robot-b: {heard['first'] - launched:.2f} s "
        f"(talker started {direct_at - launched:.2f} s after launch: first message "
        f"{heard['first'] - direct_at:.2f} s after the talker). Multicast packets dropped on the underlay: "
        f"a {a.host.multicast_drop_count()}, b {b.host.multicast_drop_count()}"
    )

    # As a user on robot-b, with the printed environment: the peer table, and add_peer.
    echo = _echo_once(b, f"{b.namespace}/husarnet/peers")
    assert f"address: {a.address}" in echo
    assert "hostname: robot-a" in echo
    # The same table of robot-a, read on robot-b: the husarnet topics cross the overlay too.
    assert f"address: {b.address}" in _echo_once(b, f"{a.namespace}/husarnet/peers")

    new_peer = "fc94:e2e::1"
    call = _ros2(b, "service", "call", f"{b.namespace}/husarnet/add_peer", "husarnet_ros/srv/AddPeer",
                 f"{{address: '{new_peer}'}}")  # fmt: skip
    assert call.returncode == 0, call.stderr
    assert "success=True" in call.stdout, call.stdout
    with ControlClient(b.control_socket) as client:
        assert new_peer in client.whitelist().addresses
    refused = _ros2(b, "service", "call", f"{b.namespace}/husarnet/add_peer", "husarnet_ros/srv/AddPeer",
                    "{address: '198.18.0.1'}")  # fmt: skip
    assert refused.returncode == 0, refused.stderr
    assert "success=False" in refused.stdout, refused.stdout
    assert "198.18.0.1" in refused.stdout
