"""Doctor checks (pure, and against the real daemon controller on the in-memory network: robot1 served,
robot2 its whitelisted, directly reached peer) and the ros2doctor entry points as ros2doctor loads them."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sample_status import make_status

from husarnet_ros import dds
from husarnet_ros.api import BaseServerStatus
from husarnet_ros.cli.main import main as cli_main
from husarnet_ros.ros import doctor
from husarnet_ros.testing.memnet_daemon import ServedFleet, served_fleet

# For the checks that run without a daemon.
OWN = "fc94::1"
PEER = "fc94::2"


@pytest.fixture
def daemon() -> Iterator[ServedFleet]:
    with served_fleet("robot1", ("robot2",)) as served:
        yield served


def _has(addresses: list[str]) -> Callable[[str], list[str] | None]:
    return lambda _ifname: addresses


def _fastdds_env(tmp_path: Path, own: str, peers: list[str]) -> dict[str, str]:
    return dds.write_config(tmp_path, own, peers, rmw="fastdds")


# --- daemon and interface ---------------------------------------------------------------------------------


def test_daemon_check_reports_address_when_up_and_a_hint_when_down(daemon: ServedFleet) -> None:
    status, path = doctor.query_daemon(daemon.socket_path)
    up = doctor.check_daemon(status, path)
    assert up.level == "ok"
    assert up.details["address"] == daemon.address
    missing, path = doctor.query_daemon("/tmp/hr-no-such-dir/control.sock")
    down = doctor.check_daemon(missing, path)
    assert down.failed
    assert "/tmp/hr-no-such-dir/control.sock" in down.summary
    assert "husarnet-ros daemon" in down.details["hint"]


def test_daemon_not_ready_is_a_warning(daemon: ServedFleet) -> None:
    daemon.controller.ready = False  # what the daemon reports until its interface is up
    assert doctor.check_daemon(*doctor.query_daemon(daemon.socket_path)).level == "warn"


def test_interface_check_wants_the_daemons_own_address(daemon: ServedFleet) -> None:
    status, _ = doctor.query_daemon(daemon.socket_path)
    good = doctor.check_interface(status, _has(["fe80::1", daemon.address.upper()]))  # any spelling
    assert good.level == "ok"
    wrong = doctor.check_interface(status, _has(["fe80::1", "fc94::99"]))
    assert wrong.failed
    assert daemon.address in wrong.summary
    assert doctor.check_interface(status, lambda _ifname: None).failed  # no such interface


def test_interface_check_without_daemon() -> None:
    assert doctor.check_interface(None, _has(["fc94::7"])).level == "warn"
    assert doctor.check_interface(None, _has(["fe80::1"])).failed

    def broken(_ifname: str) -> list[str] | None:
        raise PermissionError("netlink refused")

    assert "netlink refused" in doctor.check_interface(None, broken).summary


def test_base_is_information_only_while_no_base_server_is_configured() -> None:
    result = doctor.check_base(None)
    assert result.level == "info"
    assert "no base server" in result.summary
    assert doctor.check_base(make_status([])).level == "info"


@pytest.mark.parametrize(("state", "level"), [("registered", "ok"), ("down", "warn"), ("connecting", "warn")])
def test_base_reports_the_base_server_in_use(state: str, level: str) -> None:
    base = BaseServerStatus(address="198.18.100.2:5582", transport="tcp", state=state, home=True, rtt_ms=3.0)
    result = doctor.check_base(make_status([]).model_copy(update={"base": base, "base_servers": [base]}))
    assert result.level == level
    assert "198.18.100.2:5582" in result.summary
    assert result.details["transport"] == "tcp"


# --- DDS ----------------------------------------------------------------------------------------------------


def test_dds_profile_for_fastdds_listing_the_peers_is_ok(tmp_path: Path, daemon: ServedFleet) -> None:
    status, _ = doctor.query_daemon(daemon.socket_path)
    robot2 = daemon.fleet.address("robot2")
    result = doctor.check_dds(_fastdds_env(tmp_path, daemon.address, [robot2]), status)
    assert result.level == "ok", result
    assert result.details["peers"] == robot2  # the own address is not counted as a peer


def test_dds_missing_a_whitelisted_peer_is_a_warning(tmp_path: Path, daemon: ServedFleet) -> None:
    status, _ = doctor.query_daemon(daemon.socket_path)
    result = doctor.check_dds(_fastdds_env(tmp_path, daemon.address, ["fc94::3"]), status)
    assert result.level == "warn"
    assert result.details["missing"] == daemon.fleet.address("robot2")


def test_dds_profile_listing_only_the_own_address_is_a_warning(tmp_path: Path, daemon: ServedFleet) -> None:
    status, _ = doctor.query_daemon(daemon.socket_path)
    result = doctor.check_dds(_fastdds_env(tmp_path, daemon.address, []), status)
    assert result.level == "warn"
    assert "no overlay peers" in result.summary


@pytest.mark.parametrize("only", dds.FASTDDS_PROFILES_ENVS)
def test_dds_profile_named_for_one_fast_dds_generation_only_is_a_warning(
    tmp_path: Path, daemon: ServedFleet, only: str
) -> None:
    """Fast DDS 2.x (Humble, Jazzy) and 3.x (Kilted) read different variables: both must be set."""
    status, _ = doctor.query_daemon(daemon.socket_path)
    env = _fastdds_env(tmp_path, daemon.address, [daemon.fleet.address("robot2")])
    other = next(name for name in dds.FASTDDS_PROFILES_ENVS if name != only)
    env = {name: value for name, value in env.items() if name != other}
    result = doctor.check_dds(env, status)
    assert result.level == "warn", result
    assert f"only {only} is set" in result.summary


def test_dds_unset_or_for_the_other_middleware_is_an_error(tmp_path: Path) -> None:
    unset = doctor.check_dds({}, None)
    assert unset.failed
    assert "FASTDDS_DEFAULT_PROFILES_FILE is not set" in unset.summary
    cyclone_env = dds.write_config(tmp_path, OWN, [PEER], rmw="cyclonedds")
    mismatch = doctor.check_dds(cyclone_env, None)  # RMW unset = Fast DDS, but only Cyclone is configured
    assert mismatch.failed
    assert "CYCLONEDDS_URI is set" in mismatch.summary


def test_dds_cyclonedds_uri_as_file_uri_path_or_inline(tmp_path: Path) -> None:
    env = dds.write_config(tmp_path, OWN, [PEER], rmw="cyclonedds", set_rmw_implementation=True)
    assert env["CYCLONEDDS_URI"].startswith("file://")
    assert doctor.check_dds(env, None).level == "ok"
    plain_path = {**env, "CYCLONEDDS_URI": str(tmp_path / dds.CYCLONEDDS_FILE)}
    assert doctor.check_dds(plain_path, None).level == "ok"
    inline = {**env, "CYCLONEDDS_URI": dds.render_cyclonedds_xml(OWN, [PEER])}
    # Without a daemon the own address is not known: every address of the file is listed.
    assert doctor.check_dds(inline, None).details["peers"] == f"{OWN}, {PEER}"


def test_dds_unreadable_or_invalid_profile_is_an_error(tmp_path: Path) -> None:
    missing = doctor.check_dds({"FASTDDS_DEFAULT_PROFILES_FILE": str(tmp_path / "none.xml")}, None)
    assert missing.failed
    assert "cannot be read" in missing.summary
    bad = tmp_path / "bad.xml"
    bad.write_text("<dds><profiles>")
    assert "not valid XML" in doctor.check_dds({"FASTDDS_DEFAULT_PROFILES_FILE": str(bad)}, None).summary
    entity = tmp_path / "entity.xml"
    entity.write_text('<!DOCTYPE x [<!ENTITY a "fc94::2">]><dds>&a;</dds>')
    assert doctor.check_dds({"FASTDDS_DEFAULT_PROFILES_FILE": str(entity)}, None).failed


def test_unknown_rmw_is_a_warning() -> None:
    assert doctor.check_dds({"RMW_IMPLEMENTATION": "rmw_zenoh_cpp"}, None).level == "warn"


def test_peer_parsers_read_what_the_dds_module_writes() -> None:
    peers = ["fc94::3", "fc94::2"]
    assert doctor.fastdds_peers(dds.render_fastdds_xml(OWN, peers)) == [OWN, "fc94::2", "fc94::3"]
    assert doctor.cyclonedds_peers(dds.render_cyclonedds_xml(OWN, peers)) == [OWN, "fc94::2", "fc94::3"]


# --- all together: CLI and ros2doctor entry points ----------------------------------------------------------


def _configure_like_robot1(daemon: ServedFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DDS profile naming robot1 and its peer, and an hnet0 with robot1's address."""
    own, peers = daemon.address, [daemon.fleet.address("robot2")]
    for name, value in _fastdds_env(tmp_path, own, peers).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RMW_IMPLEMENTATION", raising=False)
    monkeypatch.setattr(doctor, "interface_addresses", _has([own]))


