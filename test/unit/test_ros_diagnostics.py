"""husarnet_ros.ros.diagnostics: REP 107 statuses from what the daemon said (pure, time passed in)."""

from __future__ import annotations

import math

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from sample_status import make_status

from husarnet_ros.api import BaseServerStatus, PeerStatus, Status
from husarnet_ros.ros.diagnostics import (
    BASE_NAME,
    DAEMON_NAME,
    ERROR,
    GONE_HOLD_S,
    OK,
    STALE,
    WARN,
    DaemonHealth,
    PeerTracker,
    base_diagnostic,
    build_diagnostics,
    daemon_diagnostic,
    level_name,
    peer_diagnostic,
    peer_level,
)

NOW = 1_700_000_000.0
SOCKET = "/tmp/test-control.sock"
THRESHOLD_MS = 200.0


def answering(status: Status | None = None) -> DaemonHealth:
    return DaemonHealth(
        answering=True, ever_answered=True, socket_path=SOCKET, status=status or make_status()
    )


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def direct(address: str = "fc94::2", rtt_ms: float | None = 1.0, **changes: object) -> PeerStatus:
    fields: dict[str, object] = {
        "address": address,
        "hostname": "robot2",
        "path": "direct",
        "endpoint": "198.18.0.2:5582",
        "rtt_ms": rtt_ms,
        "last_handshake": NOW - 5,
        "last_seen": NOW - 1,
        "rx_bytes": 10,
        "tx_bytes": 20,
        "whitelisted": True,
        "state": "established",
    }
    fields.update(changes)
    return PeerStatus.model_validate(fields)


# --- daemon -------------------------------------------------------------------------------------------------


def test_daemon_running_is_ok_with_details() -> None:
    status = daemon_diagnostic(answering(make_status(counters={"drop_not_whitelisted": 3})))
    assert status.name == DAEMON_NAME
    assert status.level == OK
    assert status.message == "running"
    assert status.hardware_id == "fc94::1"
    kv = values(status)
    assert kv["control_socket"] == SOCKET
    assert (kv["address"], kv["hostname"], kv["interface"], kv["ready"]) == (
        "fc94::1",
        "robot1",
        "hnet0",
        "true",
    )
    assert kv["counter.drop_not_whitelisted"] == "3"


def test_daemon_not_ready_is_warn() -> None:
    assert daemon_diagnostic(answering(make_status(ready=False))).level == WARN


def test_daemon_never_answered_is_error_with_reason() -> None:
    health = DaemonHealth(answering=False, ever_answered=False, socket_path=SOCKET, error="no socket there")
    status = daemon_diagnostic(health)
    assert status.level == ERROR
    assert values(status)["error"] == "no socket there"
    assert values(status)["control_socket"] == SOCKET


def test_daemon_that_stopped_answering_is_stale() -> None:
    health = DaemonHealth(
        answering=False, ever_answered=True, socket_path=SOCKET, error="gone", status=make_status()
    )
    status = daemon_diagnostic(health)
    assert status.level == STALE
    assert values(status)["address"] == "fc94::1"  # the last thing it said is still shown


def test_daemon_answering_without_status_is_warn_not_a_crash() -> None:
    health = DaemonHealth(answering=True, ever_answered=True, socket_path=SOCKET, status=None)
    assert daemon_diagnostic(health).level == WARN


# --- base server --------------------------------------------------------------------------------------------


def test_no_base_server_is_ok_lan_only() -> None:
    status = base_diagnostic(answering())
    assert (status.name, status.level) == (BASE_NAME, OK)
    assert status.message == "no base server configured (LAN only)"
    assert values(status) == {"base_server": "", "state": "none", "transport": ""}


def with_base(state: str) -> Status:
    base = BaseServerStatus(address="198.18.100.2:5582", transport="udp", state=state, home=True, rtt_ms=2.5)
    return make_status([]).model_copy(update={"base": base, "base_servers": [base]})


def test_registered_base_server_is_ok_with_its_address_and_transport() -> None:
    status = base_diagnostic(answering(with_base("registered")))
    assert status.level == OK
    assert "198.18.100.2:5582" in status.message
    assert values(status) == {
        "base_server": "198.18.100.2:5582",
        "state": "registered",
        "transport": "udp",
        "rtt_ms": "2.5",
    }


