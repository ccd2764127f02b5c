"""The husarnet-ros command, driven through click's runner against the real control server and the real
daemon controller on the in-memory network (husarnet_ros.testing.memnet_daemon)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from husarnet_ros import __version__
from husarnet_ros.api import CONTROL_SOCKET_ENV, PeerStatus
from husarnet_ros.cli.main import cli
from husarnet_ros.core.identity import Identity
from husarnet_ros.daemon.control import ControlServer
from husarnet_ros.testing.fake_controller import FakeController, serve_fake
from husarnet_ros.testing.memnet_daemon import MemNetFleet, ServedFleet, serve, served_fleet

MISSING_SOCKET = "/tmp/hr-no-such-dir/control.sock"
UNHEARD = "fc94::4"  # whitelisted on robot1, but no robot has that address: its path stays none
RTT = r"\d+\.\d+ ms"  # a measured round-trip time as the CLI writes it
WAIT_S = "20"  # bound of the waits that must succeed; never reached when nothing is wrong


@pytest.fixture(autouse=True)
def _no_socket_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTROL_SOCKET_ENV, raising=False)


@pytest.fixture
def daemon() -> Iterator[ServedFleet]:
    """robot1's daemon, served: robot2 is reached directly, UNHEARD is whitelisted and unreachable."""
    with served_fleet("robot1", ("robot2",)) as served:
        served.controller.whitelist_add(UNHEARD)
        yield served


@pytest.fixture
def lonely() -> Iterator[ServedFleet]:
    """robot1's daemon, served, alone on its network, with an empty whitelist."""
    with served_fleet("robot1", ()) as served:
        yield served


@pytest.fixture
def tunnelled() -> Iterator[str]:
    """A daemon with a peer tunnelled through a base server. Faked: no relay exists yet, so the real node
    never reports that path."""
    fake = FakeController()
    fake.add_peer(
        PeerStatus(
            address="fc94::3",
            hostname="robot3",
            path="tunnelled",
            base_server="198.18.0.100:5582",
            rtt_ms=21.5,
            state="established",
        )
    )
    with serve_fake(fake) as (_, socket_path):
        yield socket_path


def run(*args: str, socket: str | None = None, env: dict[str, str] | None = None) -> Result:
    argv = (["--control-socket", socket] if socket else []) + list(args)
    return CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)


def run_json(*args: str, socket: str) -> Any:
    result = run(*args, "--json", socket=socket)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, needle: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert needle in result.stderr
    assert "Traceback" not in result.output


def line_of(out: str, address: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(address + " "))


# --- status and peers -------------------------------------------------------------------------------------


