"""Base-server message codecs (core/basewire.py): round trips, layouts, and ProtocolError (never anything
else) for every malformed message."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from collections.abc import Callable
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from husarnet_ros.core import basewire
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.peer import Endpoint
from husarnet_ros.core.wire import PROTOCOL_VERSION

ADDRESS = bytes.fromhex("fc94" + "11" * 14)
OTHER_ADDRESS = bytes.fromhex("fc94" + "22" * 14)
V4 = ("198.18.0.1", 5582)
V6 = ("fd00:98::1", 40000)

u32 = st.integers(min_value=0, max_value=2**32 - 1)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def _sendable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address that comes back unchanged: unicast, and not IPv4-mapped (that one comes back as IPv4)."""
    if address.is_multicast or address.is_unspecified:
        return False
    return not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None)


endpoints_st = st.tuples(
    st.ip_addresses().filter(_sendable).map(str), st.integers(min_value=1, max_value=65535)
)
endpoint_lists = st.lists(endpoints_st, max_size=basewire.MAX_ENDPOINTS)


# --------------------------------------------------------------------------- sizes and layout
def test_sizes_and_types_are_the_documented_ones() -> None:
    assert basewire.HELLO_SIZE == 64
    assert basewire.CHALLENGE_SIZE == 40
    assert basewire.RELAY_HEADER_SIZE == 20
    assert basewire.MAX_ENDPOINTS == 8
    assert list(range(0x10, 0x19)) == [
        basewire.MSG_BASE_HELLO,
        basewire.MSG_BASE_CHALLENGE,
        basewire.MSG_BASE_REGISTER,
        basewire.MSG_BASE_WELCOME,
        basewire.MSG_BASE_CONNECT,
        basewire.MSG_BASE_PEER,
        basewire.MSG_BASE_RELAY,
        basewire.MSG_BASE_RELAYED,
        basewire.MSG_BASE_UNKNOWN,
    ]
    assert frozenset(range(0x10, 0x19)) == basewire.BASE_TYPES


def test_hello_is_larger_than_any_answer_to_it() -> None:
    """A spoofed hello cannot make the base send more bytes than it received (no amplification)."""
    hello = basewire.encode_hello()
    challenge = basewire.Challenge(2**32 - 1, b"\xff" * basewire.COOKIE_SIZE).encode()
    assert len(hello) == basewire.HELLO_SIZE
    assert len(challenge) < len(hello)
    assert len(basewire.encode_unknown()) < len(hello)


def test_hello_layout() -> None:
    hello = basewire.encode_hello()
    assert hello[:4] == bytes((basewire.MSG_BASE_HELLO, PROTOCOL_VERSION, 0, 0))
    assert hello[4:] == bytes(basewire.HELLO_SIZE - 4)
    basewire.decode_hello(hello)


@settings(max_examples=50)
@given(epoch=u32, cookie=b(basewire.COOKIE_SIZE))
def test_challenge_round_trip_and_layout(epoch: int, cookie: bytes) -> None:
    message = basewire.Challenge(epoch, cookie)
    data = message.encode()
    assert len(data) == basewire.CHALLENGE_SIZE
    assert data[:4] == bytes((basewire.MSG_BASE_CHALLENGE, PROTOCOL_VERSION, 0, 0))
    assert data[4:8] == struct.pack("!I", epoch)
    assert data[8:] == cookie
    assert basewire.decode_challenge(data) == message
    assert basewire.decode_challenge(memoryview(data)) == message


@settings(max_examples=80)
@given(epoch=u32, cookie=b(32), key=b(32), endpoints=endpoint_lists, signature=b(64))
def test_register_round_trip_and_signed_part(
    epoch: int, cookie: bytes, key: bytes, endpoints: list[Endpoint], signature: bytes
) -> None:
    message = basewire.Register(epoch, cookie, key, endpoints, signature)
    data = message.encode()
    assert data[0] == basewire.MSG_BASE_REGISTER
    assert data[-64:] == signature
    assert data[:-64] == message.signed_part()
    decoded = basewire.decode_register(data)
    assert decoded == message
    assert type(decoded.signature) is bytes
    assert decoded.signed_part() == message.signed_part()  # what the base verifies is what the client signed


@settings(max_examples=80)
@given(address=b(16), refresh=st.integers(0, 65535), observed=endpoints_st)
def test_welcome_round_trip(address: bytes, refresh: int, observed: Endpoint) -> None:
    message = basewire.Welcome(address, refresh, observed)
    data = message.encode()
    assert data[0] == basewire.MSG_BASE_WELCOME
    assert basewire.decode_welcome(data) == message


@settings(max_examples=30)
@given(target=b(16))
def test_connect_round_trip(target: bytes) -> None:
    data = basewire.encode_connect(target)
    assert len(data) == 20
    assert data[0] == basewire.MSG_BASE_CONNECT
    assert basewire.decode_connect(data) == target


