"""The fleet file model: parsing, every error path, links/groups/"*" semantics, identity files."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from fixed_identities import fixed_identity

from husarnet_ros.core.address import format_address
from husarnet_ros.core.base_client import MAX_BASE_SERVERS, base_server_name
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.core.fleet import (
    MAX_FLEET_FILE_SIZE,
    Fleet,
    Member,
    default_namespace,
    load_fleet,
    parse_fleet,
)


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def fleet_of(robots: dict[str, Any], links: Any = "absent") -> Fleet:
    data: dict[str, Any] = {"robots": robots}
    if links != "absent":
        data["links"] = links
    return parse_fleet(data, Path("/nonexistent"))


def error_of(data: Any, base_dir: Path = Path("/nonexistent")) -> str:
    with pytest.raises(ConfigError) as info:
        parse_fleet(data, base_dir, "F")
    return str(info.value)


THREE = {
    "robot1": {"address": "fc94::1", "groups": ["arms"]},
    "robot2": {"address": "fc94::2", "groups": ["arms", "mobile"]},
    "robot3": {"address": "fc94::3", "groups": ["mobile"]},
    "base": {"address": "fc94::b"},
}


# --- parsing -------------------------------------------------------------------------------------------


def test_load_minimal_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        robots:
          robot1:
            address: FC94:0:0::1
            groups: [arms]
            namespace: /fleet/r1
          robot2:
            address: fc94::2
        """,
    )
    fleet = load_fleet(path)
    assert fleet.members["robot1"] == Member("robot1", "fc94::1", ("arms",), "/fleet/r1")
    assert fleet.members["robot2"] == Member("robot2", "fc94::2", (), "robot2")
    assert fleet.links is None


def test_addresses_are_canonical() -> None:
    fleet = fleet_of({"r1": {"address": "FC94:0000::00AB"}})
    assert fleet.members["r1"].address == "fc94::ab"


def test_default_namespace_replaces_characters_ros_refuses() -> None:
    fleet = fleet_of({"robot-1": {"address": "fc94::1"}, "lab.robot2": {"address": "fc94::2"}})
    assert fleet.members["robot-1"].namespace == "robot_1"
    assert fleet.members["lab.robot2"].namespace == "lab_robot2"
    assert default_namespace("a-b.c") == "a_b_c"


def test_by_address() -> None:
    fleet = fleet_of(THREE)
    member = fleet.by_address("fc94::2")
    assert member is not None
    assert member.name == "robot2"
    assert fleet.by_address("fc94::99") is None