def test_status_table_shows_paths_endpoints_and_rtt(daemon: ServedFleet) -> None:
    result = run("status", socket=daemon.socket_path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert daemon.address in out
    assert "robot1" in out
    for header in ("ADDRESS", "HOSTNAME", "PATH", "ENDPOINT", "RTT", "HANDSHAKE", "RX", "TX"):
        assert header in out
    direct = line_of(out, daemon.fleet.address("robot2"))
    assert direct.split()[1:4] == ["robot2", "direct", "198.18.0.11:5582"]
    assert re.search(RTT, direct), direct
    assert "s ago" in direct
    unreachable = line_of(out, UNHEARD)
    assert unreachable.split()[1:3] == ["-", "none"]
    assert "never" in unreachable


def test_status_table_names_the_base_server_of_a_tunnelled_peer(tunnelled: str) -> None:
    line = line_of(run("status", socket=tunnelled).stdout, "fc94::3")
    assert line.split()[2:5] == ["tunnelled", "198.18.0.100:5582", "21.5"]


def test_status_says_when_the_daemon_is_not_ready(daemon: ServedFleet) -> None:
    daemon.controller.ready = False  # what the daemon reports until its interface is up
    assert "NOT READY" in run("status", socket=daemon.socket_path).stdout


@pytest.mark.parametrize("where", ["global", "subcommand"])
def test_status_json_shape(daemon: ServedFleet, where: str) -> None:
    args = ["--json", "status"] if where == "global" else ["status", "--json"]
    result = run(*args, socket=daemon.socket_path)
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert {"address", "hostname", "whitelist_enabled", "peers"} <= set(status)
    assert status["address"] == daemon.address
    required = {"address", "hostname", "path", "endpoint", "rtt_ms", "last_handshake", "rx_bytes", "tx_bytes"}
    for peer in status["peers"]:
        assert required <= set(peer)
    paths = {p["address"]: p["path"] for p in status["peers"]}
    assert paths == {daemon.fleet.address("robot2"): "direct", UNHEARD: "none"}


def test_peers_table_and_json(daemon: ServedFleet) -> None:
    assert "198.18.0.11:5582" in run("peers", socket=daemon.socket_path).stdout
    peers = run_json("peers", socket=daemon.socket_path)
    assert [p["address"] for p in peers] == [daemon.fleet.address("robot2"), UNHEARD]


def test_no_peers_says_so(lonely: ServedFleet) -> None:
    assert run("peers", socket=lonely.socket_path).stdout.strip() == "no peers yet"


# --- ping -------------------------------------------------------------------------------------------------


def test_ping_direct_prints_one_line_per_reply(daemon: ServedFleet) -> None:
    robot2 = daemon.fleet.address("robot2")
    result = run("ping", "robot2", "-c", "2", "-i", "0.01", socket=daemon.socket_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"PING robot2 ({robot2})"
    for seq, line in enumerate(lines[1:3], start=1):
        expected = rf"reply from {robot2}: seq={seq} time={RTT} \(direct via 198\.18\.0\.11:5582\)"
        assert re.fullmatch(expected, line), line
    assert lines[-1] == "2 sent, 2 received, 0% loss"


def test_ping_tunnelled_names_the_base_server(tunnelled: str) -> None:
    result = run("ping", "fc94::3", "-c", "1", socket=tunnelled)
    assert "(tunnelled via 198.18.0.100:5582)" in result.stdout


def test_ping_without_replies_exits_1(daemon: ServedFleet) -> None:
    result = run("ping", UNHEARD, "-c", "2", "-i", "0.01", "-W", "0.1", socket=daemon.socket_path)
    assert result.exit_code == 1
    assert "seq=1 timed out (no path)" in result.stdout
    assert "2 sent, 0 received, 100% loss" in result.stdout


def test_ping_a_robot_that_was_switched_off_exits_1(daemon: ServedFleet) -> None:
    daemon.fleet.set_online("robot2", False)
    result = run("ping", "robot2", "-c", "1", "-W", "0.3", socket=daemon.socket_path)
    assert result.exit_code == 1
    assert "seq=1 timed out" in result.stdout


def test_ping_json(daemon: ServedFleet) -> None:
    answer = run_json("ping", "robot2", "-c", "3", "-i", "0.01", socket=daemon.socket_path)
    assert answer["address"] == daemon.fleet.address("robot2")
    assert answer["path"] == "direct"
    assert answer["endpoint"] == "198.18.0.11:5582"
    assert [r["seq"] for r in answer["replies"]] == [1, 2, 3]  # numbered as the human output numbers them
    assert (answer["sent"], answer["received"], answer["loss"]) == (3, 3, 0.0)


def test_ping_unknown_hostname(daemon: ServedFleet) -> None:
    assert_one_line_error(run("ping", "robot9", socket=daemon.socket_path), "unknown host 'robot9'")


def test_ping_an_address_not_on_the_whitelist(daemon: ServedFleet) -> None:
    assert_one_line_error(
        run("ping", "fc94::9", socket=daemon.socket_path), "fc94::9 is not on the whitelist"
    )


# --- whitelist and hosts ----------------------------------------------------------------------------------


def test_whitelist_commands(lonely: ServedFleet) -> None:
    sock, controller = lonely.socket_path, lonely.controller
    assert (
        run("whitelist", "add", "FC94:0::2", socket=sock).stdout.strip() == "added fc94::2 to the whitelist"
    )
    assert controller.whitelist().addresses == ["fc94::2"]
    listing = run("whitelist", "ls", socket=sock).stdout
    assert "whitelist enabled, 1 address(es)" in listing
    assert "fc94::2" in listing
    assert run_json("whitelist", "ls", socket=sock) == {"enabled": True, "addresses": ["fc94::2"]}
    assert "disabled" in run("whitelist", "disable", socket=sock).stdout
    assert controller.whitelist().enabled is False
    assert run_json("whitelist", "enable", socket=sock)["enabled"] is True
    assert run_json("whitelist", "rm", "fc94::2", socket=sock) == {"enabled": True, "addresses": []}


def test_whitelist_rm_cuts_a_connected_peer_off_at_once(daemon: ServedFleet) -> None:
    robot2 = daemon.fleet.address("robot2")
    assert run_json("whitelist", "rm", robot2, socket=daemon.socket_path)["addresses"] == [UNHEARD]
    assert robot2 not in [p["address"] for p in run_json("peers", socket=daemon.socket_path)]


def test_whitelist_and_hosts_survive_a_daemon_restart(lonely: ServedFleet) -> None:
    run_json("whitelist", "add", "fc94::2", socket=lonely.socket_path)
    run_json("whitelist", "disable", socket=lonely.socket_path)
    run_json("hosts", "add", "robot5", "fc94::5", socket=lonely.socket_path)
    with serve(lonely.fleet.restart("robot1")) as restarted:
        assert run_json("whitelist", "ls", socket=restarted) == {"enabled": False, "addresses": ["fc94::2"]}
        assert run_json("hosts", "ls", socket=restarted) == [{"hostname": "robot5", "address": "fc94::5"}]


def test_json_flag_on_the_group(lonely: ServedFleet) -> None:
    result = run("whitelist", "--json", "ls", socket=lonely.socket_path)
    assert json.loads(result.stdout) == {"enabled": True, "addresses": []}


def test_whitelist_errors(daemon: ServedFleet) -> None:
    sock = daemon.socket_path
    assert_one_line_error(run("whitelist", "add", "bogus", socket=sock), "'bogus' is not an IPv6 address")
    assert_one_line_error(run("whitelist", "add", "fd00::1", socket=sock), "fc94::/16")
    assert_one_line_error(run("whitelist", "add", daemon.address, socket=sock), "own address")
    assert_one_line_error(run("whitelist", "rm", "fc94::9", socket=sock), "fc94::9 is not on the whitelist")


def test_hosts_commands(lonely: ServedFleet) -> None:
    sock = lonely.socket_path
    hosts_file = lonely.fleet.member("robot1").hosts_file
    assert run("hosts", "ls", socket=sock).stdout.strip() == "no host entries"
    assert run("hosts", "add", "Robot5", "fc94::5", socket=sock).stdout.strip() == "robot5 -> fc94::5"
    assert [(e.hostname, e.address_text) for e in hosts_file.entries] == [("robot5", "fc94::5")]
    assert run("hosts", "ls", socket=sock).stdout.split() == ["fc94::5", "robot5"]
    assert run_json("hosts", "ls", socket=sock) == [{"hostname": "robot5", "address": "fc94::5"}]
    assert run_json("hosts", "rm", "robot5", socket=sock) == []
    assert hosts_file.entries == []
    assert_one_line_error(run("hosts", "rm", "robot5", socket=sock), "no host entry named 'robot5'")
    assert_one_line_error(run("hosts", "add", "bad_name", "fc94::5", socket=sock), "hostname")


def test_a_host_name_is_a_ping_target(daemon: ServedFleet) -> None:
    sock = daemon.socket_path
    run_json("hosts", "add", "base", daemon.fleet.address("robot2"), socket=sock)
    answer = run_json("ping", "base", "-c", "1", socket=sock)
    assert (answer["address"], answer["received"]) == (daemon.fleet.address("robot2"), 1)


# --- wait and logs ----------------------------------------------------------------------------------------


def test_wait_ready_and_peer_reached(daemon: ServedFleet) -> None:
    sock = daemon.socket_path
    assert run("wait", "ready", "--timeout", "1", socket=sock).stdout.strip() == "daemon ready"
    assert run("wait", "peer", "robot2", socket=sock).stdout.strip() == "robot2 reachable"
    assert run_json("wait", "peer", daemon.fleet.address("robot2"), socket=sock) == {"reached": True}


def test_wait_peer_follows_a_robot_switched_on_after_it(lonely: ServedFleet) -> None:
    fleet = lonely.fleet
    fleet.add("robot3")
    fleet.set_online("robot3", False)
    robot3 = fleet.address("robot3")
    lonely.controller.whitelist_add(robot3)
    fleet.member("robot3").controller.whitelist_add(lonely.address)

    def switch_on() -> None:
        fleet.set_online("robot3", True)
        fleet.beacon_now()

    timer = threading.Timer(0.3, switch_on)
    timer.start()
    try:
        result = run("wait", "peer", robot3, "--timeout", WAIT_S, socket=lonely.socket_path)
    finally:
        timer.join()
    assert result.exit_code == 0, result.output
    assert fleet.path("robot1", "robot3") == "direct"


def test_wait_timeout_exits_1_with_a_message(daemon: ServedFleet) -> None:
    sock = daemon.socket_path
    daemon.controller.ready = False  # what the daemon reports until its interface is up
    assert_one_line_error(
        run("wait", "ready", "--timeout", "0", socket=sock), "timed out after 0 s waiting for the daemon"
    )
    assert_one_line_error(
        run("wait", "peer", UNHEARD, "--timeout", "0.05", socket=sock), f"waiting for a path to {UNHEARD}"
    )
    result = run("wait", "peer", UNHEARD, "--timeout", "0", "--json", socket=sock)
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"reached": False}


def test_wait_ready_follows_a_daemon_started_after_it() -> None:
    # What a script does: start the daemon, then wait for it; its socket does not exist yet.
    directory = Path(tempfile.mkdtemp(prefix="hr-cw-", dir="/tmp"))
    path = str(directory / "control.sock")
    with MemNetFleet() as fleet:
        server = ControlServer(fleet.add("robot1"), path, group=None)
        timer = threading.Timer(0.5, server.start)
        timer.start()
        try:
            result = run("wait", "ready", "--timeout", "10", socket=path)
            assert result.exit_code == 0, result.output
            assert result.stdout.strip() == "daemon ready"
            assert result.stderr == ""  # progress only on a terminal
        finally:
            timer.join()
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)


