"""Messages between a node and a base server (PROTOCOL.md section 13), encoded and decoded.

They travel on the node's one UDP port next to the peer-to-peer messages and start with the same 4-byte
header (type, version, two zero bytes); their types are 0x10..0x18. The base server learns who a client is
only from a signed registration bound to a cookie for the client's source endpoint, so it stores nothing
for a datagram it cannot attribute; everything it then says to a client (candidates, relayed frames) is
only a hint or an end-to-end sealed frame: clients probe candidates with their own sessions and never move
a path on the base server's word.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import ProtocolError
from .identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE
from .peer import Endpoint
from .wire import PROTOCOL_VERSION

MSG_BASE_HELLO = 0x10  # client -> base: "send me a cookie" (padded: the answer is smaller)
MSG_BASE_CHALLENGE = 0x11  # base -> client: epoch and cookie for the client's source endpoint
MSG_BASE_REGISTER = 0x12  # client -> base: cookie, public key, local endpoints, signature
MSG_BASE_WELCOME = 0x13  # base -> client: registered; the endpoint the base saw it from
MSG_BASE_CONNECT = 0x14  # client -> base: tell me and that peer each other's candidates
MSG_BASE_PEER = 0x15  # base -> client: a peer's candidates (or that the base does not know it)
MSG_BASE_RELAY = 0x16  # client -> base: forward this frame to an overlay address
MSG_BASE_RELAYED = 0x17  # base -> client: a frame from an overlay address
MSG_BASE_UNKNOWN = 0x18  # base -> client: you are not registered here (any more): register again

BASE_TYPES = frozenset(range(MSG_BASE_HELLO, MSG_BASE_UNKNOWN + 1))
FIRST_BASE_TYPE = MSG_BASE_HELLO
LAST_BASE_TYPE = MSG_BASE_UNKNOWN

HEADER_SIZE = 4
ADDRESS_SIZE = 16
COOKIE_SIZE = 32
HELLO_SIZE = 64  # larger than any answer to it: a spoofed hello cannot be used to amplify
MAX_ENDPOINTS = 8  # local endpoints a client advertises, and candidates the base returns per peer
RELAY_HEADER_SIZE = HEADER_SIZE + ADDRESS_SIZE  # 20, in front of a relayed frame
# What the signature of a registration covers, after this prefix: every byte before the signature.
REGISTER_CONTEXT = b"husarnet-ros base register v2\x00"

_CHALLENGE = struct.Struct(f"!BBHI{COOKIE_SIZE}s")
CHALLENGE_SIZE = _CHALLENGE.size  # 40
_REGISTER_FIXED = struct.Struct(f"!BBHI{COOKIE_SIZE}s{PUBLIC_KEY_SIZE}sB")
_WELCOME_FIXED = struct.Struct(f"!BBH{ADDRESS_SIZE}sH")
_PEER_FIXED = struct.Struct(f"!BBH{ADDRESS_SIZE}sBB")
PEER_KNOWN = 0x01


def header(message_type: int) -> bytes:
    return bytes((message_type, PROTOCOL_VERSION, 0, 0))


def check_header(data: bytes | memoryview, name: str, *, exact: int | None = None, minimum: int = 0) -> int:
    """The type byte, after checking version, reserved bytes and size; ProtocolError otherwise."""
    size = len(data)
    if size < max(HEADER_SIZE, minimum) or (exact is not None and size != exact):
        raise ProtocolError(f"{name}: {size} bytes is not a valid size")
    if data[1] != PROTOCOL_VERSION:
        raise ProtocolError(f"{name}: unsupported protocol version {data[1]}")
    if data[2] or data[3]:
        raise ProtocolError(f"{name}: reserved bytes must be zero")
    return data[0]


# ---------------------------------------------------------------------- endpoints
def encode_endpoint(endpoint: Endpoint) -> bytes:
    """family (4 or 6) | address (4 or 16 bytes) | port. IPv4-mapped IPv6 is sent as IPv4; a link-local
    scope (``%eth0``) means nothing to anyone else and is left out."""
    host, port = endpoint
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not 0 < port < 65536:
        raise ProtocolError(f"endpoint port {port} is out of range")
    return bytes([address.version]) + address.packed + port.to_bytes(2, "big")


def decode_endpoint(data: bytes | memoryview, offset: int) -> tuple[Endpoint, int]:
    """One endpoint at ``offset``; returns it and the offset after it."""
    if offset >= len(data):
        raise ProtocolError("endpoint: truncated")
    family = data[offset]
    length = {4: 4, 6: 16}.get(family)
    if length is None:
        raise ProtocolError(f"endpoint: unknown address family {family}")
    end = offset + 1 + length + 2
    if end > len(data):
        raise ProtocolError("endpoint: truncated")
    raw = bytes(data[offset + 1 : offset + 1 + length])
    port = int.from_bytes(data[end - 2 : end], "big")
    if port == 0:
        raise ProtocolError("endpoint: port 0")
    address = ipaddress.ip_address(raw)
    if address.is_unspecified or address.is_multicast:
        raise ProtocolError("endpoint: not a unicast address")
    return (str(address), port), end


def _encode_endpoints(endpoints: list[Endpoint]) -> bytes:
    return b"".join(encode_endpoint(e) for e in endpoints[:MAX_ENDPOINTS])


def _decode_endpoints(data: bytes | memoryview, offset: int, count: int) -> tuple[list[Endpoint], int]:
    if count > MAX_ENDPOINTS:
        raise ProtocolError(f"{count} endpoints is more than {MAX_ENDPOINTS}")
    endpoints = []
    for _ in range(count):
        endpoint, offset = decode_endpoint(data, offset)
        endpoints.append(endpoint)
    return endpoints, offset


# ---------------------------------------------------------------------- messages
def encode_hello() -> bytes:
    return header(MSG_BASE_HELLO).ljust(HELLO_SIZE, b"\0")


def decode_hello(data: bytes | memoryview) -> None:
    check_header(data, "base hello", exact=HELLO_SIZE)


@dataclass(frozen=True)
class Challenge:
    epoch: int
    cookie: bytes

    def encode(self) -> bytes:
        return _CHALLENGE.pack(MSG_BASE_CHALLENGE, PROTOCOL_VERSION, 0, self.epoch, self.cookie)


def decode_challenge(data: bytes | memoryview) -> Challenge:
    check_header(data, "base challenge", exact=CHALLENGE_SIZE)
    _, _, _, epoch, cookie = _CHALLENGE.unpack_from(data)
    return Challenge(epoch, cookie)


@dataclass(frozen=True)
class Register:
    epoch: int
    cookie: bytes
    public_key: bytes
    local_endpoints: list[Endpoint]
    signature: bytes = b""

    def signed_part(self) -> bytes:
        endpoints = self.local_endpoints[:MAX_ENDPOINTS]
        fixed = _REGISTER_FIXED.pack(
            MSG_BASE_REGISTER, PROTOCOL_VERSION, 0, self.epoch, self.cookie, self.public_key, len(endpoints)
        )
        return fixed + _encode_endpoints(endpoints)

    def encode(self) -> bytes:
        return self.signed_part() + self.signature


def decode_register(data: bytes | memoryview) -> Register:
    """Only the layout: the caller checks cookie, key and signature (over REGISTER_CONTEXT + signed_part)."""
    check_header(data, "base register", minimum=_REGISTER_FIXED.size + SIGNATURE_SIZE)
    _, _, _, epoch, cookie, public_key, count = _REGISTER_FIXED.unpack_from(data)
    endpoints, end = _decode_endpoints(data, _REGISTER_FIXED.size, count)
    if len(data) != end + SIGNATURE_SIZE:
        raise ProtocolError("base register: wrong size")
    return Register(epoch, cookie, public_key, endpoints, bytes(data[end:]))


@dataclass(frozen=True)
class Welcome:
    address: bytes  # the overlay address the base registered
    refresh_s: int  # register again within this many seconds to stay registered
    observed: Endpoint  # where the base saw the registration come from (the NAT's public side)

    def encode(self) -> bytes:
        return _WELCOME_FIXED.pack(
            MSG_BASE_WELCOME, PROTOCOL_VERSION, 0, self.address, self.refresh_s
        ) + encode_endpoint(self.observed)


def decode_welcome(data: bytes | memoryview) -> Welcome:
    check_header(data, "base welcome", minimum=_WELCOME_FIXED.size + 7)
    _, _, _, address, refresh_s = _WELCOME_FIXED.unpack_from(data)
    observed, end = decode_endpoint(data, _WELCOME_FIXED.size)
    if end != len(data):
        raise ProtocolError("base welcome: wrong size")
    return Welcome(address, refresh_s, observed)


def encode_connect(target: bytes) -> bytes:
    return header(MSG_BASE_CONNECT) + target


def decode_connect(data: bytes | memoryview) -> bytes:
    check_header(data, "base connect", exact=HEADER_SIZE + ADDRESS_SIZE)
    return bytes(data[HEADER_SIZE:])


@dataclass(frozen=True)
class PeerInfo:
    address: bytes
    known: bool  # registered at this base: it relays to the peer, and the candidates are fresh
    candidates: list[Endpoint]  # NAT-observed first, then the peer's own local endpoints

    def encode(self) -> bytes:
        candidates = self.candidates[:MAX_ENDPOINTS]
        flags = PEER_KNOWN if self.known else 0
        fixed = _PEER_FIXED.pack(MSG_BASE_PEER, PROTOCOL_VERSION, 0, self.address, flags, len(candidates))
        return fixed + _encode_endpoints(candidates)


def decode_peer(data: bytes | memoryview) -> PeerInfo:
    check_header(data, "base peer", minimum=_PEER_FIXED.size)
    _, _, _, address, flags, count = _PEER_FIXED.unpack_from(data)
    if flags & ~PEER_KNOWN:
        raise ProtocolError("base peer: unknown flags")
    candidates, end = _decode_endpoints(data, _PEER_FIXED.size, count)
    if end != len(data):
        raise ProtocolError("base peer: wrong size")
    return PeerInfo(address, bool(flags & PEER_KNOWN), candidates)


def relay_header(message_type: int, address: bytes) -> bytes:
    """The 20 bytes before a relayed frame: MSG_BASE_RELAY + destination, or MSG_BASE_RELAYED + source."""
    return header(message_type) + address


def decode_relay(data: bytes | memoryview, name: str = "base relay") -> tuple[bytes, memoryview]:
    """(overlay address, the frame) of a relay or relayed message."""
    check_header(data, name, minimum=RELAY_HEADER_SIZE + 1)
    view = memoryview(data)
    return bytes(view[HEADER_SIZE:RELAY_HEADER_SIZE]), view[RELAY_HEADER_SIZE:]


def encode_unknown() -> bytes:
    return header(MSG_BASE_UNKNOWN)


def decode_unknown(data: bytes | memoryview) -> None:
    check_header(data, "base unknown", exact=HEADER_SIZE)


# ---------------------------------------------------------------------- TCP framing
# Over TCP (for networks that let no UDP out) the same messages travel as frames: a big-endian u16 length,
# then the message. A zero length is invalid (no message is empty).
FRAME_LENGTH_SIZE = 2
MAX_FRAME = 0xFFFF


def frame(message: bytes | memoryview) -> bytes:
    if not 0 < len(message) <= MAX_FRAME:
        raise ProtocolError(f"a TCP frame holds 1..{MAX_FRAME} bytes, not {len(message)}")
    return len(message).to_bytes(FRAME_LENGTH_SIZE, "big") + bytes(message)


class FrameDecoder:
    """Cuts a TCP byte stream into messages. ``feed`` returns the complete ones; ProtocolError on a zero
    length, after which the stream cannot be trusted (close it)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        self._buffer += data
        messages = []
        buffer, start = self._buffer, 0
        while len(buffer) - start >= FRAME_LENGTH_SIZE:
            length = int.from_bytes(buffer[start : start + FRAME_LENGTH_SIZE], "big")
            if length == 0:
                raise ProtocolError("TCP frame of length 0")
            end = start + FRAME_LENGTH_SIZE + length
            if end > len(buffer):
                break
            messages.append(bytes(buffer[start + FRAME_LENGTH_SIZE : end]))
            start = end
        del buffer[:start]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (at most MAX_FRAME + 1)."""
        return len(self._buffer)