@settings(max_examples=80)
@given(address=b(16), known=st.booleans(), candidates=endpoint_lists)
def test_peer_round_trip(address: bytes, known: bool, candidates: list[Endpoint]) -> None:
    message = basewire.PeerInfo(address, known, candidates)
    data = message.encode()
    assert data[0] == basewire.MSG_BASE_PEER
    assert basewire.decode_peer(data) == message


@settings(max_examples=50)
@given(
    kind=st.sampled_from([basewire.MSG_BASE_RELAY, basewire.MSG_BASE_RELAYED]),
    address=b(16),
    frame=st.binary(min_size=1, max_size=1500),
)
def test_relay_round_trip_keeps_the_frame_byte_identical(kind: int, address: bytes, frame: bytes) -> None:
    data = basewire.relay_header(kind, address) + frame
    assert len(basewire.relay_header(kind, address)) == basewire.RELAY_HEADER_SIZE
    decoded_address, decoded_frame = basewire.decode_relay(data)
    assert decoded_address == address
    assert bytes(decoded_frame) == frame


def test_unknown_round_trip() -> None:
    data = basewire.encode_unknown()
    assert data == bytes((basewire.MSG_BASE_UNKNOWN, PROTOCOL_VERSION, 0, 0))
    basewire.decode_unknown(data)


@pytest.mark.parametrize("count", [basewire.MAX_ENDPOINTS + 1, 20])
def test_encoders_send_at_most_max_endpoints(count: int) -> None:
    endpoints = [(f"198.18.0.{i + 1}", 1000 + i) for i in range(count)]
    register = basewire.decode_register(
        basewire.Register(1, bytes(32), bytes(32), endpoints, bytes(64)).encode()
    )
    assert register.local_endpoints == endpoints[: basewire.MAX_ENDPOINTS]
    peer = basewire.decode_peer(basewire.PeerInfo(ADDRESS, True, endpoints).encode())
    assert peer.candidates == endpoints[: basewire.MAX_ENDPOINTS]


# --------------------------------------------------------------------------- endpoints
@settings(max_examples=100)
@given(endpoint=endpoints_st)
def test_endpoint_round_trip(endpoint: Endpoint) -> None:
    data = basewire.encode_endpoint(endpoint)
    family = ipaddress.ip_address(endpoint[0]).version
    assert data[0] == family
    assert len(data) == (7 if family == 4 else 19)
    assert basewire.decode_endpoint(data, 0) == (endpoint, len(data))
    # at an offset inside a larger buffer, and followed by something else
    padded = b"xyz" + data + b"rest"
    assert basewire.decode_endpoint(padded, 3) == (endpoint, 3 + len(data))


def test_ipv4_mapped_ipv6_is_encoded_as_ipv4() -> None:
    mapped = basewire.encode_endpoint(("::ffff:198.18.0.7", 4000))
    assert mapped == basewire.encode_endpoint(("198.18.0.7", 4000))
    assert len(mapped) == 7
    assert basewire.decode_endpoint(mapped, 0) == (("198.18.0.7", 4000), 7)


def test_link_local_scope_is_dropped() -> None:
    scoped = basewire.encode_endpoint(("fe80::1%eth0", 4000))
    assert scoped == basewire.encode_endpoint(("fe80::1", 4000))
    assert basewire.decode_endpoint(scoped, 0) == (("fe80::1", 4000), 19)


@pytest.mark.parametrize("port", [0, -1, 65536, 100_000])
def test_encoding_a_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(ProtocolError, match="port"):
        basewire.encode_endpoint(("198.18.0.1", port))


# --------------------------------------------------------------------------- malformed input
def _sample_messages() -> list[tuple[str, Callable[[bytes], object], bytes]]:
    """(name, decoder, a valid message) with IPv4 and IPv6 endpoints in every variable part."""
    register = basewire.Register(7, bytes(range(32)), bytes(range(32, 64)), [V4, V6], bytes(range(64)))
    return [
        ("hello", basewire.decode_hello, basewire.encode_hello()),
        ("challenge", basewire.decode_challenge, basewire.Challenge(7, bytes(range(32))).encode()),
        ("register", basewire.decode_register, register.encode()),
        (
            "register, no endpoints",
            basewire.decode_register,
            basewire.Register(7, bytes(32), bytes(32), [], bytes(64)).encode(),
        ),
        ("welcome v4", basewire.decode_welcome, basewire.Welcome(ADDRESS, 25, V4).encode()),
        ("welcome v6", basewire.decode_welcome, basewire.Welcome(ADDRESS, 25, V6).encode()),
        ("connect", basewire.decode_connect, basewire.encode_connect(ADDRESS)),
        ("peer", basewire.decode_peer, basewire.PeerInfo(ADDRESS, True, [V4, V6]).encode()),
        ("peer, unknown", basewire.decode_peer, basewire.PeerInfo(ADDRESS, False, []).encode()),
        ("relay", basewire.decode_relay, basewire.relay_header(basewire.MSG_BASE_RELAY, ADDRESS) + b"x"),
        ("unknown", basewire.decode_unknown, basewire.encode_unknown()),
    ]


