"""Base servers changed at run time, end to end but for the network: the saved list (state directory), the
daemon's controller on the in-memory network, the control API, the client, `husarnet-ros base`, and the
BaseConnector taking a new list (against a real, in-memory BaseServer)."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from fixed_identities import fixed_identity

from husarnet_ros.api import CONTROL_SOCKET_ENV
from husarnet_ros.cli.main import cli
from husarnet_ros.client import ControlClient, ControlError, NotFound
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.node import Node
from husarnet_ros.core.peer import Endpoint
from husarnet_ros.daemon import state as state_module
from husarnet_ros.daemon.base_connector import MAX_BASE_SERVERS, BaseConnector
from husarnet_ros.daemon.controller import BadValue, Conflict, StorageError
from husarnet_ros.daemon.controller import NotFound as ControllerNotFound
from husarnet_ros.daemon.state import StateDir, StateError
from husarnet_ros.server.registry import BaseServer
from husarnet_ros.testing.memnet_daemon import MemNetFleet, ServedFleet, served_fleet

BASE_A = "198.18.1.1:5582"
BASE_B = "198.18.1.2:7000"


@pytest.fixture(autouse=True)
def _no_socket_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTROL_SOCKET_ENV, raising=False)


@pytest.fixture
def served() -> Iterator[ServedFleet]:
    """robot1's daemon, served, alone, with no base server."""
    with served_fleet("robot1", ()) as fleet:
        yield fleet


def _saved(fleet: MemNetFleet, hostname: str = "robot1") -> Any:
    return json.loads((fleet.member(hostname).state_dir / "base_servers.json").read_text())


# --- the saved list -------------------------------------------------------------------------------------


def test_never_saved_means_none_so_the_configured_list_applies(tmp_path: Path) -> None:
    assert StateDir(tmp_path / "state").load_base_servers() is None


def test_saved_list_round_trip_in_one_spelling(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.save_base_servers(["Base.Example.COM", "198.18.1.1:7000", "[FD00:98:0::100]", "fd00:98::1"])
    assert state.load_base_servers() == [
        "base.example.com:5582",
        "198.18.1.1:7000",
        "[fd00:98::100]:5582",
        "[fd00:98::1]:5582",
    ]
    state.save_base_servers([])
    assert state.load_base_servers() == []  # an emptied list is a choice too: it still wins over the config


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        '{"version": 2, "servers": []}',
        '{"version": 1, "servers": "base:5582"}',
        '{"version": 1, "servers": ["base:port"]}',
        '{"version": 1, "servers": [], "extra": 1}',
    ],
)
def test_a_damaged_saved_list_is_an_error_naming_the_file_and_left_alone(
    tmp_path: Path, content: str
) -> None:
    state = StateDir(tmp_path / "state")
    state.base_servers_path.write_text(content)
    with pytest.raises(StateError, match=r"base_servers\.json is damaged"):
        state.load_base_servers()
    assert state.base_servers_path.read_text() == content


# --- the controller -------------------------------------------------------------------------------------


def test_add_and_remove_are_saved_and_listed_in_order(fleet: MemNetFleet) -> None:
    robot = fleet.add("robot1")
    robot.base_add(BASE_B)
    robot.base_add("198.18.1.1")
    assert [s.address for s in robot.base_servers()] == [BASE_B, BASE_A]
    assert _saved(fleet) == {"version": 1, "servers": [BASE_B, BASE_A]}
    # No BaseConnector on the in-memory network: nothing resolves a name into a link there.
    assert {s.state for s in robot.base_servers()} == {"unresolved"}
    assert robot.status().base_servers == robot.base_servers()
    robot.base_add("198.18.1.2:7000")  # again: no error, no change
    assert _saved(fleet)["servers"] == [BASE_B, BASE_A]
    robot.base_remove("198.18.1.2:7000")
    assert [s.address for s in robot.base_servers()] == [BASE_A]
    assert _saved(fleet)["servers"] == [BASE_A]
    with pytest.raises(ControllerNotFound, match=r"198\.18\.1\.2:7000 is not a base server"):
        robot.base_remove(BASE_B)


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("base:port", "port 'port' is not a number"),
        ("base:0", "out of range"),
        ("", "empty"),
        ("two words", "neither an IP address nor a valid host name"),
        ("[a:b]:5582", "neither an IP address nor a valid host name"),
    ],
)
def test_an_address_that_does_not_parse_is_refused_and_nothing_is_saved(
    fleet: MemNetFleet, address: str, needle: str
) -> None:
    robot = fleet.add("robot1")
    with pytest.raises(BadValue, match=needle):
        robot.base_add(address)
    assert robot.base_servers() == []
    assert not (fleet.member("robot1").state_dir / "base_servers.json").exists()