@pytest.mark.parametrize("state", ["down", "connecting"])
def test_base_server_not_answering_is_warn_not_error(state: str) -> None:
    # Direct links work on without a base server: a warning, not an error.
    status = base_diagnostic(answering(with_base(state)))
    assert status.level == WARN
    assert values(status)["state"] == state


@pytest.mark.parametrize("ever", [False, True])
def test_base_server_unknown_while_daemon_down(ever: bool) -> None:
    health = DaemonHealth(answering=False, ever_answered=ever, socket_path=SOCKET)
    status = base_diagnostic(health)
    assert status.level == STALE
    assert values(status)["state"] == "unknown"


# --- peer levels --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "level"),
    [
        (direct(rtt_ms=1.0), OK),
        (direct(rtt_ms=None), OK),
        (direct(rtt_ms=0.0), OK),
        (direct(rtt_ms=THRESHOLD_MS - 0.001), OK),
        (direct(rtt_ms=THRESHOLD_MS), OK),  # "above" the threshold is strict
        (direct(rtt_ms=THRESHOLD_MS + 0.001), WARN),
        (direct(rtt_ms=math.inf), OK),  # not a measurement
        (direct(path="tunnelled", endpoint=None, rtt_ms=1.0), WARN),
        (direct(path="tunnelled", endpoint=None, rtt_ms=THRESHOLD_MS * 10), WARN),
        (direct(path="tunnelled", endpoint=None, rtt_ms=None), WARN),
        (direct(path="none", endpoint=None, rtt_ms=None, state="handshaking"), ERROR),
        (direct(path="none", endpoint=None, rtt_ms=None, state="idle"), ERROR),
    ],
)
def test_peer_levels(peer: PeerStatus, level: bytes) -> None:
    assert peer_level(peer, THRESHOLD_MS)[0] == level


def test_peer_messages_say_why() -> None:
    assert peer_level(direct(rtt_ms=1.25), THRESHOLD_MS)[1] == "direct, rtt 1.2 ms"
    assert "rtt unknown" in peer_level(direct(rtt_ms=None), THRESHOLD_MS)[1]
    assert "high latency" in peer_level(direct(rtt_ms=500.0), THRESHOLD_MS)[1]
    tunnelled = direct(path="tunnelled", endpoint=None, base_server="198.18.0.100:5582")
    assert peer_level(tunnelled, THRESHOLD_MS)[1].startswith("tunnelled via 198.18.0.100:5582")
    assert (
        peer_level(direct(path="none", state="handshaking"), THRESHOLD_MS)[1] == "unreachable (handshaking)"
    )


def test_peer_status_fields() -> None:
    status = peer_diagnostic(direct(rtt_ms=0.4242), THRESHOLD_MS, NOW)
    assert status.name == "husarnet: peer robot2"
    assert status.hardware_id == "fc94::2"
    kv = values(status)
    assert kv["address"] == "fc94::2"
    assert kv["path"] == "direct"
    assert kv["endpoint"] == "198.18.0.2:5582"
    assert kv["rtt_ms"] == "0.424"
    assert kv["rx_bytes"] == "10"
    assert kv["tx_bytes"] == "20"
    assert kv["whitelisted"] == "true"
    assert kv["last_seen"].endswith("(1.0 s ago)")
    assert kv["last_seen"].startswith("2023-11-14T22:13:19")


def test_peer_without_hostname_is_named_by_address_and_none_values_shown() -> None:
    peer = PeerStatus(address="fc94::4")
    status = peer_diagnostic(peer, THRESHOLD_MS, NOW)
    assert status.name == "husarnet: peer fc94::4"
    kv = values(status)
    assert (kv["hostname"], kv["endpoint"], kv["rtt_ms"]) == ("", "", "unknown")
    assert (kv["last_seen"], kv["last_handshake"]) == ("never", "never")


def test_level_names() -> None:
    assert [level_name(x) for x in (OK, WARN, ERROR, STALE)] == ["OK", "WARN", "ERROR", "STALE"]


# --- gone peers and the tracker -----------------------------------------------------------------------------