def test_wait_without_a_daemon_times_out_like_any_wait() -> None:
    result = run("wait", "ready", "--timeout", "0.3", "--json", socket=MISSING_SOCKET)
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"reached": False}  # the shape scripts parse
    assert result.stderr.startswith("error: timed out after 0.3 s waiting for the daemon to be ready: ")
    assert f"no socket at {MISSING_SOCKET}" in result.stderr
    text = run("wait", "peer", "robot2", "--timeout", "0.3", socket=MISSING_SOCKET)
    assert_one_line_error(text, "timed out after 0.3 s waiting for a path to robot2: daemon not running")


def test_wait_help_says_what_is_waited_for() -> None:
    for command in (["wait"], ["wait", "ready"], ["wait", "peer"]):
        help_text = " ".join(run(*command, "--help").stdout.split())
        assert "control socket" in help_text, command
    assert "killed daemon" in " ".join(run("wait", "--help").stdout.split())


LONG = "x" * 10_000


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["whitelist", "add", LONG], 1),
        (["whitelist", "rm", LONG], 1),
        (["hosts", "add", LONG, "fc94::2"], 1),
        (["hosts", "rm", LONG], 1),
        (["ping", LONG], 1),
        (["wait", "peer", LONG, "--timeout", "0"], 1),
        (["ping", "robot2", "-c", "9" * 10_000], 2),
        (["logs", "-n", LONG], 2),
        (["daemon", "--log-level", LONG], 2),
    ],
    ids=[
        "whitelist-add",
        "whitelist-rm",
        "hosts-add",
        "hosts-rm",
        "ping",
        "wait-peer",
        "count",
        "lines",
        "level",
    ],
)
def test_errors_never_echo_a_long_argument_in_full(daemon: ServedFleet, args: list[str], code: int) -> None:
    result = run(*args, socket=daemon.socket_path)
    assert result.exit_code == code, result.output[:500]
    assert re.search(r"(.)\1{100}", result.output) is None, result.output[:500]
    assert len(result.stderr) < 1000
    if code == 1:
        assert_one_line_error(result, "…")


