"""Peers' static endpoints (WireGuard's ``Endpoint``), end to end but for the network: the parser, the node's
static candidates (added, removed, kept while in use), the saved list (state directory), the daemon's
controller on the in-memory network, the control API, the client and `husarnet-ros endpoint`."""

from __future__ import annotations

import errno
import json
import re
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
from husarnet_ros.core.address import format_address, parse_overlay
from husarnet_ros.core.peer import CandidateSource, Endpoint, PathKind
from husarnet_ros.core.peer_endpoint import (
    MAX_STATIC_ENDPOINTS_PER_PEER,
    EndpointError,
    PeerEndpoint,
    StaticEndpoint,
    parse_peer_endpoint,
)
from husarnet_ros.daemon import state as state_module
from husarnet_ros.daemon.controller import BadValue, Conflict, InvalidRequest, StorageError
from husarnet_ros.daemon.controller import NotFound as ControllerNotFound
from husarnet_ros.daemon.node_controller import NodeController
from husarnet_ros.daemon.state import StateDir, StateError
from husarnet_ros.testing.memnet import MemNet
from husarnet_ros.testing.memnet_daemon import MemNetFleet, ServedFleet, member_address, served_fleet

PEER = member_address("robot2")
FAR: Endpoint = ("198.18.7.20", 5582)


@pytest.fixture(autouse=True)
def _no_socket_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTROL_SOCKET_ENV, raising=False)


@pytest.fixture
def served() -> Iterator[ServedFleet]:
    """robot1's daemon, served, alone."""
    with served_fleet("robot1", ()) as fleet:
        yield fleet


# --- the parser -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "spelling"),
    [
        ("198.18.7.20:6000", "198.18.7.20", 6000, "198.18.7.20:6000"),
        ("198.18.7.20", "198.18.7.20", 5582, "198.18.7.20:5582"),
        (" Robot2.Example.COM. ", "robot2.example.com", 5582, "robot2.example.com:5582"),
        ("robot2:7000", "robot2", 7000, "robot2:7000"),
        ("[FD00:98:0::20]:7000", "fd00:98::20", 7000, "[fd00:98::20]:7000"),
        ("[fd00:98::20]", "fd00:98::20", 5582, "[fd00:98::20]:5582"),
        ("fd00:98::20", "fd00:98::20", 5582, "[fd00:98::20]:5582"),
        ("[::ffff:198.18.7.20]:5582", "198.18.7.20", 5582, "198.18.7.20:5582"),
    ],
)
def test_endpoints_parse_into_one_spelling(text: str, host: str, port: int, spelling: str) -> None:
    parsed = parse_peer_endpoint(text)
    assert parsed == PeerEndpoint(host, port)
    assert parsed.text == spelling
    assert parse_peer_endpoint(parsed.text) == parsed


def test_a_name_is_left_for_the_daemon_to_resolve_and_an_address_is_an_endpoint() -> None:
    assert parse_peer_endpoint("robot2.example.com").is_name
    assert parse_peer_endpoint("robot2.example.com").address_endpoint() is None
    assert parse_peer_endpoint("198.18.7.20").address_endpoint() == FAR
    assert parse_peer_endpoint("[fd00:98::20]:7000").address_endpoint() == ("fd00:98::20", 7000)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("robot2:port", "port 'port' is not a number"),
        ("robot2:", "empty port after ':'"),
        ("robot2:0", "out of range 1-65535"),
        ("robot2:65536", "out of range"),
        ("robot2:-1", "not a number"),
        ("fd00:98::20:5582x", "brackets are needed"),
        ("[fd00:98::20", "expected [IPv6 address]:port"),
        ("[fd00:98::20]x", "expected [IPv6 address]:port"),
        ("[robot2]:5582", "in brackets is not an IPv6 address"),
        ("two words", "neither an IP address nor a valid host name"),
        ("198.18.7", "neither an IP address nor a valid host name"),
        (":5582", "no host"),
        ("0.0.0.0", "not the address of one host"),
        ("[ff02::1]:5582", "not the address of one host"),
        ("[fe80::1%eth0]:5582", "link-local address needs an interface"),
        ("[fc94::1]:5582", "overlay address"),
        ("a" * 400, "too long"),
    ],
)
def test_what_does_not_parse_says_why(text: str, needle: str) -> None:
    with pytest.raises(EndpointError, match=re.escape(needle)) as refused:
        parse_peer_endpoint(text)
    assert isinstance(refused.value, ValueError)  # also usable in pydantic validators
    assert len(str(refused.value)) < 200  # the input is quoted shortened, never in full