def levels_by_name(statuses: list[DiagnosticStatus]) -> dict[str, bytes]:
    return {s.name: s.level for s in statuses}


def test_peer_that_leaves_is_error_gone_until_the_hold_expires() -> None:
    tracker = PeerTracker()
    tracker.update([direct(), direct("fc94::3", hostname="robot3")], NOW)
    tracker.update([direct("fc94::3", hostname="robot3")], NOW + 1)
    statuses = build_diagnostics(answering(), tracker, THRESHOLD_MS, NOW + 1)
    gone = next(s for s in statuses if s.name == "husarnet: peer robot2")
    assert gone.level == ERROR
    assert gone.message.startswith("gone")
    assert "gone_since" in values(gone)
    assert levels_by_name(statuses)["husarnet: peer robot3"] == OK

    tracker.update([direct("fc94::3", hostname="robot3")], NOW + 1 + GONE_HOLD_S - 0.001)
    assert "husarnet: peer robot2" in levels_by_name(
        build_diagnostics(answering(), tracker, THRESHOLD_MS, NOW)
    )
    tracker.update([direct("fc94::3", hostname="robot3")], NOW + 1 + GONE_HOLD_S)
    assert "husarnet: peer robot2" not in levels_by_name(
        build_diagnostics(answering(), tracker, THRESHOLD_MS, NOW)
    )


def test_peer_that_returns_is_reported_normally_at_once() -> None:
    tracker = PeerTracker()
    tracker.update([direct()], NOW)
    tracker.update([], NOW + 1)
    assert tracker.gone
    tracker.update([direct()], NOW + 2)
    assert not tracker.gone
    statuses = build_diagnostics(answering(), tracker, THRESHOLD_MS, NOW + 2)
    assert levels_by_name(statuses)["husarnet: peer robot2"] == OK
    assert [s.name for s in statuses].count("husarnet: peer robot2") == 1


def test_gone_time_is_when_it_was_first_missing() -> None:
    tracker = PeerTracker()
    tracker.update([direct()], NOW)
    tracker.update([], NOW + 1)
    tracker.update([], NOW + 5)
    assert tracker.gone["fc94::2"][1] == NOW + 1


def test_direct_to_none_to_gone_levels() -> None:
    tracker = PeerTracker()
    seen = []
    for step, table in enumerate([[direct()], [direct(path="none", endpoint=None, rtt_ms=None)], []]):
        tracker.update(table, NOW + step)
        seen.append(levels_by_name(build_diagnostics(answering(), tracker, THRESHOLD_MS, NOW + step)))
    assert [s["husarnet: peer robot2"] for s in seen] == [OK, ERROR, ERROR]


def test_daemon_down_reports_every_known_peer_stale() -> None:
    tracker = PeerTracker()
    tracker.update([direct(), direct("fc94::3", hostname="robot3")], NOW)
    tracker.update([direct("fc94::3", hostname="robot3")], NOW + 1)  # robot2 gone
    health = DaemonHealth(answering=False, ever_answered=True, socket_path=SOCKET, status=make_status())
    statuses = build_diagnostics(health, tracker, THRESHOLD_MS, NOW + 2)
    assert levels_by_name(statuses) == {
        DAEMON_NAME: STALE,
        BASE_NAME: STALE,
        "husarnet: peer robot2": STALE,
        "husarnet: peer robot3": STALE,
    }
    assert all(s.message.startswith("no data") for s in statuses[2:])


def test_daemon_never_answered_gives_only_daemon_and_base() -> None:
    health = DaemonHealth(answering=False, ever_answered=False, socket_path=SOCKET, error="x")
    statuses = build_diagnostics(health, PeerTracker(), THRESHOLD_MS, NOW)
    assert levels_by_name(statuses) == {DAEMON_NAME: ERROR, BASE_NAME: STALE}


def test_statuses_are_in_a_stable_order() -> None:
    tracker = PeerTracker()
    tracker.update([direct("fc94::9", hostname="z"), direct("fc94::2", hostname="a")], NOW)
    names = [s.name for s in build_diagnostics(answering(), tracker, THRESHOLD_MS, NOW)]
    assert names == [DAEMON_NAME, BASE_NAME, "husarnet: peer a", "husarnet: peer z"]