def test_a_long_control_socket_path_is_one_bounded_line() -> None:
    result = run("status", socket="/tmp/" + LONG)
    assert_one_line_error(result, "too long for a Unix socket")
    assert len(result.stderr) < 500


def test_logs(daemon: ServedFleet) -> None:
    for message in ("one", "two", "three"):
        daemon.fleet.log("robot1", message)
    lines = run("logs", "-n", "2", socket=daemon.socket_path).stdout.splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["two", "three"]
    assert "INFO husarnet_ros.daemon: two" in lines[0]
    answer = run_json("logs", socket=daemon.socket_path)
    assert [line.rsplit(": ", 1)[1] for line in answer["lines"]] == ["one", "two", "three"]


# --- identity ---------------------------------------------------------------------------------------------


@pytest.fixture
def state_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="hr-cli-", dir="/tmp"))
    yield directory / "state"
    shutil.rmtree(directory, ignore_errors=True)


def test_whoami_asks_the_daemon(daemon: ServedFleet) -> None:
    sock = daemon.socket_path
    assert run("whoami", socket=sock).stdout.splitlines()[0] == daemon.address
    answer = run_json("whoami", socket=sock)
    assert (answer["address"], answer["hostname"]) == (daemon.address, "robot1")


def test_genid_prints_a_valid_identity_file() -> None:
    result = run("genid")
    assert result.exit_code == 0
    identity = Identity.from_file_text(result.stdout)
    assert result.stdout.split()[0] == str(__import__("ipaddress").IPv6Address(identity.address))


