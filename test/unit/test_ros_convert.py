"""husarnet_ros.ros.convert: API models -> ROS messages (pure; needs only the generated message classes)."""

from __future__ import annotations

import math

import pytest
from builtin_interfaces.msg import Time
from sample_status import make_status

from husarnet_ros.api import BaseServerStatus, PeerStatus
from husarnet_ros.msg import Peer
from husarnet_ros.ros.convert import (
    BASE_STATE_NONE,
    BASE_STATE_UNKNOWN,
    UNKNOWN_RTT_MS,
    daemon_down_status,
    path_code,
    peer_table_key,
    peer_to_msg,
    peers_to_msg,
    status_key,
    status_to_msg,
    unix_to_time,
)

STAMP = Time(sec=1_700_000_000, nanosec=5)


# --- time ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 0.0, -1.0, -0.5, math.nan, math.inf, -math.inf])
def test_missing_or_invalid_time_is_zero(value: float | None) -> None:
    assert unix_to_time(value) == Time(sec=0, nanosec=0)


@pytest.mark.parametrize(
    ("value", "sec", "nanosec"),
    [
        (1.0, 1, 0),
        (1_700_000_000.25, 1_700_000_000, 250_000_000),
        (12.000000001, 12, 1),
        # rounding to the next whole second must carry, never give nanosec = 1e9
        (12.9999999999, 13, 0),
    ],
)
def test_unix_time_split_into_sec_and_nanosec(value: float, sec: int, nanosec: int) -> None:
    stamp = unix_to_time(value)
    assert (stamp.sec, stamp.nanosec) == (sec, nanosec)


def test_time_beyond_int32_is_clamped_not_an_error() -> None:
    assert unix_to_time(1e12).sec == 2**31 - 1


# --- peers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [("none", Peer.PATH_NONE), ("direct", Peer.PATH_DIRECT), ("tunnelled", Peer.PATH_TUNNELLED)],
)
def test_path_codes(path: str, code: int) -> None:
    assert path_code(path) == code
    assert peer_to_msg(PeerStatus(address="fc94::2", path=path)).path == code  # type: ignore[arg-type]


def test_unknown_path_text_is_none() -> None:
    assert path_code("relayed-by-pigeons") == Peer.PATH_NONE


def test_full_peer() -> None:
    peer = PeerStatus(
        address="FC94:0::2",
        hostname="robot2",
        path="direct",
        endpoint="198.18.0.2:5582",
        rtt_ms=0.42,
        last_handshake=100.5,
        last_seen=200.25,
        rx_bytes=1234,
        tx_bytes=5678,
        whitelisted=True,
        state="established",
    )
    msg = peer_to_msg(peer)
    assert msg.address == "fc94::2"
    assert msg.hostname == "robot2"
    assert msg.path == Peer.PATH_DIRECT
    assert msg.endpoint == "198.18.0.2:5582"
    assert msg.base_server == ""
    assert msg.rtt_ms == pytest.approx(0.42)
    assert (msg.last_handshake.sec, msg.last_handshake.nanosec) == (100, 500_000_000)
    assert (msg.last_seen.sec, msg.last_seen.nanosec) == (200, 250_000_000)
    assert (msg.rx_bytes, msg.tx_bytes) == (1234, 5678)
    assert msg.whitelisted is True


def test_tunnelled_peer_keeps_its_base_server() -> None:
    msg = peer_to_msg(PeerStatus(address="fc94::3", path="tunnelled", base_server="198.18.0.100:5582"))
    assert (msg.path, msg.base_server, msg.endpoint) == (Peer.PATH_TUNNELLED, "198.18.0.100:5582", "")


def test_none_values_become_empty_zero_or_unknown() -> None:
    msg = peer_to_msg(PeerStatus(address="fc94::4"))
    assert msg.hostname == ""
    assert msg.endpoint == ""
    assert msg.base_server == ""
    assert msg.rtt_ms == UNKNOWN_RTT_MS
    assert msg.last_handshake == Time()
    assert msg.last_seen == Time()
    assert (msg.rx_bytes, msg.tx_bytes) == (0, 0)
    assert msg.whitelisted is False
    assert msg.path == Peer.PATH_NONE


@pytest.mark.parametrize("rtt", [-3.0, math.nan, math.inf])
def test_impossible_rtt_is_unknown(rtt: float) -> None:
    assert peer_to_msg(PeerStatus(address="fc94::2", path="direct", rtt_ms=rtt)).rtt_ms == UNKNOWN_RTT_MS


def test_zero_rtt_is_a_measurement() -> None:
    assert peer_to_msg(PeerStatus(address="fc94::2", path="direct", rtt_ms=0.0)).rtt_ms == 0.0