def test_static_endpoint_model_canonicalizes_both_fields() -> None:
    entry = StaticEndpoint(address=PEER.upper(), endpoint="Robot2.Example.com")
    assert entry == StaticEndpoint(address=PEER, endpoint="robot2.example.com:5582")


# --- the node -------------------------------------------------------------------------------------------


def _two_nodes() -> tuple[MemNet, Any, Endpoint, Any, Endpoint]:
    net = MemNet()
    a, ea = net.add(fixed_identity("static a"))
    b, eb = net.add(fixed_identity("static b"))
    return net, a, ea, b, eb


def test_a_static_endpoint_alone_brings_a_direct_path() -> None:
    net, a, _, b, eb = _two_nodes()
    a.add_static_endpoint(b.address, eb, net.now)  # no discovery: only a knows where b is
    net.advance(1.0)
    assert a.path_of(b.address) is PathKind.DIRECT
    assert b.path_of(a.address) is PathKind.DIRECT


def test_removing_an_unused_static_endpoint_forgets_it_and_unpins_the_peer() -> None:
    net, a, _, b, _ = _two_nodes()
    a.add_static_endpoint(b.address, FAR, net.now)
    assert a.peer(b.address).candidates[FAR].source is CandidateSource.STATIC
    assert a._pinned(a.peer(b.address))
    a.remove_static_endpoint(b.address, FAR, net.now)
    peer = a.peer(b.address)
    assert peer is None or FAR not in peer.candidates
    if peer is not None:
        assert not a._pinned(peer)


def test_removing_the_static_endpoint_in_use_keeps_the_path_while_it_answers() -> None:
    net, a, _, b, eb = _two_nodes()
    a.add_static_endpoint(b.address, eb, net.now)
    net.advance(1.0)
    assert a.peer(b.address).endpoint == eb
    a.remove_static_endpoint(b.address, eb, net.now)
    candidate = a.peer(b.address).candidates[eb]
    assert candidate.source is CandidateSource.LEARNED  # no longer pinned, never expiring
    assert candidate.last_seen == net.now
    net.advance(5.0)
    assert a.path_of(b.address) is PathKind.DIRECT


def test_remove_touches_only_static_candidates() -> None:
    net, a, _, b, _ = _two_nodes()
    unknown = fixed_identity("static c").address
    a.remove_static_endpoint(unknown, FAR, net.now)  # unknown peer: nothing happens
    assert a.peer(unknown) is None
    a.add_static_endpoint(b.address, FAR, net.now)
    a.remove_static_endpoint(b.address, ("198.18.7.21", 5582), net.now)  # not one of its candidates
    assert a.peer(b.address).candidates[FAR].source is CandidateSource.STATIC


# --- the saved list -------------------------------------------------------------------------------------


def test_never_saved_means_none(tmp_path: Path) -> None:
    assert StateDir(tmp_path / "state").load_static_endpoints() == []


def test_saved_list_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    entries = [
        StaticEndpoint(address=PEER, endpoint="robot2.example.com:5582"),
        StaticEndpoint(address=PEER, endpoint="[fd00:98::20]:7000"),
    ]
    state.save_static_endpoints(entries)
    assert state.load_static_endpoints() == entries
    assert json.loads(state.static_endpoints_path.read_text()) == {
        "version": 1,
        "endpoints": [
            {"address": PEER, "endpoint": "robot2.example.com:5582"},
            {"address": PEER, "endpoint": "[fd00:98::20]:7000"},
        ],
    }
    assert state.static_endpoints_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{", "damaged"),
        ("[]", "expected a JSON object"),
        ('{"version": 2, "endpoints": []}', "format version 2"),
        ('{"version": 1, "endpoints": {}}', "must be a list"),
        ('{"version": 1, "endpoints": [], "x": 1}', "unknown field"),
        ('{"version": 1, "endpoints": [{"address": "fc94::1", "endpoint": "h:port"}]}', "endpoints.0"),
        ('{"version": 1, "endpoints": [{"address": "10.0.0.1", "endpoint": "h"}]}', "endpoints.0"),
        (
            json.dumps(
                {
                    "version": 1,
                    "endpoints": [
                        {"address": "fc94::1", "endpoint": f"198.18.7.{i}"}
                        for i in range(MAX_STATIC_ENDPOINTS_PER_PEER + 1)
                    ],
                }
            ),
            "more than",
        ),
    ],
)
def test_a_damaged_saved_list_is_an_error_naming_the_file_and_left_alone(
    tmp_path: Path, content: str, needle: str
) -> None:
    state = StateDir(tmp_path / "state")
    state.static_endpoints_path.write_text(content)
    with pytest.raises(StateError, match=r"static_endpoints\.json is damaged") as refused:
        state.load_static_endpoints()
    assert needle.replace("endpoints.0", "endpoints[0]") in str(refused.value)
    assert state.static_endpoints_path.read_text() == content