def test_genid_output_file_is_0600_and_not_overwritten(state_dir: Path) -> None:
    state_dir.mkdir()
    target = state_dir / "robot.id"
    answer = run_json("genid", "--output", str(target), socket=MISSING_SOCKET)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert Identity.from_file_text(target.read_text()).public_key.hex() == answer["public_key"]
    before = target.read_text()
    assert_one_line_error(run("genid", "-o", str(target)), "exists; pass --force")
    assert target.read_text() == before
    assert run("genid", "-o", str(target), "--force").exit_code == 0
    assert target.read_text() != before


def test_import_identity_then_whoami_from_state_dir(state_dir: Path) -> None:
    source = state_dir.parent / "husarnet-id"
    identity = Identity.generate()
    source.write_text(identity.to_file_text())
    result = run("import-identity", str(source), "--state-dir", str(state_dir), socket=MISSING_SOCKET)
    assert result.exit_code == 0, result.output
    assert "restart the daemon" in result.stdout
    written = state_dir / "identity"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert written.read_text() == identity.to_file_text()
    answer = run_json("whoami", "--state-dir", str(state_dir), socket=MISSING_SOCKET)
    assert answer["public_key"] == identity.public_key.hex()
    assert run("whoami", "--state-dir", str(state_dir)).stdout.strip() == answer["address"]


def test_import_identity_keeps_the_previous_one(state_dir: Path) -> None:
    first, second = Identity.generate(), Identity.generate()
    for name, ident in (("a", first), ("b", second)):
        (state_dir.parent / name).write_text(ident.to_file_text())
    args = ("--state-dir", str(state_dir))
    assert run("import-identity", str(state_dir.parent / "a"), *args, socket=MISSING_SOCKET).exit_code == 0
    answer = run_json("import-identity", str(state_dir.parent / "b"), *args, socket=MISSING_SOCKET)
    assert answer["previous_address"] is not None
    assert (state_dir / "identity.previous").read_text() == first.to_file_text()
    assert (state_dir / "identity").read_text() == second.to_file_text()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("garbage\n", "found 1 field"),
        ("fc94::1 00 00\n", "public key has 1 bytes"),
        (None, "cannot read identity file"),
    ],
)
def test_import_identity_rejects_bad_files(state_dir: Path, content: str | None, needle: str) -> None:
    source = state_dir.parent / "bad-id"
    if content is not None:
        source.write_text(content)
    result = run("import-identity", str(source), "--state-dir", str(state_dir), socket=MISSING_SOCKET)
    assert_one_line_error(result, needle)
    assert not (state_dir / "identity").exists()


def test_import_identity_with_a_mismatched_address_is_refused(state_dir: Path) -> None:
    identity = Identity.generate()
    parts = identity.to_file_text().split()
    source = state_dir.parent / "tampered"
    source.write_text(f"fc94::1234 {parts[1]} {parts[2]}\n")
    result = run("import-identity", str(source), "--state-dir", str(state_dir), socket=MISSING_SOCKET)
    assert_one_line_error(result, "does not match the public key")


def test_import_identity_refuses_while_a_daemon_answers(lonely: ServedFleet, state_dir: Path) -> None:
    sock = lonely.socket_path
    source = state_dir.parent / "id"
    source.write_text(Identity.generate().to_file_text())
    args = ("import-identity", str(source), "--state-dir", str(state_dir))
    assert_one_line_error(run(*args, socket=sock), "a daemon is running")
    assert not (state_dir / "identity").exists()
    assert run(*args, "--force", socket=sock).exit_code == 0
    assert (state_dir / "identity").exists()


