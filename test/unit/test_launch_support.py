"""The decisions the launch files make (husarnet_ros.launch_support), without launch or rclpy; what they ask
the daemon is answered by the real daemon controller on the in-memory network."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros import dds, launch_support
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.testing.memnet_daemon import ServedFleet, served_fleet

A, B, C = "fc94::a", "fc94::b", "fc94::c"


def _fleet(a: str = A, c: str = C) -> str:
    return f"""
robots:
  robot-a: {{address: "{a}", namespace: ra}}
  robot-b: {{address: "{B}"}}
  robot-c: {{address: "{c}", groups: [lonely]}}
links:
  - [robot-a, robot-b]
"""


@pytest.fixture
def fleet_file(tmp_path: Path) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(_fleet())
    return str(path)


@pytest.fixture
def daemon() -> Iterator[ServedFleet]:
    """robot-a's daemon, served: B whitelisted (no robot has that address); robot-c on the same network,
    not on robot-a's whitelist (robot-a is on robot-c's)."""
    with served_fleet("robot-a", ("robot-c",), connected=False) as served:
        served.controller.whitelist_add(B)
        served.fleet.member("robot-c").controller.whitelist_add(served.address)
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


def test_daemon_answers_and_a_missing_socket_does_not(daemon: ServedFleet) -> None:
    info = launch_support.query_daemon(daemon.socket_path)
    assert info is not None
    assert info.status.address == daemon.address
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


def test_dds_peers_from_the_daemon_alone(daemon: ServedFleet) -> None:
    socket_path, robot_c = daemon.socket_path, daemon.fleet.address("robot-c")
    addresses = launch_support.dds_peers(None, launch_support.query_daemon(socket_path))
    assert (addresses.own, addresses.peers, addresses.source) == (daemon.address, (B,), "daemon")  # whitelist
    daemon.controller.whitelist_set_enabled(False)  # then every peer the daemon knows may talk
    assert daemon.fleet.wait(lambda: daemon.fleet.path("robot-a", "robot-c") == "direct")
    addresses = launch_support.dds_peers(None, launch_support.query_daemon(socket_path))
    assert set(addresses.peers) == {B, robot_c}  # robot-c now, and B, still listed as whitelisted


def test_dds_peers_fleet_and_whitelist_together_and_the_daemon_gives_the_own_address(
    tmp_path: Path, daemon: ServedFleet
) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(_fleet(a=daemon.address, c=daemon.fleet.address("robot-c")))
    daemon.controller.whitelist_remove(B)
    daemon.controller.whitelist_add("fc94::d")  # added by the user, not in the fleet
    info = launch_support.query_daemon(daemon.socket_path)
    view = launch_support.fleet_view(str(fleet_file), "robot-a")
    addresses = launch_support.dds_peers(view, info)
    # robot-c is neither a fleet peer of robot-a nor whitelisted: not a DDS peer.
    assert (addresses.own, addresses.peers) == (daemon.address, (B, "fc94::d"))
    assert addresses.source == "fleet file and daemon"
    assert launch_support.address_mismatch(view, info) is None
    wrong = launch_support.fleet_view(str(fleet_file), "robot-b")
    message = launch_support.address_mismatch(wrong, info)
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


def test_base_server_command_passes_what_was_given() -> None:
    base = ["husarnet-ros"]
    assert launch_support.base_server_command(base=base) == ["husarnet-ros", "base-server", "--listen", "::"]
    argv = launch_support.base_server_command(
        listen="0.0.0.0",
        udp_port="5590",
        tcp_port="4443",
        max_clients="50",
        status_file="/tmp/base.json",
        status_interval="0.5",
        base=base,
    )
    assert argv == [
        "husarnet-ros", "base-server", "--listen", "0.0.0.0", "--udp-port", "5590", "--max-clients", "50",
        "--status-interval", "0.5", "--tcp-port", "4443", "--status-file", "/tmp/base.json",
    ]  # fmt: skip
    assert launch_support.base_server_command(tcp_port="0", base=base)[-1] == "--no-tcp"


@pytest.mark.parametrize("option", ["udp_port", "tcp_port", "max_clients", "status_interval"])
def test_base_server_command_names_a_bad_number(option: str) -> None:
    arguments: dict[str, Any] = {option: "x"}
    with pytest.raises(ConfigError, match=f"{option}:='x'"):
        launch_support.base_server_command(**arguments)
