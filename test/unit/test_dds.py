"""husarnet_ros.dds (rendering, environment, writing) and the `husarnet-ros dds` commands."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sample_status import make_status

from husarnet_ros import dds
from husarnet_ros.api import PeerStatus, Whitelist
from husarnet_ros.cli.main import cli
from husarnet_ros.core.errors import AddressError, ConfigError
from husarnet_ros.core.fleet import load_fleet
from husarnet_ros.testing.memnet_daemon import ServedFleet, served_fleet
from husarnet_ros.testing.ros_launch import private_domain_id

OWN = "fc94::a"
PEERS = ["fc94::c", "FC94:0::b", "fc94::c"]
FASTDDS_NS = "{http://www.eprosima.com}"
CYCLONE_NS = "{https://cdds.io/config}"


def _fastdds_initial_peers(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    peers = root.find(f".//{FASTDDS_NS}initialPeersList")
    assert peers is not None
    return [address.text or "" for address in peers.iter(f"{FASTDDS_NS}address")]


def test_peer_list_is_canonical_own_first_sorted_and_deduplicated() -> None:
    assert dds.overlay_peers(OWN, PEERS) == ["fc94::a", "fc94::b", "fc94::c"]
    assert dds.overlay_peers(None, PEERS) == ["fc94::b", "fc94::c"]
    assert dds.overlay_peers(OWN, [OWN]) == [OWN]


@pytest.mark.parametrize("bad", ["10.0.0.1", "fd00::1", "fc94::1</address><x>", "robot2", ""])
def test_anything_but_overlay_addresses_is_refused(bad: str) -> None:
    with pytest.raises(AddressError):
        dds.render_fastdds_xml(OWN, [bad])
    with pytest.raises(AddressError):
        dds.render_cyclonedds_xml(OWN, [bad])


def test_fastdds_profile_is_udpv6_only_default_profile_with_unicast_peers() -> None:
    xml = dds.render_fastdds_xml(OWN, PEERS)
    root = ET.fromstring(xml)
    assert root.find(f".//{FASTDDS_NS}transport_descriptor/{FASTDDS_NS}type").text == "UDPv6"  # type: ignore[union-attr]
    participant = root.find(f".//{FASTDDS_NS}participant")
    assert participant is not None
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext(f".//{FASTDDS_NS}useBuiltinTransports") == "false"
    assert participant.findtext(f".//{FASTDDS_NS}avoid_builtin_multicast") == "true"
    # The own address too: nodes on this robot find each other without multicast.
    assert _fastdds_initial_peers(xml) == ["fc94::a", "fc94::b", "fc94::c"]
    max_range = root.findtext(f".//{FASTDDS_NS}maxInitialPeersRange")
    assert max_range is not None
    assert int(max_range) >= 16
    # Listens on and announces only the overlay address.
    for name in ("defaultUnicastLocatorList", "metatrafficUnicastLocatorList"):
        locators = participant.find(f".//{FASTDDS_NS}{name}")
        assert locators is not None
        assert [a.text for a in locators.iter(f"{FASTDDS_NS}address")] == [OWN]


def test_fastdds_profile_without_own_address_listens_anywhere() -> None:
    xml = dds.render_fastdds_xml(None, ["fc94::b"])
    assert "UnicastLocatorList" not in xml
    assert _fastdds_initial_peers(xml) == ["fc94::b"]


def test_cyclonedds_config_is_unicast_on_hnet0() -> None:
    root = ET.fromstring(dds.render_cyclonedds_xml(OWN, PEERS))
    general = root.find(f"{CYCLONE_NS}Domain/{CYCLONE_NS}General")
    assert general is not None
    interface = general.find(f"{CYCLONE_NS}Interfaces/{CYCLONE_NS}NetworkInterface")
    assert interface is not None
    assert interface.get("name") == "hnet0"
    assert general.findtext(f"{CYCLONE_NS}AllowMulticast") == "false"
    assert general.findtext(f"{CYCLONE_NS}Transport") == "udp6"
    discovery = root.find(f"{CYCLONE_NS}Domain/{CYCLONE_NS}Discovery")
    assert discovery is not None
    assert discovery.findtext(f"{CYCLONE_NS}ParticipantIndex") == "auto"
    assert int(discovery.findtext(f"{CYCLONE_NS}MaxAutoParticipantIndex") or 0) >= 16
    peers = [peer.get("address") for peer in discovery.iter(f"{CYCLONE_NS}Peer")]
    assert peers == ["[fc94::a]", "[fc94::b]", "[fc94::c]"]


@pytest.mark.parametrize("interface", ["", "a" * 16, "eth0 x", 'hnet0"/><x', "hnet/0"])
def test_cyclonedds_interface_name_is_checked(interface: str) -> None:
    with pytest.raises(ConfigError):
        dds.render_cyclonedds_xml(OWN, [], interface=interface)


def test_environment_per_rmw(tmp_path: Path) -> None:
    both = dds.environment(tmp_path, "auto")
    assert both == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(tmp_path / "fastdds.xml"),
        # Fast DDS 2.x (Humble, Jazzy) reads only this name: without it the profile is silently ignored.
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(tmp_path / "fastdds.xml"),
        "CYCLONEDDS_URI": (tmp_path / "cyclonedds.xml").as_uri(),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
    }
    assert "RMW_IMPLEMENTATION" not in dds.environment(tmp_path, "fastdds")
    fast = dds.environment(tmp_path, "fastdds", set_rmw_implementation=True)
    assert fast["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert fast["FASTDDS_DEFAULT_PROFILES_FILE"] == fast["FASTRTPS_DEFAULT_PROFILES_FILE"]
    assert "CYCLONEDDS_URI" not in fast
    cyclone = dds.environment(tmp_path, "cyclonedds", set_rmw_implementation=True)
    assert cyclone["RMW_IMPLEMENTATION"] == "rmw_cyclonedds_cpp"
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in cyclone
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in cyclone
    assert "ROS_STATIC_PEERS" not in both  # refused by rmw_fastrtps for IPv6 peers: see docs/ROS.md
    with pytest.raises(ConfigError, match="definite rmw"):
        dds.environment(tmp_path, "auto", set_rmw_implementation=True)
    with pytest.raises(ConfigError, match="unknown rmw"):
        dds.environment(tmp_path, "zenoh")


def test_environment_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = dds.environment(Path("rel"), "fastdds")
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(tmp_path / "rel" / "fastdds.xml")


def test_write_config_rewrites_only_on_change(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "dds"
    env = dds.write_config(out, OWN, ["fc94::b"])
    fast, cyclone = out / "fastdds.xml", out / "cyclonedds.xml"
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(fast)
    assert fast.read_text() == dds.render_fastdds_xml(OWN, ["fc94::b"])
    assert cyclone.read_text() == dds.render_cyclonedds_xml(OWN, ["fc94::b"])
    inodes = (fast.stat().st_ino, cyclone.stat().st_ino)
    # Same peers in another order: nothing rewritten (a replaced file has a new inode).
    assert dds.write_files(out, dds.render_files(OWN, ["FC94::B"])) == []
    assert (fast.stat().st_ino, cyclone.stat().st_ino) == inodes
    # A new peer: both rewritten, no temporary file left behind.
    dds.write_config(out, OWN, ["fc94::b", "fc94::d"])
    assert fast.stat().st_ino != inodes[0]
    assert "fc94::d" in fast.read_text()
    assert "[fc94::d]" in cyclone.read_text()
    assert sorted(p.name for p in out.iterdir()) == ["cyclonedds.xml", "fastdds.xml"]
    # A removed file comes back.
    fast.unlink()
    assert dds.write_files(out, dds.render_files(OWN, ["fc94::b", "fc94::d"])) == [fast]


def test_write_config_for_one_rmw_writes_one_file(tmp_path: Path) -> None:
    env = dds.write_config(tmp_path, OWN, [], rmw="cyclonedds", set_rmw_implementation=True)
    assert [p.name for p in tmp_path.iterdir()] == ["cyclonedds.xml"]
    assert env["RMW_IMPLEMENTATION"] == "rmw_cyclonedds_cpp"


def test_unwritable_output_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the DDS configuration"):
        dds.write_config(blocker / "dds", OWN, [])


def test_default_output_dir(tmp_path: Path) -> None:
    env = {"ROS_HOME": str(tmp_path)}
    assert dds.default_output_dir("", env) == tmp_path / "husarnet_ros" / "dds"
    assert (
        dds.default_output_dir("/fleet/robot1", env) == tmp_path / "husarnet_ros" / "dds" / "fleet" / "robot1"
    )
    assert dds.default_output_dir("/", {"HOME": "/h"}).parts[-3:] == (".ros", "husarnet_ros", "dds")
    with pytest.raises(ConfigError):
        dds.default_output_dir("/a/../b", env)


def test_discovered_peers_are_the_whitelist_or_every_peer_when_it_is_off() -> None:
    status = make_status([PeerStatus(address="fc94::b"), PeerStatus(address="fc94::e")], address=OWN)
    assert dds.discovered_peers(status, Whitelist(enabled=True, addresses=["fc94::b", "fc94::f"])) == {
        "fc94::b",
        "fc94::f",
    }
    assert dds.discovered_peers(status, Whitelist(enabled=False, addresses=["fc94::b"])) == {
        "fc94::b",
        "fc94::e",
    }


def test_own_and_peers_prefer_the_daemons_address_and_join_fleet_and_allowed_peers(tmp_path: Path) -> None:
    view = load_fleet(_fleet(tmp_path)).view("robot1")  # fc94::a, linked to robot2 only
    assert dds.own_and_peers(view, None, None) == ("fc94::a", ["fc94::2"])
    assert dds.own_and_peers(None, None, None) == (None, [])
    status = make_status(address="fc94::9")
    whitelist = Whitelist(enabled=True, addresses=["fc94::b", "fc94::9"])
    assert dds.own_and_peers(view, status, whitelist) == ("fc94::9", ["fc94::2", "fc94::b"])
    assert dds.own_and_peers(view, status, None) == ("fc94::9", ["fc94::2"])  # discovered peers not wanted


CYCLONE_PARTICIPANT = """
import sys
from cyclonedds.core import DDSException
from cyclonedds.domain import DomainParticipant
try:
    DomainParticipant(int(sys.argv[1]))
