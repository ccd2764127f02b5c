"""LAN beacons: round trip, exact layout, every tampered byte rejected, and which sources are believed."""

from __future__ import annotations

import struct

import pytest
from fixed_identities import failing_seed, fixed_identity
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from husarnet_ros.core import beacon
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.identity import Identity

ROBOT = fixed_identity("beacon robot")
TS = 1_700_000_000_000_000_123
HOSTNAME_CHARS = st.characters(codec="utf-8")  # no lone surrogates


def test_round_trip() -> None:
    data = beacon.encode(ROBOT, "robot-1", 5582, TS)
    decoded = beacon.decode(data)
    assert decoded == beacon.Beacon(ROBOT.address, ROBOT.public_key, "robot-1", 5582, TS)


def test_layout() -> None:
    data = beacon.encode(ROBOT, "ab", 0x1234, TS)
    assert len(data) == 48 + 2 + 64
    assert data[:4] == b"HRB1"
    assert data[4] == 0  # flags
    assert data[5] == 2  # hostname length
    assert data[6:8] == b"\x12\x34"
    assert data[8:16] == struct.pack("!Q", TS)
    assert data[16:48] == ROBOT.public_key
    assert data[48:50] == b"ab"
    assert ROBOT.signing_key.verify_key.verify(data[:50], data[50:]) == data[:50]


@settings(max_examples=30, deadline=None)
@given(
    hostname=st.text(HOSTNAME_CHARS, max_size=80),
    port=st.integers(1, 65535),
    ts=st.integers(0, 2**64 - 1),
)
def test_round_trip_of_any_hostname(hostname: str, port: int, ts: int) -> None:
    decoded = beacon.decode(beacon.encode(ROBOT, hostname, port, ts))
    assert hostname.startswith(decoded.hostname)
    assert len(decoded.hostname.encode()) <= beacon.MAX_HOSTNAME
    assert (decoded.udp_port, decoded.timestamp_ns, decoded.address) == (port, ts, ROBOT.address)


def test_long_multibyte_hostname_is_cut_on_a_character_boundary() -> None:
    decoded = beacon.decode(beacon.encode(ROBOT, "é" * 40, 5582, TS))
    assert decoded.hostname == "é" * 31  # 62 bytes: the 32nd character would cross 63


def test_empty_hostname() -> None:
    assert beacon.decode(beacon.encode(ROBOT, "", 1, 0)).hostname == ""


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_tampered_byte_is_rejected(mask: int) -> None:
    data = beacon.encode(ROBOT, "robot-1", 5582, TS)
    for offset in range(len(data)):
        tampered = bytearray(data)
        tampered[offset] ^= mask
        with pytest.raises(ProtocolError):
            beacon.decode(bytes(tampered))


@pytest.mark.parametrize("size", [0, 1, 47, 111, 48 + 64 + 64, 1000])
def test_impossible_sizes(size: int) -> None:
    with pytest.raises(ProtocolError, match="impossible size"):
        beacon.decode(bytes(size))


def test_wrong_magic() -> None:
    data = beacon.encode(ROBOT, "x", 1, 0)
    with pytest.raises(ProtocolError, match="not a husarnet_ros beacon"):
        beacon.decode(b"HRB2" + data[4:])


def test_length_mismatch() -> None:
    data = beacon.encode(ROBOT, "robot", 1, 0)
    with pytest.raises(ProtocolError, match="does not match its hostname length"):
        beacon.decode(data + b"\x00")


def _signed_by(identity: Identity, body: bytes) -> bytes:
    return body + identity.sign(body)


def test_port_zero_is_rejected_even_when_signed() -> None:
    with pytest.raises(ProtocolError, match="port 0"):
        beacon.decode(beacon.encode(ROBOT, "x", 0, 0))


def test_key_failing_the_proof_of_work_is_rejected_even_when_signed() -> None:
    key = SigningKey(failing_seed("beacon"))
    bogus = Identity(key, bytes(key.verify_key), ROBOT.address)
    with pytest.raises(ProtocolError, match="proof of work"):
        beacon.decode(beacon.encode(bogus, "x", 1, 0))


def test_invalid_utf8_hostname_is_rejected_even_when_signed() -> None:
    body = struct.pack("!4sBBHQ32s", b"HRB1", 0, 2, 1, 0, ROBOT.public_key) + b"\xc3\x28"
    with pytest.raises(ProtocolError, match="not UTF-8"):
        beacon.decode(_signed_by(ROBOT, body))


def test_signature_by_another_key_is_rejected() -> None:
    other = fixed_identity("beacon other")
    body = beacon.encode(ROBOT, "robot", 1, 0)[:-64]
    with pytest.raises(ProtocolError, match="signature is invalid"):
        beacon.decode(_signed_by(other, body))


# --------------------------------------------------------------------------- source_allowed
DEFAULT = beacon.parse_networks(beacon.DEFAULT_SOURCE_NETWORKS)


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "10.255.255.254",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.20",
        "198.18.0.1",
        "198.19.255.254",
        "169.254.10.10",
        "fe80::1",
        "fe80::1%eth0",
        "fe80::abcd:1234%veth-a",
        "fd00:98::1",
        "fc00::1",
        "::ffff:192.168.1.2",
        "::ffff:198.18.0.5",
    ],
)
def test_local_sources_are_allowed(host: str) -> None:
    assert beacon.source_allowed(host, DEFAULT)


@pytest.mark.parametrize(
    "host",
    [
        "fc94::1",  # the overlay itself: never an underlay endpoint
        "fc94:1234:5678::9",
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "198.20.0.1",
        "198.17.255.255",
        "11.0.0.1",
        "2001:db8::1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "::1",
        "127.0.0.1",
        "224.3.252.148",
        "",
        "not-an-address",
        "192.168.1.300",
        "%eth0",
    ],
)
def test_other_sources_are_refused(host: str) -> None:
    assert not beacon.source_allowed(host, DEFAULT)


def test_overlay_is_refused_even_if_configured() -> None:
    networks = beacon.parse_networks(["fc00::/7", "::/0"])
    assert beacon.source_allowed("fd00::1", networks)
    assert not beacon.source_allowed("fc94::1", networks)


def test_configured_networks_replace_the_defaults() -> None:
    networks = beacon.parse_networks(["203.0.113.0/24"])
    assert beacon.source_allowed("203.0.113.7", networks)
    assert not beacon.source_allowed("192.168.1.1", networks)
    assert not beacon.source_allowed("fe80::1", beacon.parse_networks([]))


def test_parse_networks_accepts_host_bits_and_refuses_garbage() -> None:
    assert beacon.parse_networks(["10.1.2.3/8"])[0].with_prefixlen == "10.0.0.0/8"
    with pytest.raises(ProtocolError, match="invalid network 'ten'"):
        beacon.parse_networks(["ten"])