# --- error paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, "must be a mapping with a `robots:` key"),
        ([1, 2], "must be a mapping with a `robots:` key"),
        ("robots", "must be a mapping with a `robots:` key"),
        ({}, "robots: Field required"),
        ({"robot": {}}, "robot: unknown key"),
        ({"robots": {}}, "robots: a fleet needs at least one robot"),
        ({"robots": None}, "robots: Input should be a valid dictionary"),
        ({"robots": {"r1": None}}, "robots.r1: Input should be a valid dictionary"),
        ({"robots": {"r1": {}}}, "robots.r1: needs `address` or `identity_file`"),
        (
            {"robots": {"r1": {"address": "fc94::1", "identity_file": "ids/r1"}}},
            "robots.r1: has both `address` and `identity_file`: give only one",
        ),
        ({"robots": {"r1": {"address": "fc94::1", "colour": "red"}}}, "robots.r1.colour: unknown key"),
        ({"robots": {"r1": {"address": "2001:db8::1"}}}, "must be inside fc94::/16"),
        ({"robots": {"r1": {"address": "nonsense"}}}, "robots.r1.address: 'nonsense' is not an IPv6"),
        ({"robots": {"r1": {"address": 5}}}, "robots.r1.address: Input should be a valid string"),
        ({"robots": {"r1": {"address": "fc94::1", "groups": "arms"}}}, "robots.r1.groups: must be a list"),
        ({"robots": {"r1": {"address": "fc94::1", "groups": [1]}}}, "robots.r1.groups.0: Input should be"),
        ({"robots": {"R1": {"address": "fc94::1"}}}, "robot name 'R1' must be a lower-case hostname"),
        ({"robots": {"bad_name": {"address": "fc94::1"}}}, "'bad_name'"),
        ({"robots": {"localhost": {"address": "fc94::1"}}}, "reserved for the local machine"),
        ({"robots": {"1robot": {"address": "fc94::1"}}}, "does not make a ROS namespace: give it a"),
        ({"robots": {1: {"address": "fc94::1"}}}, "robots.1.[key]: Input should be a valid string"),
        (
            {"robots": {"r1": {"address": "fc94::1", "namespace": "bad-ns"}}},
            "robots.r1.namespace: 'bad-ns' is not a ROS namespace",
        ),
        ({"robots": {"r1": {"address": "fc94::1", "namespace": "a/1b"}}}, "is not a ROS namespace"),
        ({"robots": {"r1": {"address": "fc94::1", "namespace": "a__b"}}}, "is not a ROS namespace"),
        ({"robots": {"r1": {"address": "fc94::1"}}, "links": [["r1"]]}, "links.0.1: Field required"),
        ({"robots": {"r1": {"address": "fc94::1"}}, "links": [["r1", "r1", "r1"]]}, "links.0"),
        ({"robots": {"r1": {"address": "fc94::1"}}, "links": "r1"}, "links: must be a list"),
        (
            {"robots": {"r1": {"address": "fc94::1"}}, "links": [["r1", "ghost"]]},
            "links.0: 'ghost' is neither a robot nor a group",
        ),
        (
            {"robots": {"r1": {"address": "fc94::1"}, "r2": {"address": "FC94::1"}}},
            "robots 'r1' and 'r2' have the same address fc94::1",
        ),
    ],
)
def test_invalid_fleet_is_a_clear_config_error(data: Any, expected: str) -> None:
    message = error_of(data)
    assert expected in message
    assert "F" in message  # the source is named