except DDSException as exc:
    print(exc)
    sys.exit(1)
"""


def _cyclone_accepts(uri: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYCLONEDDS")} | {"CYCLONEDDS_URI": uri}
    domain = str(private_domain_id(71))
    return subprocess.run(
        [sys.executable, "-c", CYCLONE_PARTICIPANT, domain],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cyclonedds_accepts_the_generated_config(tmp_path: Path) -> None:
    # A dev dependency (setup.py): missing it is an installation error, not a reason to skip.
    import cyclonedds  # noqa: F401

    # Loopback stands in for hnet0 (which exists only where the daemon runs); the rest is what robots get.
    env = dds.write_config(tmp_path, OWN, ["fc94::b"], rmw="cyclonedds", interface="lo")
    accepted = _cyclone_accepts(env["CYCLONEDDS_URI"])
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    # Cyclone checks its configuration strictly, so the test above can fail: an unknown element is refused.
    broken = tmp_path / "broken.xml"
    broken.write_text(
        (tmp_path / "cyclonedds.xml").read_text().replace("<AllowMulticast>", "<Bogus/><AllowMulticast>")
    )
    refused = _cyclone_accepts(broken.as_uri())
    assert refused.returncode != 0
    assert "Bogus: unknown element" in refused.stderr + refused.stdout


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def daemon() -> Iterator[ServedFleet]:
    """robot1's daemon (the real controller on the in-memory network), served, with fc94::b whitelisted."""
    with served_fleet("robot1", ()) as served:
        served.controller.whitelist_add("fc94::b")
        yield served


