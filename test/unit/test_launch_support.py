"""The decisions the launch files make (husarnet_ros.launch_support), without launch or rclpy."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from husarnet_ros import dds, launch_support
from husarnet_ros.api import PeerStatus
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.testing.fake_controller import FakeController, serve_fake

A, B, C = "fc94::a", "fc94::b", "fc94::c"
FLEET = f"""
robots:
  robot-a: {{address: "{A}", namespace: ra}}
  robot-b: {{address: "{B}"}}
  robot-c: {{address: "{C}", groups: [lonely]}}
links:
  - [robot-a, robot-b]
"""


@pytest.fixture
def fleet_file(tmp_path: Path) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    return str(path)


@pytest.fixture
def fake() -> Iterator[tuple[FakeController, str]]:
    controller = FakeController(address=A, hostname="robot-a")
    controller.whitelist_add(B)
    controller.add_peer(PeerStatus(address=C, hostname="robot-c", path="direct"))
    with serve_fake(controller) as served:
        yield served


# --- arguments ----------------------------------------------------------------------------------------------


def test_choices_are_normalised_and_anything_else_is_refused() -> None:
    assert launch_support.parse_start_daemon(" Auto ") == "auto"
    assert launch_support.parse_dds("CycloneDDS") == "cyclonedds"
    with pytest.raises(ConfigError, match=r"start_daemon:='yes' must be one of auto, true, false"):
        launch_support.parse_start_daemon("yes")
    with pytest.raises(ConfigError, match="dds:='zenoh'"):
        launch_support.parse_dds("zenoh")


def test_namespace_forms() -> None:
    assert launch_support.normalize_namespace("") == ""
    assert launch_support.normalize_namespace(" / ") == ""
    assert launch_support.normalize_namespace("robot1") == "/robot1"
    assert launch_support.normalize_namespace("/fleet/robot1/") == "/fleet/robot1"


def test_system_hostname_is_a_lower_case_short_name() -> None:
    name = launch_support.system_hostname()
    assert name
    assert name == name.lower()
    assert "." not in name


# --- daemon -------------------------------------------------------------------------------------------------


def test_start_daemon_auto_asks_whether_one_answers() -> None:
    asked: list[bool] = []

    def answers(value: bool) -> Callable[[], bool]:
        def ask() -> bool:
            asked.append(value)
            return value

        return ask

    assert launch_support.should_start_daemon("auto", answers(False)) is True
    assert launch_support.should_start_daemon("auto", answers(True)) is False
    assert launch_support.should_start_daemon("true", answers(True)) is True
    assert launch_support.should_start_daemon("false", answers(False)) is False
    assert asked == [False, True]  # true/false never probe the socket


def test_daemon_answers_on_the_fake_and_not_on_a_missing_socket(fake: tuple[FakeController, str]) -> None:
    _, socket_path = fake
    info = launch_support.query_daemon(socket_path)
    assert info is not None
    assert info.status.address == A
    assert info.whitelist.addresses == [B]
    assert launch_support.query_daemon("/tmp/hr-no-such-dir/control.sock") is None


def test_daemon_command_passes_only_given_options() -> None:
    argv = launch_support.daemon_command(
        control_socket="/tmp/a.sock",
        state_dir="/tmp/state a",
        hostname="robot-a",
        extra_args="--udp-port 5590 --log-level 'debug'",
        base=["husarnet-ros"],
    )
    assert argv == [
        "husarnet-ros", "--control-socket", "/tmp/a.sock", "daemon",
        "--state-dir", "/tmp/state a", "--hostname", "robot-a", "--udp-port", "5590", "--log-level", "debug",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="daemon_args"):
        launch_support.daemon_command(control_socket="", extra_args="--hostname 'unclosed", base=["x"])


def test_daemon_command_is_understood_by_the_cli() -> None:
    argv = launch_support.daemon_command(control_socket="/tmp/a.sock", state_dir="/tmp/s", hostname="r")
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--state-dir" in result.stdout


# --- fleet --------------------------------------------------------------------------------------------------


def test_fleet_robot_gives_namespace_and_hostname(fleet_file: str) -> None:
    a = launch_support.fleet_robot(fleet_file, "robot-a")
    assert (a.robot, a.namespace, a.hostname) == ("robot-a", "/ra", "robot-a")
    assert launch_support.fleet_robot(fleet_file, "robot-b").namespace == "/robot_b"
    with pytest.raises(ConfigError, match=r"robot 'robot-z' is not in the fleet \(robots: robot-a, robot-b"):
        launch_support.fleet_robot(fleet_file, "robot-z")
    with pytest.raises(ConfigError, match="needs fleet:=PATH"):
        launch_support.fleet_robot("", "robot-a")


def test_the_example_fleet_file_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "fleet.yaml"
    for robot in ("robot1", "robot2", "base-station"):
        view = launch_support.fleet_view(str(example), robot)
        assert view is not None
        assert view.peers


def test_no_fleet_file_means_no_view() -> None:
    assert launch_support.fleet_view("", "robot-a") is None


# --- DDS ----------------------------------------------------------------------------------------------------


def test_dds_peers_from_the_fleet_alone(fleet_file: str) -> None:
    view = launch_support.fleet_view(fleet_file, "robot-a")
    addresses = launch_support.dds_peers(view, None)
    assert (addresses.own, addresses.peers, addresses.source) == (A, (B,), "fleet file")


def test_dds_peers_from_the_daemon_alone(fake: tuple[FakeController, str]) -> None:
    _, socket_path = fake
    addresses = launch_support.dds_peers(None, launch_support.query_daemon(socket_path))
    assert (addresses.own, addresses.peers, addresses.source) == (A, (B,), "daemon")  # the whitelist
    controller, _ = fake
    controller.whitelist_enabled = False  # then every peer the daemon knows may talk
    addresses = launch_support.dds_peers(None, launch_support.query_daemon(socket_path))
    assert addresses.peers == (C,)


def test_dds_peers_fleet_and_whitelist_together_and_the_daemon_gives_the_own_address(
    fleet_file: str, fake: tuple[FakeController, str]
) -> None:
    controller, socket_path = fake
    controller.whitelist_remove(B)
    controller.whitelist_add("fc94::d")  # added by the user, not in the fleet
    daemon = launch_support.query_daemon(socket_path)
    view = launch_support.fleet_view(fleet_file, "robot-a")
    addresses = launch_support.dds_peers(view, daemon)
    # robot-c is neither a fleet peer of robot-a nor whitelisted: not a DDS peer.
    assert (addresses.own, addresses.peers) == (A, (B, "fc94::d"))
    assert addresses.source == "fleet file and daemon"
    assert launch_support.address_mismatch(view, daemon) is None
    wrong = launch_support.fleet_view(fleet_file, "robot-b")
    message = launch_support.address_mismatch(wrong, daemon)
    assert message is not None
    assert "wrong robot:=" in message


def test_dds_peers_from_nothing() -> None:
    addresses = launch_support.dds_peers(None, None)
    assert addresses.own is None
    assert addresses.peers == ()


def test_dds_environment_writes_the_files_before_anything_starts(tmp_path: Path, fleet_file: str) -> None:
    addresses = launch_support.dds_peers(launch_support.fleet_view(fleet_file, "robot-a"), None)
    env = launch_support.dds_environment("fastdds", tmp_path / "dds", addresses)
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert "CYCLONEDDS_URI" not in env
    profile = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile.parent == tmp_path / "dds"
    # Fast DDS 2.x (Jazzy) reads only the older name: the nodes and env.sh must carry it too.
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(profile)
    env_file = launch_support.write_env_file(tmp_path / "dds", env).read_text()
    assert f"export FASTRTPS_DEFAULT_PROFILES_FILE={profile}\n" in env_file
    assert f"export FASTDDS_DEFAULT_PROFILES_FILE={profile}\n" in env_file
    assert f"<address>{B}</address>" in profile.read_text()
    cyclone = launch_support.dds_environment("cyclonedds", tmp_path / "c", addresses)
    assert cyclone["RMW_IMPLEMENTATION"] == "rmw_cyclonedds_cpp"
    assert f'address="[{B}]"' in (tmp_path / "c" / dds.CYCLONEDDS_FILE).read_text()
    assert launch_support.dds_environment("none", tmp_path / "n", addresses) == {}
    assert not (tmp_path / "n").exists()


def test_dds_environment_without_any_own_address_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fleet:=\.\.\. robot:=\.\.\., or dds:=none"):
        launch_support.dds_environment("fastdds", tmp_path, launch_support.dds_peers(None, None))


def test_dds_output_dir_default_follows_the_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ROS_HOME", str(tmp_path))
    assert launch_support.dds_output_dir("", "robot1") == tmp_path / "husarnet_ros" / "dds" / "robot1"
    assert launch_support.dds_output_dir("", "") == tmp_path / "husarnet_ros" / "dds"
    assert launch_support.dds_output_dir("/x/y", "robot1") == Path("/x/y")


def test_export_lines_survive_the_shell(tmp_path: Path) -> None:
    env = {"B_VAR": "/tmp/with space/f.xml", "A_VAR": "it's"}
    text = launch_support.export_lines(env)
    assert text.splitlines()[0].startswith("export A_VAR=")
    path = launch_support.write_env_file(tmp_path / "out", env)
    shown = subprocess.run(
        ["sh", "-c", f'. {shlex.quote(str(path))} && printf "%s|%s" "$A_VAR" "$B_VAR"'],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert shown == "it's|/tmp/with space/f.xml"


def test_parameter_overrides_file_targets_the_node_in_any_namespace() -> None:
    import yaml

    path = launch_support.write_parameter_overrides(
        "husarnet_dds", {"output_dir": "/tmp/a b", "rmw": "fastdds"}
    )
    try:
        document = yaml.safe_load(path.read_text())
        assert document == {
            "/**/husarnet_dds": {"ros__parameters": {"output_dir": "/tmp/a b", "rmw": "fastdds"}}
        }
    finally:
        path.unlink()
