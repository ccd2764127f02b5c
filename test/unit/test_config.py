"""DaemonConfig: defaults, validation, YAML loading, precedence and the errors a user sees."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from husarnet_ros.core import config as config_module
from husarnet_ros.core.config import (
    DaemonConfig,
    default_hostname,
    describe_validation_error,
    load_config,
    read_config_file,
)
from husarnet_ros.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "daemon.yaml"


@pytest.fixture(autouse=True)
def fixed_system_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Test-Robot")


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# --- defaults -------------------------------------------------------------------------------


def test_defaults() -> None:
    c = DaemonConfig()
    assert c.state_dir == Path("/var/lib/husarnet-ros")
    assert c.control_socket == Path("/run/husarnet-ros/control.sock")
    assert c.interface == "hnet0"
    assert c.udp_port == 5582
    assert c.hostname == "test-robot"
    assert c.node_hostname == "test-robot"
    assert c.hosts_file == Path("/etc/hosts")
    assert c.mtu == 1350
    assert c.offload is True
    assert c.data_plane_nice == -10
    assert c.log_level == "info"
    assert c.whitelist_enabled is True
    assert c.discovery_enabled is True
    assert c.user == "husarnet-ros"
    assert c.config_file is None
    assert c.base_servers == []  # LAN only until base servers are given
    rfc1918 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    for network in [*rfc1918, "198.18.0.0/15", "fe80::/10", "fc00::/7"]:
        assert network in c.discovery_networks


def test_field_names_are_exactly_these() -> None:
    assert set(DaemonConfig.model_fields) == {
        "base_servers",
        "base_tcp_port",
        "offload",
        "state_dir",
        "control_socket",
        "interface",
        "udp_port",
        "hostname",
        "hosts_file",
        "mtu",
        "data_plane_nice",
        "log_level",
        "whitelist_enabled",
        "discovery_networks",
        "discovery_enabled",
        "user",
        "config_file",
    }


def test_default_networks_are_independent_copies() -> None:
    a, b = DaemonConfig(), DaemonConfig()
    a.discovery_networks.append("10.1.0.0/16")
    assert "10.1.0.0/16" not in b.discovery_networks


# --- system hostname ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "expected"),
    [("robot1", "robot1"), ("My_Robot", "my-robot"), ("r1.local", "r1.local"), ("-x-", "x"), ("a..b", "a.b")],
)
def test_default_hostname_is_sanitised(monkeypatch: pytest.MonkeyPatch, system: str, expected: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: system)
    assert default_hostname() == expected


@pytest.mark.parametrize("system", ["", "___", "localhost", "1.2.3.4"])
def test_unusable_system_hostname_asks_for_explicit_one(monkeypatch: pytest.MonkeyPatch, system: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: system)
    with pytest.raises(ConfigError, match="--hostname"):
        DaemonConfig()
    assert DaemonConfig(hostname="robot").hostname == "robot"


# --- field validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("interface", "", "must not be empty"),
        ("interface", "x" * 16, "longer than 15"),
        ("interface", "a/b", "must not contain"),
        ("interface", "a b", "must not contain"),
        ("interface", "a:1", "must not contain"),
        ("interface", "..", "not a valid interface name"),
        ("udp_port", -1, "greater than or equal to 0"),
        ("udp_port", 65536, "less than or equal to 65535"),
        ("udp_port", "abc", "valid integer"),
        ("mtu", 1279, "greater than or equal to 1280"),
        ("mtu", 65001, "less than or equal to 65000"),
        ("data_plane_nice", -21, "greater than or equal to -20"),
        ("data_plane_nice", 20, "less than or equal to 19"),
        ("hostname", "bad_name", "may contain only"),
        ("hostname", "localhost", "reserved"),
        ("log_level", "loud", "not one of"),
        ("discovery_networks", ["10.0.0.0/8", "nonsense"], "'nonsense' is not a network"),
        ("discovery_networks", ["fc94::/16"], "inside the overlay"),
        ("discovery_networks", ["fc94:1::/32"], "inside the overlay"),
        ("whitelist_enabled", "maybe", "valid boolean"),
    ],
)
def test_invalid_values(field: str, value: Any, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        DaemonConfig(**{field: value})
    with pytest.raises(ConfigError, match=rf"{field}.*{fragment}"):
        load_config(None, {field: value})


@pytest.mark.parametrize("name", ["hnet0", "x" * 15, "hnet-robot.1", "tun_a"])
def test_valid_interface_names(name: str) -> None:
    assert DaemonConfig(interface=name).interface == name


def test_udp_port_zero_allowed_for_tests() -> None:
    assert DaemonConfig(udp_port=0).udp_port == 0


def test_mtu_bounds_inclusive() -> None:
    assert DaemonConfig(mtu=1280).mtu == 1280
    assert DaemonConfig(mtu=65000).mtu == 65000


def test_hostname_normalised() -> None:
    assert DaemonConfig(hostname="Robot-1").hostname == "robot-1"


def test_log_level_normalised() -> None:
    assert DaemonConfig(log_level=" DEBUG ").log_level == "debug"


def test_networks_normalised_and_deduplicated() -> None:
    c = DaemonConfig(discovery_networks=["10.1.2.3/8", "10.0.0.0/8", "FD00::1/8"])
    assert c.discovery_networks == ["10.0.0.0/8", "fd00::/8"]


def test_network_containing_overlay_is_allowed() -> None:
    # fc00::/7 contains fc94::/16; overlay sources are excluded by the beacon check, not here.
    assert DaemonConfig(discovery_networks=["fc00::/7"]).discovery_networks == ["fc00::/7"]


def test_paths_expand_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/robot")
    assert DaemonConfig(state_dir="~/state").state_dir == Path("/home/robot/state")  # type: ignore[arg-type]


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        DaemonConfig(udp_prot=1)  # type: ignore[call-arg]
    assert describe_validation_error(info.value) == "invalid configuration: udp_prot: unknown setting"


# --- YAML file ------------------------------------------------------------------------------


def test_documented_example_is_valid_and_matches_defaults() -> None:
    from_file = load_config(EXAMPLE)
    assert from_file.model_dump(exclude={"config_file"}) == DaemonConfig().model_dump(exclude={"config_file"})
    assert from_file.config_file == EXAMPLE


def test_documented_example_covers_every_setting() -> None:
    keys = set(yaml.safe_load(EXAMPLE.read_text()))
    assert keys == set(DaemonConfig.model_fields) - {"config_file"}


def test_file_values_used(tmp_path: Path) -> None:
    path = _write(tmp_path, {"udp_port": 6000, "interface": "hnet1", "discovery_enabled": False})
    c = load_config(path)
    assert (c.udp_port, c.interface, c.discovery_enabled) == (6000, "hnet1", False)
    assert c.mtu == 1350


def test_overrides_win_over_file_and_none_is_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path, {"udp_port": 6000, "mtu": 1400})
    c = load_config(path, {"udp_port": 7000, "mtu": None, "hostname": None})
    assert c.udp_port == 7000
    assert c.mtu == 1400
    assert c.hostname == "test-robot"


def test_constructor_with_config_file_reads_it(tmp_path: Path) -> None:
    # The CLI builds DaemonConfig(**options) directly; the file must still apply under the options.
    path = _write(tmp_path, {"udp_port": 6000, "mtu": 1400})
    c = DaemonConfig(config_file=path, mtu=1500)
    assert (c.udp_port, c.mtu) == (6000, 1500)


def test_config_file_in_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, {"udp_port": 6000})
    assert load_config(None, {"config_file": path}).udp_port == 6000


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")).udp_port == 5582
    assert load_config(_write(tmp_path, "# only a comment\n")).udp_port == 5582


def test_unknown_key_in_file_named_with_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, {"udp-port": 6000})
    expected = r"unknown setting 'udp-port' \(did you mean 'udp_port'\?\)"
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_key_without_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'zzz'; known settings: state_dir"):
        load_config(_write(tmp_path, {"zzz": 1}))


def test_config_file_key_not_allowed_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'config_file'"):
        load_config(_write(tmp_path, {"config_file": "/x"}))


def test_unknown_override_named() -> None:
    with pytest.raises(ConfigError, match=r"overrides: unknown setting 'mut'.*did you mean 'mtu'"):
        load_config(None, {"mut": 1400})


def test_invalid_value_in_file_names_file_and_setting(tmp_path: Path) -> None:
    path = _write(tmp_path, {"mtu": 100})
    with pytest.raises(ConfigError, match=f"in {path}: mtu: Input should be greater than or equal to 1280"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml: No such file"):
        load_config(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_bad_yaml_reports_position(tmp_path: Path) -> None:
    path = _write(tmp_path, "udp_port: 1\nmtu: [1,\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(path)


def test_a_setting_given_twice_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "mtu: 1400\nudp_port: 1\nmtu: 1500\n")
    with pytest.raises(ConfigError, match=r"line 3, column 1: duplicate key 'mtu'"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, text))


def test_python_specific_yaml_tags_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "udp_port: !!python/object/apply:os.getpid []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_huge_file_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "MAX_CONFIG_FILE_SIZE", 10)
    with pytest.raises(ConfigError, match="larger than 10 bytes"):
        load_config(_write(tmp_path, "udp_port: 5582\n"))


def test_read_config_file_returns_raw_values(tmp_path: Path) -> None:
    assert read_config_file(_write(tmp_path, {"mtu": "x"})) == {"mtu": "x"}


def test_several_problems_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"mtu": 1, "udp_port": -5})
    assert "mtu:" in str(info.value)
    assert "udp_port:" in str(info.value)


def test_base_servers_are_checked_and_a_bad_one_is_named() -> None:
    c = DaemonConfig(base_servers=["198.18.100.2", " base.example:443 ", "[fd00:98::2]:5582"])
    assert c.base_servers == ["198.18.100.2", "base.example:443", "[fd00:98::2]:5582"]
    for bad in ["", "host:0", "host:70000", "host:port", "[fd00:98::2"]:
        with pytest.raises(ValidationError, match="base server"):
            DaemonConfig(base_servers=[bad])