def _run(argv: list[str], socket: str, tmp_path: Path) -> Result:
    env = {"HUSARNET_ROS_CONTROL_SOCKET": socket, "ROS_HOME": str(tmp_path / "ros_home")}
    return CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)


def _fleet(tmp_path: Path, robot1: str = OWN) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "robots:\n"
        f"  robot1: {{address: '{robot1}', namespace: r1}}\n"
        "  robot2: {address: 'fc94::2'}\n"
        "  robot3: {address: 'fc94::3'}\n"
        "links:\n  - [robot1, robot2]\n"
    )
    return path


def test_cli_env_prints_exports_that_a_shell_can_eval(daemon: ServedFleet, tmp_path: Path) -> None:
    sock = daemon.socket_path
    out = tmp_path / "out dir"  # a space: the export lines must be quoted
    result = _run(["dds", "env", "--output-dir", str(out)], sock, tmp_path)
    assert result.exit_code == 0, result.output
    shell = subprocess.run(
        [
            "sh",
            "-c",
            result.output + 'printf "%s\\n" "$FASTDDS_DEFAULT_PROFILES_FILE" '
            '"$FASTRTPS_DEFAULT_PROFILES_FILE" "$CYCLONEDDS_URI"',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    profile = str(out / "fastdds.xml")  # under the Fast DDS 3.x and the 2.x (Jazzy) name
    assert shell.stdout.splitlines() == [profile, profile, (out / "cyclonedds.xml").as_uri()]
    assert "RMW_IMPLEMENTATION" not in result.output
    assert _fastdds_initial_peers((out / "fastdds.xml").read_text()) == [daemon.address, "fc94::b"]


def test_cli_env_with_fleet_and_rmw_json(daemon: ServedFleet, tmp_path: Path) -> None:
    sock = daemon.socket_path
    fleet = _fleet(tmp_path, robot1=daemon.address)
    result = _run(["dds", "env", "--fleet", str(fleet), "--rmw", "fastdds", "--json"], sock, tmp_path)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    out = tmp_path / "ros_home" / "husarnet_ros" / "dds" / "r1"  # the robot's namespace from the fleet
    assert answer["own_address"] == daemon.address
    assert answer["peers"] == ["fc94::2", "fc94::b"]  # fleet link + daemon whitelist; robot3 not linked
    assert answer["output_dir"] == str(out)
    assert answer["environment"]["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert answer["files"] == [str(out / "fastdds.xml")]
    assert answer["changed"] == answer["files"]
    again = json.loads(_run(["dds", "write", "--fleet", str(fleet), "--json"], sock, tmp_path).output)
    assert again["changed"] == [str(out / "cyclonedds.xml")]  # fastdds.xml had the same content already


def test_cli_works_from_the_fleet_alone_when_the_daemon_is_down(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    missing = str(tmp_path / "no.sock")
    result = _run(["dds", "write", "--fleet", str(fleet), "--robot", "robot2"], missing, tmp_path)
    assert result.exit_code == 0, result.output
    assert "own address fc94::2, 1 peer(s)" in result.output
    assert result.output.count("wrote ") == 2
    assert (
        "unchanged"
        in _run(["dds", "write", "--fleet", str(fleet), "--robot", "robot2"], missing, tmp_path).output
    )


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "no.sock")
    no_daemon = _run(["dds", "env"], missing, tmp_path)
    assert no_daemon.exit_code == 1
    assert no_daemon.output.startswith("error: ")
    assert "--fleet FILE --robot NAME" in no_daemon.output
    fleet = _fleet(tmp_path)
    no_robot = _run(["dds", "env", "--fleet", str(fleet)], missing, tmp_path)
    assert no_robot.exit_code == 1
    assert "--robot is needed" in no_robot.output
    unknown = _run(["dds", "env", "--fleet", str(fleet), "--robot", "robot9"], missing, tmp_path)
    assert unknown.exit_code == 1
    assert "robot 'robot9' is not in the fleet" in unknown.output
    robot_alone = _run(["dds", "env", "--robot", "robot1"], missing, tmp_path)
    assert robot_alone.exit_code == 1
    assert "--robot needs --fleet" in robot_alone.output
    bad_rmw = _run(["dds", "env", "--rmw", "zenoh"], missing, tmp_path)
    assert bad_rmw.exit_code == 2
    assert "Traceback" not in no_daemon.output + no_robot.output + unknown.output


def test_cli_exports_are_shell_quoted(daemon: ServedFleet, tmp_path: Path) -> None:
    sock = daemon.socket_path
    out = tmp_path / "it's $HOME"
    result = _run(["dds", "env", "--output-dir", str(out), "--rmw", "cyclonedds"], sock, tmp_path)
    lines = dict(line.removeprefix("export ").split("=", 1) for line in result.output.splitlines())
    assert shlex.split(lines["CYCLONEDDS_URI"]) == [(out / "cyclonedds.xml").as_uri()]
    assert lines["RMW_IMPLEMENTATION"] == "rmw_cyclonedds_cpp"