SAMPLES = _sample_messages()
SAMPLE_IDS = [name for name, _, _ in SAMPLES]


@pytest.mark.parametrize(("name", "decoder", "data"), SAMPLES, ids=SAMPLE_IDS)
def test_samples_are_valid(name: str, decoder: Callable[[bytes], object], data: bytes) -> None:
    decoder(data)  # the rejections below are about the one change each makes


@pytest.mark.parametrize(("name", "decoder", "data"), SAMPLES, ids=SAMPLE_IDS)
def test_every_truncation_is_refused(name: str, decoder: Callable[[bytes], object], data: bytes) -> None:
    # The relay sample carries a one-byte frame, so every cut of it leaves no frame at all.
    for size in range(len(data)):
        with pytest.raises(ProtocolError):
            decoder(data[:size])


FIXED_SIZE_SAMPLES = [sample for sample in SAMPLES if sample[0] != "relay"]  # a relay's frame is the rest


@pytest.mark.parametrize(
    ("name", "decoder", "data"), FIXED_SIZE_SAMPLES, ids=[s[0] for s in FIXED_SIZE_SAMPLES]
)
def test_trailing_bytes_are_refused(name: str, decoder: Callable[[bytes], object], data: bytes) -> None:
    for extra in (b"\x00", b"\x01", bytes(7), bytes(64)):
        with pytest.raises(ProtocolError):
            decoder(data + extra)


@pytest.mark.parametrize(("name", "decoder", "data"), SAMPLES, ids=SAMPLE_IDS)
def test_wrong_version_is_refused(name: str, decoder: Callable[[bytes], object], data: bytes) -> None:
    for version in {0, 1, PROTOCOL_VERSION + 1, 255} - {PROTOCOL_VERSION}:
        changed = bytearray(data)
        changed[1] = version
        with pytest.raises(ProtocolError, match="version"):
            decoder(bytes(changed))


@pytest.mark.parametrize(("name", "decoder", "data"), SAMPLES, ids=SAMPLE_IDS)
@pytest.mark.parametrize("index", [2, 3])
def test_non_zero_reserved_bytes_are_refused(
    name: str, decoder: Callable[[bytes], object], data: bytes, index: int
) -> None:
    for value in (1, 0x80, 0xFF):
        changed = bytearray(data)
        changed[index] = value
        with pytest.raises(ProtocolError, match="reserved"):
            decoder(bytes(changed))


def test_every_decoder_refuses_empty_input() -> None:
    for _, decoder, _ in SAMPLES:
        with pytest.raises(ProtocolError):
            decoder(b"")
    with pytest.raises(ProtocolError):
        basewire.decode_endpoint(b"", 0)


def test_relay_without_a_frame_is_refused() -> None:
    with pytest.raises(ProtocolError):
        basewire.decode_relay(basewire.relay_header(basewire.MSG_BASE_RELAY, ADDRESS))


# Offsets of the first endpoint's family byte in each message that carries endpoints.
REGISTER_FIRST_ENDPOINT = 4 + 4 + 32 + 32 + 1
WELCOME_ENDPOINT = 4 + 16 + 2
PEER_FIRST_ENDPOINT = 4 + 16 + 1 + 1


def _endpoint_carriers(endpoint_bytes: bytes) -> list[tuple[Callable[[bytes], object], bytes]]:
    """Each endpoint-carrying message with ``endpoint_bytes`` as its (first and only) endpoint."""
    register_fixed = struct.pack(
        "!BBHI32s32sB", basewire.MSG_BASE_REGISTER, PROTOCOL_VERSION, 0, 1, b"", b"", 1
    )
    welcome_fixed = struct.pack("!BBH16sH", basewire.MSG_BASE_WELCOME, PROTOCOL_VERSION, 0, ADDRESS, 25)
    peer_fixed = struct.pack("!BBH16sBB", basewire.MSG_BASE_PEER, PROTOCOL_VERSION, 0, ADDRESS, 1, 1)
    return [
        (basewire.decode_register, register_fixed + endpoint_bytes + bytes(64)),
        (basewire.decode_welcome, welcome_fixed + endpoint_bytes),
        (basewire.decode_peer, peer_fixed + endpoint_bytes),
        (lambda data: basewire.decode_endpoint(data, 0), endpoint_bytes),
    ]


def test_endpoint_carriers_accept_a_valid_endpoint() -> None:
    for endpoint in (V4, V6):
        for decoder, data in _endpoint_carriers(basewire.encode_endpoint(endpoint)):
            decoder(data)