# --- the controller -------------------------------------------------------------------------------------


def _saved(fleet: MemNetFleet, hostname: str = "robot1") -> Any:
    return json.loads((fleet.member(hostname).state_dir / "static_endpoints.json").read_text())


def _static_candidates(robot: NodeController, address: str) -> set[Endpoint]:
    peer = robot.node.peer(parse_overlay(address))
    if peer is None:
        return set()
    return {e for e, c in peer.candidates.items() if c.source is CandidateSource.STATIC}


def _on_node(fleet: MemNetFleet, fn: Any) -> Any:
    with fleet.lock:
        return fn()


def test_add_and_remove_are_saved_listed_and_given_to_the_node(fleet: MemNetFleet) -> None:
    robot = fleet.add("robot1")
    robot.whitelist_add(PEER)
    robot.static_endpoint_add(PEER.upper(), "198.18.7.20")
    robot.static_endpoint_add(PEER, "robot2.example.com:7000")
    assert [(e.address, e.endpoint) for e in robot.static_endpoints()] == [
        (PEER, "198.18.7.20:5582"),
        (PEER, "robot2.example.com:7000"),
    ]
    assert _saved(fleet)["endpoints"] == [e.model_dump() for e in robot.static_endpoints()]
    # The address at once; the name waits for the control loop's round (none on the in-memory network).
    assert _on_node(fleet, lambda: _static_candidates(robot, PEER)) == {FAR}
    robot.static_endpoint_add(PEER, "198.18.7.20:5582")  # again: no error, no change
    assert len(_saved(fleet)["endpoints"]) == 2
    robot.static_endpoint_remove(PEER, "198.18.7.20")
    assert [e.endpoint for e in robot.static_endpoints()] == ["robot2.example.com:7000"]
    assert _on_node(fleet, lambda: _static_candidates(robot, PEER)) == set()
    with pytest.raises(ControllerNotFound, match=r"198\.18\.7\.20:5582 is not a static endpoint of peer"):
        robot.static_endpoint_remove(PEER, "198.18.7.20")