def test_cli_doctor_json(
    tmp_path: Path,
    daemon: ServedFleet,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    socket_path = daemon.socket_path
    _configure_like_robot1(daemon, tmp_path, monkeypatch)
    assert cli_main(["--control-socket", socket_path, "doctor", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is True
    assert [c["name"] for c in answer["checks"]] == ["daemon", "interface", "base", "dds"]
    monkeypatch.setattr(doctor, "interface_addresses", _has([]))
    assert cli_main(["--control-socket", socket_path, "doctor"]) == 1
    assert "[FAIL] interface" in capsys.readouterr().out


def _entry_point(group: str) -> importlib.metadata.EntryPoint:
    found = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == "husarnet"]
    assert found, f"no `husarnet` entry point in {group}: reinstall with scripts/setup.sh"
    return found[0]


def test_ros2doctor_entry_points_load_and_run(
    tmp_path: Path, daemon: ServedFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUSARNET_ROS_CONTROL_SOCKET", daemon.socket_path)
    _configure_like_robot1(daemon, tmp_path, monkeypatch)
    # As ros2doctor's run_checks / generate_reports do: load, instantiate, category(), check() / report().
    check = _entry_point("ros2doctor.checks").load()()
    assert check.category() == "husarnet"
    result = check.check()
    assert (result.error, result.warning) == (0, 0)
    report = _entry_point("ros2doctor.report").load()()
    assert report.category() == "husarnet"
    content = report.report()
    assert content.name == "HUSARNET"
    items = dict(content.items)
    assert items["daemon"].startswith("ok:")
    assert items["daemon.address"] == daemon.address
    # A broken setup counts as errors, which is what makes `ros2 doctor` report the category as failed.
    monkeypatch.setenv("HUSARNET_ROS_CONTROL_SOCKET", "/tmp/hr-no-such-dir/control.sock")
    for name in dds.FASTDDS_PROFILES_ENVS:
        monkeypatch.delenv(name)
    assert check.check().error >= 2