@pytest.mark.parametrize("family", [0, 1, 5, 41, 255])
def test_unknown_endpoint_family_is_refused(family: int) -> None:
    for valid in (V4, V6):
        changed = bytes([family]) + basewire.encode_endpoint(valid)[1:]
        for decoder, data in _endpoint_carriers(changed):
            with pytest.raises(ProtocolError):
                decoder(data)


@pytest.mark.parametrize("host", ["198.18.0.1", "fd00:98::1"])
def test_endpoint_port_zero_is_refused(host: str) -> None:
    zero_port = basewire.encode_endpoint((host, 1))[:-2] + b"\0\0"
    for decoder, data in _endpoint_carriers(zero_port):
        with pytest.raises(ProtocolError, match="port"):
            decoder(data)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "ff05::2"])
def test_multicast_and_unspecified_endpoints_are_refused(host: str) -> None:
    encoded = basewire.encode_endpoint((host, 5582))  # the encoder does not judge; the decoder must
    for decoder, data in _endpoint_carriers(encoded):
        with pytest.raises(ProtocolError, match="unicast"):
            decoder(data)


@pytest.mark.parametrize("count", [basewire.MAX_ENDPOINTS + 1, 255])
def test_too_many_endpoints_are_refused(count: int) -> None:
    endpoints = b"".join(
        basewire.encode_endpoint((f"198.18.{i // 250}.{i % 250 + 1}", 80)) for i in range(count)
    )
    register = (
        struct.pack("!BBHI32s32sB", basewire.MSG_BASE_REGISTER, PROTOCOL_VERSION, 0, 1, b"", b"", count)
        + endpoints
        + bytes(64)
    )
    peer = (
        struct.pack("!BBH16sBB", basewire.MSG_BASE_PEER, PROTOCOL_VERSION, 0, ADDRESS, 1, count) + endpoints
    )
    for decoder, data in ((basewire.decode_register, register), (basewire.decode_peer, peer)):
        with pytest.raises(ProtocolError, match="more than"):
            decoder(data)


def test_endpoint_count_larger_than_the_endpoints_sent_is_refused() -> None:
    one = basewire.encode_endpoint(V4)
    register = (
        struct.pack("!BBHI32s32sB", basewire.MSG_BASE_REGISTER, PROTOCOL_VERSION, 0, 1, b"", b"", 2)
        + one
        + bytes(64)
    )
    peer = struct.pack("!BBH16sBB", basewire.MSG_BASE_PEER, PROTOCOL_VERSION, 0, ADDRESS, 1, 2) + one
    for decoder, data in ((basewire.decode_register, register), (basewire.decode_peer, peer)):
        with pytest.raises(ProtocolError):
            decoder(data)


@pytest.mark.parametrize("flags", [0x02, 0x03, 0x80, 0xFF])
def test_unknown_peer_flags_are_refused(flags: int) -> None:
    data = bytearray(basewire.PeerInfo(ADDRESS, True, [V4]).encode())
    data[20] = flags
    with pytest.raises(ProtocolError, match="flags"):
        basewire.decode_peer(bytes(data))


def test_peer_known_flag_is_the_one_flag() -> None:
    known = basewire.PeerInfo(OTHER_ADDRESS, True, []).encode()
    unknown = basewire.PeerInfo(OTHER_ADDRESS, False, []).encode()
    assert known[20] == basewire.PEER_KNOWN
    assert unknown[20] == 0
    assert basewire.decode_peer(known).known is True
    assert basewire.decode_peer(unknown).known is False


# --------------------------------------------------------------------------- fuzz
FUZZ = settings(
    max_examples=600,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

DECODERS: list[Callable[[bytes | memoryview], object]] = [
    basewire.decode_hello,
    basewire.decode_challenge,
    basewire.decode_register,
    basewire.decode_welcome,
    basewire.decode_connect,
    basewire.decode_peer,
    basewire.decode_relay,
    basewire.decode_unknown,
    lambda data: basewire.decode_endpoint(data, 0),
]


@st.composite
def mutated_sample(draw: st.DrawFn) -> bytes:
    """A valid message with a few random edits (so the fuzzer gets past the size and header checks)."""
    data = bytearray(draw(st.sampled_from([sample for _, _, sample in SAMPLES])))
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["set", "truncate", "extend"]))
        if edit == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif edit == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        else:
            data += draw(st.binary(min_size=1, max_size=24))
    return bytes(data)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), mutated_sample()))
def test_decoders_raise_only_protocol_error(data: bytes) -> None:
    for decoder in DECODERS:
        with contextlib.suppress(ProtocolError):
            decoder(data)
        with contextlib.suppress(ProtocolError):
            decoder(memoryview(data))  # what the daemon's receive path hands over