def test_counters_clamped_to_uint64() -> None:
    msg = peer_to_msg(PeerStatus(address="fc94::2", rx_bytes=-1, tx_bytes=2**70))
    assert (msg.rx_bytes, msg.tx_bytes) == (0, 2**64 - 1)


def test_peer_array_sorted_by_address_with_stamp() -> None:
    peers = [PeerStatus(address="fc94::3"), PeerStatus(address="fc94::2"), PeerStatus(address="fc94::a")]
    array = peers_to_msg(peers, STAMP)
    assert array.header.stamp == STAMP
    assert array.header.frame_id == ""
    assert [p.address for p in array.peers] == ["fc94::2", "fc94::3", "fc94::a"]


def test_empty_peer_array() -> None:
    assert list(peers_to_msg([], STAMP).peers) == []


# --- status -------------------------------------------------------------------------------------------------


def test_status_names_the_base_server_in_use() -> None:
    base = BaseServerStatus(address="198.18.100.2:5582", transport="udp", state="registered", home=True)
    status = make_status([]).model_copy(update={"base": base, "base_servers": [base]})
    msg = status_to_msg(status, STAMP)
    assert (msg.base_server, msg.base_state, msg.base_transport) == ("198.18.100.2:5582", "registered", "udp")


def test_status_counts_paths_and_has_no_base_server() -> None:
    peers = [
        PeerStatus(address="fc94::2", path="direct"),
        PeerStatus(address="fc94::3", path="direct"),
        PeerStatus(address="fc94::4", path="tunnelled"),
        PeerStatus(address="fc94::5", path="none"),
    ]
    msg = status_to_msg(make_status(peers, whitelist_enabled=False), STAMP)
    assert msg.header.stamp == STAMP
    assert (msg.address, msg.hostname) == ("fc94::1", "robot1")
    assert msg.daemon_running is True
    assert (msg.base_server, msg.base_state, msg.base_transport) == ("", BASE_STATE_NONE, "")
    assert msg.whitelist_enabled is False
    assert (msg.peers_total, msg.peers_direct, msg.peers_tunnelled) == (4, 2, 1)


def test_daemon_down_status_without_history() -> None:
    msg = daemon_down_status(STAMP)
    assert msg.daemon_running is False
    assert (msg.address, msg.hostname, msg.base_state) == ("", "", BASE_STATE_UNKNOWN)
    assert (msg.peers_total, msg.peers_direct, msg.peers_tunnelled) == (0, 0, 0)


def test_daemon_down_status_keeps_own_identity() -> None:
    last = make_status([PeerStatus(address="fc94::2", path="direct")])
    msg = daemon_down_status(STAMP, last)
    assert (msg.address, msg.hostname, msg.daemon_running, msg.peers_total) == ("fc94::1", "robot1", False, 0)


# --- change detection ---------------------------------------------------------------------------------------


def _peer(**changes: object) -> PeerStatus:
    base = PeerStatus(
        address="fc94::2",
        hostname="robot2",
        path="direct",
        endpoint="198.18.0.2:5582",
        rtt_ms=1.0,
        last_handshake=10.0,
        last_seen=11.0,
        rx_bytes=1,
        tx_bytes=2,
        state="established",
    )
    return base.model_copy(update=changes)


@pytest.mark.parametrize(
    "change", [{"rx_bytes": 99}, {"tx_bytes": 99}, {"last_seen": 99.0}, {"rtt_ms": 50.0}, {"rtt_ms": None}]
)
def test_counters_and_measurements_are_not_a_change(change: dict[str, object]) -> None:
    assert peer_table_key([_peer(**change)]) == peer_table_key([_peer()])


@pytest.mark.parametrize(
    "change",
    [
        {"path": "tunnelled"},
        {"path": "none"},
        {"endpoint": "198.18.0.9:5582"},
        {"hostname": "other"},
        {"whitelisted": True},
        {"state": "handshaking"},
        {"base_server": "198.18.0.100:5582"},
        {"last_handshake": 20.0},
    ],
)
def test_path_and_identity_changes_are_a_change(change: dict[str, object]) -> None:
    assert peer_table_key([_peer(**change)]) != peer_table_key([_peer()])


def test_added_or_removed_peer_is_a_change_order_is_not() -> None:
    other = _peer(address="fc94::3")
    assert peer_table_key([_peer(), other]) != peer_table_key([_peer()])
    assert peer_table_key([other, _peer()]) == peer_table_key([_peer(), other])


def test_status_key_ignores_the_stamp_only() -> None:
    status = make_status([PeerStatus(address="fc94::2", path="direct")])
    a = status_to_msg(status, STAMP)
    b = status_to_msg(status, Time(sec=1))
    assert status_key(a) == status_key(b)
    assert status_key(a) != status_key(daemon_down_status(STAMP, status))
    more = make_status([PeerStatus(address="fc94::2", path="tunnelled")])
    assert status_key(a) != status_key(status_to_msg(more, STAMP))