def test_several_problems_are_reported_together() -> None:
    message = error_of({"robots": {"r1": {}, "r2": {"address": "x"}}})
    assert "robots.r1" in message
    assert "robots.r2.address" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read fleet file .*missing\.yaml"):
        load_fleet(tmp_path / "missing.yaml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read fleet file"):
        load_fleet(tmp_path)


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "robots:\n  r1: {address: fc94::1\n  r2: [\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+, column \d+"):
        load_fleet(path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_fleet(write(tmp_path, ""))


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "robots: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_fleet(path)


def test_duplicate_robot_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        robots:
          robot1:
            address: fc94::1
          robot1:
            address: fc94::2
        """,
    )
    with pytest.raises(ConfigError, match=r"line 5, column 3: duplicate key 'robot1'"):
        load_fleet(path)


def test_duplicate_key_inside_a_robot_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "robots:\n  r1:\n    address: fc94::1\n    address: fc94::2\n")
    with pytest.raises(ConfigError, match="duplicate key 'address'"):
        load_fleet(path)


def test_too_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_FLEET_FILE_SIZE + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_fleet(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(b"robots:\n  r1: {address: \xff\xfe}\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_fleet(path)


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("robots: " + "[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_fleet(path)


# --- identity files ------------------------------------------------------------------------------------


def test_identity_file_is_resolved_relative_to_the_fleet_file(tmp_path: Path, monkeypatch: Any) -> None:
    identity = fixed_identity("fleet-robot1")
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "robot1").write_text(identity.to_file_text(), encoding="utf-8")
    path = write(tmp_path, "robots:\n  robot1: {identity_file: ids/robot1}\n  robot2: {address: fc94::2}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    fleet = load_fleet(path)
    assert fleet.members["robot1"].address == format_address(identity.address)


def test_absolute_identity_file(tmp_path: Path) -> None:
    identity = fixed_identity("fleet-robot2")
    id_path = tmp_path / "abs-id"
    id_path.write_text(identity.to_file_text(), encoding="utf-8")
    fleet_dir = tmp_path / "conf"
    fleet_dir.mkdir()
    fleet = load_fleet(write(fleet_dir, f"robots:\n  r2:\n    identity_file: {id_path}\n"))
    assert fleet.members["r2"].address == format_address(identity.address)


def test_missing_identity_file_names_the_resolved_path(tmp_path: Path) -> None:
    path = write(tmp_path, "robots:\n  r1:\n    identity_file: ids/nothere\n")
    with pytest.raises(ConfigError, match=rf"cannot read identity file {tmp_path}/ids/nothere"):
        load_fleet(path)


def test_corrupt_identity_file(tmp_path: Path) -> None:
    (tmp_path / "bad-id").write_text("fc94::1 00 11\n", encoding="utf-8")
    path = write(tmp_path, "robots:\n  r1:\n    identity_file: bad-id\n")
    with pytest.raises(ConfigError, match=r"identity file .*bad-id: .*not valid hex|bytes"):
        load_fleet(path)


def test_identity_file_not_text(tmp_path: Path) -> None:
    (tmp_path / "bin-id").write_bytes(b"\xff\xfe\x00")
    path = write(tmp_path, "robots:\n  r1:\n    identity_file: bin-id\n")
    with pytest.raises(ConfigError, match=r"bin-id: not a text identity file"):
        load_fleet(path)


def test_identity_and_address_giving_the_same_address_are_duplicates(tmp_path: Path) -> None:
    identity = fixed_identity("fleet-robot1")
    (tmp_path / "id").write_text(identity.to_file_text(), encoding="utf-8")
    address = format_address(identity.address)
    path = write(tmp_path, f"robots:\n  a:\n    identity_file: id\n  b:\n    address: '{address}'\n")
    with pytest.raises(ConfigError, match=f"robots 'a' and 'b' have the same address {address}"):
        load_fleet(path)


# --- links, groups and "*" -----------------------------------------------------------------------------


def peers_of(fleet: Fleet, name: str) -> list[str]:
    return [peer.name for peer in fleet.view(name).peers]


def test_no_links_means_everyone_talks_to_everyone_but_itself() -> None:
    fleet = fleet_of(THREE)
    assert peers_of(fleet, "robot1") == ["base", "robot2", "robot3"]
    assert peers_of(fleet, "base") == ["robot1", "robot2", "robot3"]
    assert not fleet.may_talk("robot1", "robot1")


def test_empty_links_means_nobody_talks() -> None:
    fleet = fleet_of(THREE, links=[])
    assert all(peers_of(fleet, name) == [] for name in THREE)


def test_null_links_means_everyone() -> None:
    fleet = fleet_of(THREE, links=None)
    assert peers_of(fleet, "robot3") == ["base", "robot1", "robot2"]


def test_robot_to_robot_link_is_symmetric() -> None:
    fleet = fleet_of(THREE, links=[["robot1", "robot3"]])
    assert peers_of(fleet, "robot1") == ["robot3"]
    assert peers_of(fleet, "robot3") == ["robot1"]
    assert peers_of(fleet, "robot2") == []
    assert fleet.may_talk("robot3", "robot1")


def test_group_to_robot_link() -> None:
    fleet = fleet_of(THREE, links=[["arms", "base"]])
    assert peers_of(fleet, "base") == ["robot1", "robot2"]
    assert peers_of(fleet, "robot1") == ["base"]
    assert peers_of(fleet, "robot3") == []


def test_group_with_itself_links_its_members() -> None:
    fleet = fleet_of(THREE, links=[["mobile", "mobile"]])
    assert peers_of(fleet, "robot2") == ["robot3"]
    assert peers_of(fleet, "robot3") == ["robot2"]
    assert peers_of(fleet, "robot1") == []


def test_everyone_to_one_robot() -> None:
    fleet = fleet_of(THREE, links=[["*", "base"]])
    assert peers_of(fleet, "base") == ["robot1", "robot2", "robot3"]
    assert peers_of(fleet, "robot1") == ["base"]


def test_everyone_to_everyone() -> None:
    fleet = fleet_of(THREE, links=[["*", "*"]])
    assert peers_of(fleet, "robot2") == ["base", "robot1", "robot3"]


def test_links_add_up() -> None:
    fleet = fleet_of(THREE, links=[["robot1", "robot2"], ["mobile", "base"]])
    assert peers_of(fleet, "robot1") == ["robot2"]
    assert peers_of(fleet, "robot2") == ["base", "robot1"]
    assert peers_of(fleet, "base") == ["robot2", "robot3"]


def test_may_talk_is_symmetric_for_every_pair() -> None:
    fleet = fleet_of(THREE, links=[["arms", "base"], ["robot3", "robot1"]])
    for a in THREE:
        for b in THREE:
            assert fleet.may_talk(a, b) == fleet.may_talk(b, a)


# --- views ---------------------------------------------------------------------------------------------


def test_view_whitelist_and_hosts() -> None:
    view = fleet_of(THREE, links=[["arms", "base"]]).view("base")
    assert view.me.name == "base"
    assert view.whitelist == ["fc94::1", "fc94::2"]
    assert view.hosts == {"robot1": "fc94::1", "robot2": "fc94::2"}
    assert "fc94::b" not in view.whitelist  # never itself


def test_view_of_unknown_robot_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"robot 'ghost' is not in the fleet \(robots: base, robot1, "):
        fleet_of(THREE).view("ghost")


def test_single_robot_fleet_has_an_empty_view() -> None:
    view = fleet_of({"solo": {"address": "fc94::5"}}).view("solo")
    assert view.peers == ()
    assert view.whitelist == []
    assert view.hosts == {}


# --- static endpoints ------------------------------------------------------------------------------------


def test_static_endpoints_of_the_peers_in_one_spelling() -> None:
    fleet = fleet_of(
        {
            "robot1": {"address": "fc94::1", "endpoint": "Robot1.Example.com"},
            "robot2": {"address": "fc94::2", "endpoints": ["198.18.5.20:6000", "[FD00:98::20]"]},
            "robot3": {"address": "fc94::3", "endpoint": "198.18.5.30", "endpoints": ["198.18.5.30:5582"]},
            "base": {"address": "fc94::b"},
        },
        links=[["robot1", "robot2"], ["robot1", "base"]],
    )
    assert fleet.members["robot3"].endpoints == ("198.18.5.30:5582",)  # one endpoint, written twice
    assert fleet.view("robot1").static_endpoints == [
        ("fc94::2", "198.18.5.20:6000"),
        ("fc94::2", "[fd00:98::20]:5582"),
    ]
    # Only peers' endpoints: robot2 gets robot1's, never its own; base has none to give.
    assert fleet.view("robot2").static_endpoints == [("fc94::1", "robot1.example.com:5582")]
    assert fleet.view("base").static_endpoints == [("fc94::1", "robot1.example.com:5582")]


@pytest.mark.parametrize(
    ("robot", "expected"),
    [
        (
            {"endpoint": "robot1:port"},
            "robots.r1.endpoint: endpoint 'robot1:port': port 'port' is not a number",
        ),
        ({"endpoints": ["ok.example.com", "two words"]}, "robots.r1.endpoints: endpoint 'two words'"),
        ({"endpoints": "198.18.5.20"}, "robots.r1.endpoints: must be a list"),
        ({"endpoints": [f"198.18.5.{i}" for i in range(5)]}, "robots.r1: has more than 4 endpoints"),
    ],
)
def test_a_bad_endpoint_is_a_clear_config_error(robot: dict[str, Any], expected: str) -> None:
    message = error_of({"robots": {"r1": {"address": "fc94::1", **robot}}})
    assert expected in message


# --- base servers ----------------------------------------------------------------------------------------


def test_base_servers_in_the_daemons_spelling_for_every_robot(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        robots:
          robot1: {address: "fc94::1"}
          robot2: {address: "fc94::2"}
          lonely: {address: "fc94::9"}
        links:
          - [robot1, robot2]
        base_servers:
          - Base.Example.com
          - 198.18.0.100:6000
          - "[FD00:98::0100]:5583"
          - fd00:98::101
        """,
    )
    fleet = load_fleet(path)
    spelled = ("base.example.com:5582", "198.18.0.100:6000", "[fd00:98::100]:5583", "[fd00:98::101]:5582")
    assert fleet.base_servers == spelled
    # The fleet's, not a robot's: one with no peer at all uses them too.
    assert [fleet.view(name).base_servers for name in ("robot1", "robot2", "lonely")] == [spelled] * 3