def test_at_most_max_base_servers(fleet: MemNetFleet) -> None:
    robot = fleet.add("robot1")
    for i in range(MAX_BASE_SERVERS):
        robot.base_add(f"198.18.2.{i + 1}")
    with pytest.raises(Conflict, match=f"at most {MAX_BASE_SERVERS}"):
        robot.base_add("198.18.3.1")
    robot.base_add("198.18.2.1")  # one already there is still no error
    assert len(robot.base_servers()) == MAX_BASE_SERVERS


def test_a_change_that_cannot_be_saved_changes_nothing(
    fleet: MemNetFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    robot = fleet.add("robot1")
    robot.base_add(BASE_A)

    def full_disk(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module, "atomic_write_text", full_disk)
    with pytest.raises(StorageError, match="nothing was changed"):
        robot.base_add(BASE_B)
    with pytest.raises(StorageError):
        robot.base_remove(BASE_A)
    assert [s.address for s in robot.base_servers()] == [BASE_A]
    assert _saved(fleet)["servers"] == [BASE_A]


# --- the control API ------------------------------------------------------------------------------------


def test_api_routes(served: ServedFleet) -> None:
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=served.socket_path), base_url="http://daemon", timeout=10
    ) as http:
        assert http.get("/v1/base").json() == []
        added = http.post("/v1/base", json={"address": "198.18.1.1"})
        assert added.status_code == 200
        assert [s["address"] for s in added.json()] == [BASE_A]
        assert set(added.json()[0]) == {
            "address",
            "transport",
            "state",
            "home",
            "rtt_ms",
            "observed_endpoint",
        }
        assert http.post("/v1/base", json={"address": BASE_A}).json() == added.json()  # duplicate: no-op
        bad = http.post("/v1/base", json={"address": "base:port"})
        assert bad.status_code == 400
        assert bad.json() == {"error": "base server 'base:port': port 'port' is not a number"}
        assert http.post("/v1/base", json={"address": 5582}).status_code == 422  # not even a string
        assert http.post("/v1/base", json={}).status_code == 422
        missing = http.delete("/v1/base/198.18.9.9")
        assert missing.status_code == 404
        assert "198.18.9.9:5582 is not a base server" in missing.json()["error"]
        assert http.delete("/v1/base/198.18.1.1:5582").json() == []
        assert http.get("/v1/status").json()["base_servers"] == []


def test_api_refuses_a_full_list_with_409(served: ServedFleet) -> None:
    for i in range(MAX_BASE_SERVERS):
        served.controller.base_add(f"198.18.2.{i + 1}")
    with ControlClient(served.socket_path) as client, pytest.raises(ControlError) as refused:
        client.base_add("198.18.3.1")
    assert refused.value.status == 409
    assert f"at most {MAX_BASE_SERVERS}" in str(refused.value)


# --- the client -----------------------------------------------------------------------------------------


def test_client_calls(served: ServedFleet) -> None:
    with ControlClient(served.socket_path) as client:
        assert client.base_servers() == []
        assert [s.address for s in client.base_add("[fd00:98::100]:6000")] == ["[fd00:98::100]:6000"]
        assert [s.address for s in client.base_add(BASE_B)] == ["[fd00:98::100]:6000", BASE_B]
        assert [s.address for s in client.base_remove("[FD00:98::100]:6000")] == [BASE_B]
        with pytest.raises(NotFound):
            client.base_remove("[fd00:98::100]:6000")
        with pytest.raises(ControlError) as bad:
            client.base_add("base:99999")
        assert bad.value.status == 400


# --- the command ----------------------------------------------------------------------------------------