def test_a_name_is_resolved_in_the_round_and_retried_while_it_fails(
    fleet: MemNetFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from husarnet_ros.daemon import base_connector

    answers: dict[str, Endpoint | None] = {"robot2.example.com": None}
    asked: list[str] = []

    def resolve(host: str, port: int) -> Endpoint | None:
        asked.append(host)
        found = answers[host]
        return None if found is None else (found[0], port)

    monkeypatch.setattr(base_connector, "resolve", resolve)
    robot = fleet.add("robot1")
    robot.whitelist_add(PEER)
    robot.static_endpoint_add(PEER, "robot2.example.com")
    with fleet.lock:
        now = 10_000.0
        robot.tend_static_endpoints(now, resolve_names=True)
        robot.tend_static_endpoints(now + 29, resolve_names=True)  # not yet again
        assert asked == ["robot2.example.com"]
        answers["robot2.example.com"] = FAR
        robot.tend_static_endpoints(now + 30, resolve_names=True)
        assert asked == ["robot2.example.com"] * 2
        assert _static_candidates(robot, PEER) == {FAR}
        robot.tend_static_endpoints(now + 100, resolve_names=True)  # resolved once: not looked up again
        assert len(asked) == 2


def test_a_peer_not_allowed_keeps_its_endpoint_and_gets_it_once_whitelisted(fleet: MemNetFleet) -> None:
    robot = fleet.add("robot1")
    robot.static_endpoint_add(PEER, "198.18.7.20")  # accepted, saved, not used yet
    assert [e.endpoint for e in robot.static_endpoints()] == ["198.18.7.20:5582"]
    assert _on_node(fleet, lambda: _static_candidates(robot, PEER)) == set()
    robot.whitelist_add(PEER)
    assert _on_node(fleet, lambda: _static_candidates(robot, PEER)) == {FAR}
    robot.whitelist_remove(PEER)  # the node forgets the peer, candidates and all ...
    assert _on_node(fleet, lambda: _static_candidates(robot, PEER)) == set()
    robot.whitelist_add(PEER)  # ... and gets them back once it is allowed again
    assert _on_node(fleet, lambda: _static_candidates(robot, PEER)) == {FAR}


def test_saved_endpoints_are_given_to_the_node_after_a_restart(fleet: MemNetFleet) -> None:
    robot = fleet.add("robot1")
    robot.whitelist_add(PEER)
    robot.static_endpoint_add(PEER, "198.18.7.20")
    restarted = fleet.restart("robot1")
    assert [e.endpoint for e in restarted.static_endpoints()] == ["198.18.7.20:5582"]
    assert _on_node(fleet, lambda: _static_candidates(restarted, PEER)) == {FAR}


@pytest.mark.parametrize(
    ("address", "endpoint", "needle"),
    [
        (PEER, "robot2:port", "port 'port' is not a number"),
        (PEER, "", "empty"),
        ("10.0.0.1", "198.18.7.20", "is not an IPv6 address"),
        ("robot2", "198.18.7.20", "robot2"),
    ],
)
def test_what_does_not_parse_is_refused_and_nothing_is_saved(
    fleet: MemNetFleet, address: str, endpoint: str, needle: str
) -> None:
    robot = fleet.add("robot1")
    with pytest.raises(BadValue, match=needle):
        robot.static_endpoint_add(address, endpoint)
    assert robot.static_endpoints() == []
    assert not (fleet.member("robot1").state_dir / "static_endpoints.json").exists()


def test_own_address_is_refused(fleet: MemNetFleet) -> None:
    robot = fleet.add("robot1")
    with pytest.raises(InvalidRequest, match="own address"):
        robot.static_endpoint_add(fleet.address("robot1"), "198.18.7.20")


def test_at_most_per_peer_and_in_all(fleet: MemNetFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from husarnet_ros.daemon import node_controller

    robot = fleet.add("robot1")
    for i in range(MAX_STATIC_ENDPOINTS_PER_PEER):
        robot.static_endpoint_add(PEER, f"198.18.7.{i + 1}")
    with pytest.raises(Conflict, match=f"has {MAX_STATIC_ENDPOINTS_PER_PEER} static endpoints already"):
        robot.static_endpoint_add(PEER, "198.18.8.1")
    robot.static_endpoint_add(PEER, "198.18.7.1")  # one already there is still no error
    monkeypatch.setattr(node_controller, "MAX_STATIC_ENDPOINTS", MAX_STATIC_ENDPOINTS_PER_PEER + 1)
    other = format_address(fixed_identity("static other").address)
    robot.static_endpoint_add(other, "198.18.8.1")
    with pytest.raises(Conflict, match="in all"):
        robot.static_endpoint_add(other, "198.18.8.2")


def test_a_change_that_cannot_be_saved_changes_nothing(
    fleet: MemNetFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    robot = fleet.add("robot1")
    robot.whitelist_add(PEER)
    robot.static_endpoint_add(PEER, "198.18.7.20")

    def full_disk(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module, "atomic_write_text", full_disk)
    with pytest.raises(StorageError, match="nothing was changed"):
        robot.static_endpoint_add(PEER, "198.18.7.21")
    with pytest.raises(StorageError):
        robot.static_endpoint_remove(PEER, "198.18.7.20")
    assert [e.endpoint for e in robot.static_endpoints()] == ["198.18.7.20:5582"]
    assert _on_node(fleet, lambda: _static_candidates(robot, PEER)) == {FAR}


# --- the control API ------------------------------------------------------------------------------------


def test_api_routes(served: ServedFleet) -> None:
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=served.socket_path), base_url="http://daemon", timeout=10
    ) as http:
        assert http.get("/v1/endpoints").json() == []
        added = http.post("/v1/endpoints", json={"address": PEER, "endpoint": "[FD00:98::20]"})
        assert added.status_code == 200
        assert added.json() == [{"address": PEER, "endpoint": "[fd00:98::20]:5582"}]
        again = http.post("/v1/endpoints", json={"address": PEER, "endpoint": "fd00:98::20"})
        assert again.json() == added.json()  # duplicate: no-op
        bad = http.post("/v1/endpoints", json={"address": PEER, "endpoint": "robot2:port"})
        assert bad.status_code == 400
        assert bad.json() == {"error": "endpoint 'robot2:port': port 'port' is not a number"}
        assert http.post("/v1/endpoints", json={"address": PEER, "endpoint": 5582}).status_code == 422
        assert http.post("/v1/endpoints", json={"address": PEER}).status_code == 422
        missing = http.delete(f"/v1/endpoints/{PEER}/198.18.9.9")
        assert missing.status_code == 404
        assert "198.18.9.9:5582 is not a static endpoint" in missing.json()["error"]
        gone = http.delete(f"/v1/endpoints/{PEER}/%5Bfd00:98::20%5D:5582")
        assert gone.status_code == 200
        assert gone.json() == []


def test_api_refuses_a_full_peer_with_409(served: ServedFleet) -> None:
    for i in range(MAX_STATIC_ENDPOINTS_PER_PEER):
        served.controller.static_endpoint_add(PEER, f"198.18.7.{i + 1}")
    with ControlClient(served.socket_path) as client, pytest.raises(ControlError) as refused:
        client.static_endpoint_add(PEER, "198.18.8.1")
    assert refused.value.status == 409


# --- the client -----------------------------------------------------------------------------------------


def test_client_calls(served: ServedFleet) -> None:
    with ControlClient(served.socket_path) as client:
        assert client.static_endpoints() == []
        first = client.static_endpoint_add(PEER, "[fd00:98::20]:6000")
        assert first == [StaticEndpoint(address=PEER, endpoint="[fd00:98::20]:6000")]
        assert len(client.static_endpoint_add(PEER, "robot2.example.com")) == 2
        left = client.static_endpoint_remove(PEER, "[FD00:98::20]:6000")
        assert [e.endpoint for e in left] == ["robot2.example.com:5582"]
        with pytest.raises(NotFound):
            client.static_endpoint_remove(PEER, "[fd00:98::20]:6000")
        with pytest.raises(ControlError) as bad:
            client.static_endpoint_add(PEER, "robot2:99999")
        assert bad.value.status == 400


# --- the command ----------------------------------------------------------------------------------------


def _run(socket: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--control-socket", socket, *args], catch_exceptions=False)


def test_cli_add_ls_rm(served: ServedFleet) -> None:
    sock = served.socket_path
    empty = _run(sock, "endpoint", "ls")
    assert empty.exit_code == 0
    assert "no static endpoints" in empty.stdout
    added = _run(sock, "endpoint", "add", PEER, "198.18.7.20")
    assert added.exit_code == 0, added.output
    lines = added.stdout.strip().splitlines()
    assert lines[0] == f"added static endpoint 198.18.7.20:5582 of peer {PEER}"
    assert "is not on the whitelist" in lines[1]  # kept, but said that it is not used yet
    again = _run(sock, "endpoint", "add", PEER, "198.18.7.20:5582")
    assert "nothing changed" in again.stdout
    table = _run(sock, "endpoint", "ls").stdout.splitlines()
    assert table[0].split() == ["PEER", "ENDPOINT"]
    assert table[1].split() == [PEER, "198.18.7.20:5582"]
    listed = json.loads(_run(sock, "endpoint", "ls", "--json").stdout)
    assert listed == [{"address": PEER, "endpoint": "198.18.7.20:5582"}]
    removed = _run(sock, "endpoint", "rm", PEER, "198.18.7.20")
    assert removed.stdout.strip() == f"removed static endpoint 198.18.7.20:5582 of peer {PEER}"
    assert _run(sock, "--json", "endpoint", "ls").stdout.strip() == "[]"


def test_cli_add_for_a_whitelisted_peer_has_no_note(served: ServedFleet) -> None:
    served.controller.whitelist_add(PEER)
    added = _run(served.socket_path, "endpoint", "add", PEER, "198.18.7.20")
    assert added.stdout.strip() == f"added static endpoint 198.18.7.20:5582 of peer {PEER}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("endpoint", "add", PEER, "robot2:port"), "port 'port' is not a number"),
        (("endpoint", "rm", PEER, "198.18.9.9"), "198.18.9.9:5582 is not a static endpoint of peer"),
    ],
)
def test_cli_errors_are_one_line(served: ServedFleet, args: tuple[str, ...], needle: str) -> None:
    result = _run(served.socket_path, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert needle in result.stderr


def test_cli_help_names_wireguard_and_shows_examples() -> None:
    group = CliRunner().invoke(cli, ["endpoint", "--help"])
    assert group.exit_code == 0
    assert "WireGuard's `Endpoint`" in group.stdout
    assert "husarnet-ros endpoint add fc94:" in group.stdout
    for command in ("ls", "add", "rm"):
        result = CliRunner().invoke(cli, ["endpoint", command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.stdout