def test_no_base_servers_by_default() -> None:
    fleet = fleet_of({"robot1": {"address": "fc94::1"}})
    assert fleet.base_servers == ()
    assert fleet.view("robot1").base_servers == ()


@pytest.mark.parametrize(
    ("written", "spelling"),
    [
        ("Base.Example.COM", "base.example.com:5582"),
        ("base.example.com.", "base.example.com.:5582"),
        ("198.18.0.100", "198.18.0.100:5582"),
        ("198.18.0.100:443", "198.18.0.100:443"),
        ("[FD00:98::1]:7", "[fd00:98::1]:7"),
        ("fd00:98::1", "[fd00:98::1]:5582"),
    ],
)
def test_base_servers_take_the_daemons_one_spelling(written: str, spelling: str) -> None:
    # The whitelist node compares the fleet's names with the daemon's list (both spelled by
    # core.base_client.base_server_name): one spelling on both sides, or a base server would be added again
    # at every sync and never recognised as the node's own.
    fleet = parse_fleet({"robots": {"robot1": {"address": "fc94::1"}}, "base_servers": [written]}, Path("/x"))
    assert fleet.base_servers == (spelling,) == (base_server_name(written),)


@pytest.mark.parametrize(
    ("base_servers", "expected"),
    [
        (["base:port"], "F: base_servers: base server 'base:port': port 'port' is not a number"),
        (["base:0"], "base_servers: base server 'base:0': port 0 is out of range 1-65535"),
        (["two words"], "base_servers: base server 'two words': 'two words' is neither an IP address nor"),
        (["[base]:5582"], "base_servers: base server '[base]:5582': 'base' is neither an IP address nor"),
        ([""], "base_servers: base server: empty"),
        ("base.example.com", "base_servers: must be a list"),
        ([5582], "base_servers.0: Input should be a valid string"),
        (
            ["a.example.com", "b.example.com", "a.example.com"],
            "'a.example.com' is listed twice (a.example.com:5582)",
        ),
        (
            ["198.18.0.1", "198.18.0.1:5582"],
            "base server '198.18.0.1:5582' is the same as '198.18.0.1' (198.18.0.1:5582)",
        ),
        (
            ["BASE.example.com", "base.example.com"],
            "is the same as 'BASE.example.com' (base.example.com:5582)",
        ),
        (
            [f"198.18.0.{i}" for i in range(MAX_BASE_SERVERS + 1)],
            f"base_servers: {MAX_BASE_SERVERS + 1} base servers: at most {MAX_BASE_SERVERS} are used",
        ),
    ],
)
def test_a_bad_base_server_list_is_a_clear_config_error(base_servers: Any, expected: str) -> None:
    message = error_of({"robots": {"r1": {"address": "fc94::1"}}, "base_servers": base_servers})
    assert expected in message


def test_as_many_base_servers_as_the_daemon_uses() -> None:
    servers = [f"198.18.0.{i}" for i in range(MAX_BASE_SERVERS)]
    fleet = parse_fleet({"robots": {"r1": {"address": "fc94::1"}}, "base_servers": servers}, Path("/x"))
    assert len(fleet.base_servers) == MAX_BASE_SERVERS