def _run(socket: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--control-socket", socket, *args], catch_exceptions=False)


def test_cli_add_ls_rm(served: ServedFleet) -> None:
    sock = served.socket_path
    empty = _run(sock, "base", "ls")
    assert empty.exit_code == 0
    assert "no base servers" in empty.stdout
    added = _run(sock, "base", "add", "198.18.1.1")
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == f"added base server {BASE_A}"
    again = _run(sock, "base", "add", "198.18.1.1:5582")
    assert "already a base server; nothing changed" in again.stdout
    table = _run(sock, "base", "ls").stdout.splitlines()
    assert table[0].split() == ["ADDRESS", "TRANSPORT", "STATE", "HOME", "RTT", "OBSERVED", "ENDPOINT"]
    assert table[1].split() == [BASE_A, "udp", "unresolved", "-", "-", "-"]
    listed = json.loads(_run(sock, "base", "ls", "--json").stdout)
    assert [s["address"] for s in listed] == [BASE_A]
    removed = _run(sock, "base", "rm", "198.18.1.1", "--json")
    assert json.loads(removed.stdout) == []
    assert _run(sock, "--json", "base", "ls").stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("base", "add", "base:port"), "port 'port' is not a number"),
        (("base", "rm", "198.18.9.9"), "198.18.9.9:5582 is not a base server of this daemon"),
    ],
)
def test_cli_errors_are_one_line(served: ServedFleet, args: tuple[str, ...], needle: str) -> None:
    result = _run(served.socket_path, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert needle in result.stderr


def test_cli_help_says_what_wins_and_shows_examples() -> None:
    group = CliRunner().invoke(cli, ["base", "--help"])
    assert group.exit_code == 0
    assert "husarnet-ros base add base.example.com" in group.stdout
    assert "saved list is used at every start" in " ".join(group.stdout.split())
    for command in ("ls", "add", "rm"):
        result = CliRunner().invoke(cli, ["base", command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.stdout


# --- the BaseConnector ----------------------------------------------------------------------------------

ROBOT_AT: Endpoint = ("198.18.0.10", 5582)


class _RecordingTransport:
    """What the connector uses of the UDP transport: every datagram sent and the relay it was told."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Endpoint]] = []
        self.relay: Endpoint | None = None

    def sendto(self, data: bytes, endpoint: Endpoint) -> None:
        self.sent.append((data, endpoint))

    def set_relay(self, endpoint: Endpoint | None) -> None:
        self.relay = endpoint


def _connector(
    identity: Identity, servers: list[str], now: float
) -> tuple[BaseConnector, _RecordingTransport]:
    transport = _RecordingTransport()
    node = Node(identity, lambda _: True)
    connector = BaseConnector(
        node,
        identity,
        transport,  # type: ignore[arg-type]  # a stand-in with the two methods the connector calls
        servers,
        wanted_peers=list,
        local_endpoints=lambda: [ROBOT_AT],
        now=now,
    )
    return connector, transport


def _answer(
    connector: BaseConnector, transport: _RecordingTransport, servers: dict[Endpoint, BaseServer], now: float
) -> None:
    """Hand what the connector sent to the in-memory base servers, and their answers back to it."""
    sent, transport.sent = transport.sent, []
    for data, endpoint in sent:
        server = servers.get(endpoint)
        if server is not None:
            for to, answer in server.receive(data, ROBOT_AT, now):
                assert to == ROBOT_AT
                connector.inbox.append((answer, endpoint))


def test_with_no_base_server_the_connector_sends_nothing() -> None:
    connector, transport = _connector(fixed_identity("connector idle"), [], now=100.0)
    for step in range(100):
        connector.round(100.0 + step * 0.5)
    assert transport.sent == []
    assert transport.relay is None
    assert connector.endpoints == frozenset()
    assert connector.status()["state"] == "none"


def test_set_servers_registers_a_new_server_and_keeps_the_known_one() -> None:
    identity = fixed_identity("connector runtime")
    a: Endpoint = ("198.18.1.1", 5582)
    b: Endpoint = ("198.18.1.2", 7000)
    servers = {a: BaseServer(), b: BaseServer()}
    now = 100.0
    connector, transport = _connector(identity, [], now)
    connector.set_servers([BASE_A], now)
    for _ in range(4):
        connector.round(now)
        _answer(connector, transport, servers, now)
    assert connector.client.home is not None
    assert connector.client.home.endpoint == a
    assert transport.relay == a
    kept = connector.client.links[0]

    connector.set_servers([BASE_A, BASE_B], now)
    assert connector.client.links[0] is kept  # registration and RTT kept
    assert connector.endpoints == frozenset({a, b})
    for _ in range(4):
        connector.round(now)
        _answer(connector, transport, servers, now)
    assert [link["state"] for link in connector.client.status()] == ["registered", "registered"]

    connector.set_servers([BASE_B], now)  # the home goes: the other registered one takes over at once
    assert connector.client.home is not None
    assert connector.client.home.endpoint == b
    assert transport.relay == b

    connector.set_servers([], now)  # none left: no relay, nothing sent any more
    assert connector.client.home is None
    assert transport.relay is None
    assert connector.endpoints == frozenset()
    transport.sent.clear()
    for step in range(20):
        connector.round(now + step)
    assert transport.sent == []