# --- failures, usage, version ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["peers"],
        ["ping", "robot2"],
        ["whitelist", "ls"],
        ["whitelist", "add", "fc94::2"],
        ["whitelist", "rm", "fc94::2"],
        ["whitelist", "enable"],
        ["whitelist", "disable"],
        ["hosts", "ls"],
        ["hosts", "add", "robot2", "fc94::2"],
        ["hosts", "rm", "robot2"],
        ["wait", "ready", "--timeout", "0.2"],  # a wait says so once its time is up
        ["wait", "peer", "fc94::2", "--timeout", "0.2"],
        ["logs"],
        ["whoami"],
        ["status", "--json"],
    ],
)
def test_daemon_not_running_is_one_clear_line(args: list[str]) -> None:
    result = run(*args, socket=MISSING_SOCKET)
    assert_one_line_error(result, f"daemon not running (no socket at {MISSING_SOCKET})")
    assert "husarnet-ros daemon" in result.stderr
    assert "--control-socket" in result.stderr
    assert result.stdout == ""


def test_control_socket_from_environment(lonely: ServedFleet) -> None:
    result = run("whoami", env={CONTROL_SOCKET_ENV: lonely.socket_path})
    assert result.stdout.splitlines()[0] == lonely.address


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["ping"],
        ["ping", "robot2", "-c", "0"],
        ["ping", "robot2", "-i", "abc"],
        ["ping", "robot2", "-W", "1000"],
        ["whitelist"],
        ["whitelist", "add"],
        ["whitelist", "frobnicate"],
        ["hosts", "add", "robot2"],
        ["wait", "peer"],
        ["wait", "ready", "--timeout", "-1"],
        ["logs", "-n", "0"],
        ["status", "--bogus"],
        ["daemon", "--udp-port", "70000"],
        ["daemon", "--discovery-networks", "10.0.0.0/8,not-a-net"],
        ["daemon", "--log-level", "chatty"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args, socket=MISSING_SOCKET)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_every_command_has_help_with_an_example() -> None:
    commands = [
        ["status"], ["peers"], ["ping"], ["whitelist"], ["whitelist", "ls"], ["whitelist", "add"],
        ["whitelist", "rm"], ["whitelist", "enable"], ["whitelist", "disable"], ["hosts"], ["hosts", "ls"],
        ["hosts", "add"], ["hosts", "rm"], ["wait"], ["wait", "ready"], ["wait", "peer"], ["logs"], ["genid"],
        ["whoami"], ["import-identity"], ["daemon"], ["version"], [],
    ]  # fmt: skip
    for command in commands:
        result = run(*command, "--help")
        assert result.exit_code == 0, command
        assert "husarnet-ros " in result.stdout.split("Example", 1)[1], command


def test_version_with_and_without_a_daemon(lonely: ServedFleet) -> None:
    assert run_json("version", socket=lonely.socket_path) == {
        "version": __version__,
        "daemon_version": __version__,
    }
    assert run_json("version", socket=MISSING_SOCKET) == {"version": __version__, "daemon_version": None}
    result = run("version", socket=MISSING_SOCKET)
    assert result.exit_code == 0
    assert f"husarnet-ros {__version__}" in result.stdout
    assert "daemon not running" in result.stdout


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.getMessage()} {record.exc_info}")


