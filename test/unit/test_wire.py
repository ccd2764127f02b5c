"""Frame codecs: round trips, exact sizes and offsets, and ProtocolError for every malformed header."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from husarnet_ros.core import wire
from husarnet_ros.core.errors import ProtocolError

u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def test_sizes_are_the_documented_ones() -> None:
    assert wire.INIT_SIGNED_SIZE == 112
    assert wire.INIT_SIZE == 176
    assert wire.RESPONSE_SIGNED_SIZE == 76
    assert wire.RESPONSE_SIZE == 156
    assert wire.CONFIRM_SIGNED_SIZE == 40
    assert wire.CONFIRM_SIZE == 120
    assert wire.DATA_AD_SIZE == 16
    assert wire.DATA_HEADER_SIZE == 40
    assert wire.DATA_MIN_SIZE == 57
    assert (wire.MSG_HANDSHAKE_INIT, wire.MSG_HANDSHAKE_RESPONSE, wire.MSG_HANDSHAKE_CONFIRM) == (1, 2, 3)
    assert wire.MSG_DATA == 4
    assert wire.PROTOCOL_VERSION == 2


# --------------------------------------------------------------------------- init
@settings(max_examples=50)
@given(sender=u32, ts=u64, ia=b(16), ra=b(16), eph=b(32), pub=b(32), sig=b(64))
def test_init_round_trip_and_layout(
    sender: int, ts: int, ia: bytes, ra: bytes, eph: bytes, pub: bytes, sig: bytes
) -> None:
    message = wire.HandshakeInit(sender, ts, ia, ra, eph, pub, sig)
    data = message.encode()
    assert len(data) == wire.INIT_SIZE
    assert data[:4] == b"\x01\x02\x00\x00"
    assert data[4:8] == struct.pack("!I", sender)
    assert data[8:16] == struct.pack("!Q", ts)
    assert data[16:32] == ia
    assert data[32:48] == ra
    assert data[48:80] == eph
    assert data[80:112] == pub
    assert data[112:176] == sig
    assert message.signed_part() == data[:112]
    decoded = wire.decode_init(data)
    assert decoded == message
    assert type(decoded.signature) is bytes


# --------------------------------------------------------------------------- response
@settings(max_examples=50)
@given(sender=u32, receiver=u32, eph=b(32), pub=b(32), sig=b(64), mac=b(16))
def test_response_round_trip_and_layout(
    sender: int, receiver: int, eph: bytes, pub: bytes, sig: bytes, mac: bytes
) -> None:
    message = wire.HandshakeResponse(sender, receiver, eph, pub, sig, mac)
    data = message.encode()
    assert len(data) == wire.RESPONSE_SIZE
    assert data[:4] == b"\x02\x02\x00\x00"
    assert data[4:8] == struct.pack("!I", sender)
    assert data[8:12] == struct.pack("!I", receiver)
    assert data[12:44] == eph
    assert data[44:76] == pub
    assert data[76:140] == sig
    assert data[140:156] == mac
    assert message.signed_part() == data[:76]
    decoded = wire.decode_response(data)
    assert decoded == message
    assert type(decoded.signature) is bytes
    assert type(decoded.mac) is bytes


# --------------------------------------------------------------------------- confirm
@settings(max_examples=50)
@given(receiver=u32, pub=b(32), sig=b(64), mac=b(16))
def test_confirm_round_trip_and_layout(receiver: int, pub: bytes, sig: bytes, mac: bytes) -> None:
    message = wire.HandshakeConfirm(receiver, pub, sig, mac)
    data = message.encode()
    assert len(data) == wire.CONFIRM_SIZE
    assert data[:4] == b"\x03\x02\x00\x00"
    assert data[4:8] == struct.pack("!I", receiver)
    assert data[8:40] == pub
    assert data[40:104] == sig
    assert data[104:120] == mac
    assert message.signed_part() == data[:40]
    assert wire.decode_confirm(data) == message


# --------------------------------------------------------------------------- malformed handshake headers
def _valid_messages() -> dict[str, tuple[bytes, object]]:
    return {
        "init": (
            wire.HandshakeInit(1, 2, bytes(16), bytes(16), bytes(32), bytes(32), bytes(64)).encode(),
            wire.decode_init,
        ),
        "response": (
            wire.HandshakeResponse(1, 2, bytes(32), bytes(32), bytes(64), bytes(16)).encode(),
            wire.decode_response,
        ),
        "confirm": (wire.HandshakeConfirm(1, bytes(32), bytes(64), bytes(16)).encode(), wire.decode_confirm),
    }


def _decode(kind: str, data: bytes) -> object:
    decoder = _valid_messages()[kind][1]
    assert callable(decoder)
    return decoder(data)


KINDS = ["init", "response", "confirm"]


@pytest.mark.parametrize(
    ("kind", "wrong_type"),
    [(kind, t) for i, kind in enumerate(KINDS) for t in (0, 1, 2, 3, 4, 5, 0xFF) if t != i + 1],
)
def test_wrong_type_is_a_protocol_error(kind: str, wrong_type: int) -> None:
    data = bytearray(_valid_messages()[kind][0])
    data[0] = wrong_type
    with pytest.raises(ProtocolError, match="wrong message type"):
        _decode(kind, bytes(data))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", [0, 1, 3, 0xFF])
def test_unsupported_version_is_a_protocol_error(kind: str, version: int) -> None:
    data = bytearray(_valid_messages()[kind][0])
    data[1] = version
    with pytest.raises(ProtocolError, match="version"):
        _decode(kind, bytes(data))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("offset", "value"), [(2, 1), (3, 1), (2, 0x80), (3, 0xFF)])
def test_nonzero_reserved_is_a_protocol_error(kind: str, offset: int, value: int) -> None:
    data = bytearray(_valid_messages()[kind][0])
    data[offset] = value
    with pytest.raises(ProtocolError, match="reserved"):
        _decode(kind, bytes(data))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("delta", [-1000, -1, 1, 7])
def test_wrong_length_is_a_protocol_error(kind: str, delta: int) -> None:
    data = _valid_messages()[kind][0]
    wrong = data[: len(data) + delta] if delta < 0 else data + bytes(delta)
    with pytest.raises(ProtocolError, match="expected"):
        _decode(kind, wrong)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_is_a_protocol_error(kind: str) -> None:
    with pytest.raises(ProtocolError):
        _decode(kind, b"")


# --------------------------------------------------------------------------- data header
@settings(max_examples=50)
@given(receiver=u32, counter=u64)
def test_data_header_round_trip_and_layout(receiver: int, counter: int) -> None:
    header = wire.encode_data_header(receiver, counter)
    assert len(header) == wire.DATA_AD_SIZE
    assert header[:4] == b"\x04\x00\x00\x00"
    assert header[4:8] == struct.pack("!I", receiver)
    assert header[8:16] == struct.pack("!Q", counter)
    frame = header + bytes(wire.NONCE_SIZE + wire.TAG_SIZE + 1)
    assert wire.decode_data_header(frame) == (receiver, counter)


def test_data_header_minimum_size() -> None:
    header = wire.encode_data_header(7, 9)
    ok = header + bytes(wire.DATA_MIN_SIZE - len(header))
    assert wire.decode_data_header(ok) == (7, 9)
    with pytest.raises(ProtocolError, match="shorter than the minimum"):
        wire.decode_data_header(ok[:-1])
    with pytest.raises(ProtocolError):
        wire.decode_data_header(b"")


@pytest.mark.parametrize(("offset", "value"), [(0, 0), (0, 1), (0, 5), (1, 1), (2, 1), (3, 0xFF)])
def test_data_header_wrong_type_or_reserved(offset: int, value: int) -> None:
    frame = bytearray(wire.encode_data_header(1, 1) + bytes(wire.DATA_MIN_SIZE))
    frame[offset] = value
    with pytest.raises(ProtocolError, match="bad type or non-zero reserved"):
        wire.decode_data_header(bytes(frame))


def test_encoders_reject_out_of_range_fields_with_struct_error() -> None:
    # Encoders are fed by the core itself, never by the network: out-of-range fields are programming errors.
    with pytest.raises(struct.error):
        wire.encode_data_header(2**32, 0)
    with pytest.raises(struct.error):
        wire.encode_data_header(0, 2**64)


def test_message_type() -> None:
    assert wire.message_type(b"\x04rest") == 4
    with pytest.raises(ProtocolError, match="empty"):
        wire.message_type(b"")


# --------------------------------------------------------------------------- IPv6 header compression
SRC = bytes.fromhex("fc94" + "11" * 14)
DST = bytes.fromhex("fc94" + "22" * 14)


def ipv6(src: bytes, dst: bytes, payload: bytes) -> bytes:
    return (
        bytes([0x60, 0x0A, 0xBC, 0xDE])
        + len(payload).to_bytes(2, "big")
        + bytes([6, 64])
        + src
        + dst
        + payload
    )


@settings(max_examples=100)
@given(payload=st.binary(max_size=200), first8=b(8))
def test_compression_round_trip(payload: bytes, first8: bytes) -> None:
    packet = first8 + SRC + DST + payload
    inner = wire.compress_ipv6(packet, SRC, DST)
    assert inner[0] == wire.INNER_IPV6_COMPRESSED
    assert len(inner) == len(packet) - 32 + 1
    assert inner[1:9] == first8
    assert inner[9:] == payload
    assert wire.decompress_ipv6(inner[1:], SRC, DST) == packet


@pytest.mark.parametrize(
    "packet",
    [
        ipv6(DST, SRC, b"reversed"),  # addresses are not the session's (wrong direction)
        ipv6(SRC, bytes.fromhex("ff02" + "00" * 13 + "01"), b"multicast"),
        ipv6(bytes.fromhex("fc94" + "33" * 14), DST, b"other source"),
        ipv6(SRC, DST, b"")[:39],  # shorter than an IPv6 header
        b"",
    ],
)
def test_non_compressible_packets_travel_whole(packet: bytes) -> None:
    inner = wire.compress_ipv6(packet, SRC, DST)
    assert inner == b"\x00" + packet


def test_header_only_packet_compresses_to_nine_bytes() -> None:
    packet = ipv6(SRC, DST, b"")
    inner = wire.compress_ipv6(packet, SRC, DST)
    assert len(inner) == 9
    assert wire.decompress_ipv6(inner[1:], SRC, DST) == packet


@pytest.mark.parametrize("size", range(8))
def test_decompress_too_short_is_a_protocol_error(size: int) -> None:
    with pytest.raises(ProtocolError, match="8-byte header"):
        wire.decompress_ipv6(bytes(size), SRC, DST)