def test_a_daemon_side_bug_is_reported_in_one_line(
    lonely: ServedFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from husarnet_ros.daemon import control

    def broken_status() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(lonely.controller, "status", broken_status)  # a bug in the daemon, injected

    # A handler of our own keeps the in-process server's traceback out of the CLI's stderr, whatever
    # logging setup the test environment has (launch's logger class disables propagation).
    collect = _Collect()
    control.log.addHandler(collect)
    try:
        result = run("status", socket=lonely.socket_path)
        assert_one_line_error(result, "internal error in the daemon (RuntimeError)")
    finally:
        control.log.removeHandler(collect)
    assert any("boom" in message for message in collect.messages)  # the details went to the daemon log


def test_a_cli_side_bug_is_one_line_unless_debugging(
    lonely: ServedFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import husarnet_ros.cli.network as network

    def explode(*_: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(network.render, "print_status", explode)
    assert_one_line_error(run("status", socket=lonely.socket_path), "unexpected KeyError")


def test_real_process_exit_codes_and_no_traceback() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop(CONTROL_SOCKET_ENV, None)
    base = [sys.executable, "-m", "husarnet_ros.cli", "--control-socket", MISSING_SOCKET]
    failed = subprocess.run([*base, "status"], capture_output=True, text=True, env=env, timeout=60)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: daemon not running")
    assert "Traceback" not in failed.stderr
    usage = subprocess.run([*base, "ping"], capture_output=True, text=True, env=env, timeout=60)
    assert usage.returncode == 2
    ok = subprocess.run([*base, "version"], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0


# --- the daemon command -----------------------------------------------------------------------------------


def test_daemon_config_from_options_maps_names_and_drops_unset() -> None:
    from husarnet_ros.cli.daemon import daemon_config_from_options

    assert daemon_config_from_options(
        state_dir="/tmp/s",
        control_socket="/tmp/c.sock",
        interface="hnet1",
        udp_port=5590,
        hostname="robot1",
        hosts_file="/tmp/hosts",
        config="/tmp/robot.yaml",
        mtu=1400,
        log_level="debug",
        whitelist=False,
        discovery_networks="10.0.0.0/8, fd00::/8",
    ) == {
        "state_dir": "/tmp/s",
        "control_socket": "/tmp/c.sock",
        "interface": "hnet1",
        "udp_port": 5590,
        "hostname": "robot1",
        "hosts_file": "/tmp/hosts",
        "config_file": "/tmp/robot.yaml",
        "mtu": 1400,
        "log_level": "debug",
        "whitelist_enabled": False,
        "discovery_networks": ["10.0.0.0/8", "fd00::/8"],
    }
    assert daemon_config_from_options(interface=None, mtu=None, whitelist=None) == {}


@pytest.fixture
def fake_service(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A stand-in for service.run, recording the DaemonConfig the command passes."""
    received: list[Any] = []

    def run_daemon(config: Any) -> int:
        received.append(config)
        return 0

    monkeypatch.setitem(sys.modules, "husarnet_ros.daemon.service", types.SimpleNamespace(run=run_daemon))
    return received


def test_daemon_command_builds_the_config(fake_service: list[Any], state_dir: Path) -> None:
    config_file = state_dir.parent / "daemon.yaml"
    config_file.write_text("interface: hnet7\nudp_port: 6000\nmtu: 1400\n")
    result = run(
        "daemon", "--state-dir", str(state_dir), "--udp-port", "5590", "--no-whitelist",
        "--hostname", "Robot1", "--discovery-networks", "198.18.0.0/15", "--log-level", "DEBUG",
        "--config", str(config_file),
        socket="/tmp/hr-x.sock",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [config] = fake_service
    assert config.state_dir == state_dir
    assert str(config.control_socket) == "/tmp/hr-x.sock"  # the global option reaches the daemon
    assert config.udp_port == 5590  # the command line wins over the file
    assert (config.interface, config.mtu) == ("hnet7", 1400)  # the file wins over the defaults
    assert config.whitelist_enabled is False
    assert config.hostname == "robot1"
    assert config.discovery_networks == ["198.18.0.0/15"]
    assert config.log_level == "debug"


def test_daemon_command_reports_a_bad_config_in_one_line(fake_service: list[Any], state_dir: Path) -> None:
    config_file = state_dir.parent / "daemon.yaml"
    config_file.write_text("interfase: hnet7\n")
    result = run("daemon", "--config", str(config_file))
    assert_one_line_error(result, "unknown setting 'interfase' (did you mean 'interface'?)")
    assert fake_service == []


def test_import_identity_refuses_while_the_state_dir_is_locked(state_dir: Path) -> None:
    from husarnet_ros.daemon.state import StateDir

    source = state_dir.parent / "id"
    source.write_text(Identity.generate().to_file_text())
    args = ("import-identity", str(source), "--state-dir", str(state_dir))
    with StateDir(state_dir):  # what a daemon with another control socket (another namespace) holds
        assert_one_line_error(run(*args, socket=MISSING_SOCKET), "is in use by another husarnet-ros daemon")
        assert not (state_dir / "identity").exists()
        assert run(*args, "--force", socket=MISSING_SOCKET).exit_code == 0
    assert (state_dir / "identity").read_text() == source.read_text()
