"""Frame codecs: bytes <-> typed messages. Byte layouts are documented in docs/PROTOCOL.md.

Every decoder raises only ProtocolError, whatever the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ProtocolError

PROTOCOL_VERSION = 2  # 2: the init is signed by the initiator (version 1's was not)

MSG_HANDSHAKE_INIT = 0x01
MSG_HANDSHAKE_RESPONSE = 0x02
MSG_HANDSHAKE_CONFIRM = 0x03
MSG_DATA = 0x04

KEY_SIZE = 32
SIGNATURE_SIZE = 64
MAC_SIZE = 16
NONCE_SIZE = 24
TAG_SIZE = 16

# --- handshake init: type ver rsv(2) sender_index timestamp_ns initiator_addr responder_addr ephemeral pubkey
#     | signature (by pubkey, over everything before it)
_INIT_SIGNED = struct.Struct("!BBHIQ16s16s32s32s")
INIT_SIGNED_SIZE = _INIT_SIGNED.size  # 112
INIT_SIZE = INIT_SIGNED_SIZE + SIGNATURE_SIZE  # 176
# --- handshake response: type ver rsv(2) sender_index receiver_index ephemeral pubkey | signature mac
_RESPONSE_SIGNED = struct.Struct("!BBHII32s32s")
RESPONSE_SIGNED_SIZE = _RESPONSE_SIGNED.size  # 76
RESPONSE_SIZE = RESPONSE_SIGNED_SIZE + SIGNATURE_SIZE + MAC_SIZE  # 156
# --- handshake confirm: type ver rsv(2) receiver_index pubkey | signature mac
_CONFIRM_SIGNED = struct.Struct("!BBHI32s")
CONFIRM_SIGNED_SIZE = _CONFIRM_SIGNED.size  # 40
CONFIRM_SIZE = CONFIRM_SIGNED_SIZE + SIGNATURE_SIZE + MAC_SIZE  # 120
# --- data: type rsv(3) receiver_index counter | nonce | ciphertext (inner frame + tag)
DATA_HEADER = struct.Struct("!B3xIQ")
DATA_WORDS = struct.Struct("!IIQ")  # the header as (type << 24 | reserved, receiver index, counter)
DATA_FIRST_WORD = MSG_DATA << 24
DATA_COUNTER = struct.Struct("!Q")
DATA_COUNTER_OFFSET = 8
DATA_AD_SIZE = DATA_HEADER.size  # 16, authenticated as associated data
DATA_HEADER_SIZE = DATA_AD_SIZE + NONCE_SIZE  # 40
DATA_MIN_SIZE = DATA_HEADER_SIZE + TAG_SIZE + 1  # at least the inner type byte

# Inner frame types (first plaintext byte of a data frame).
INNER_IPV6 = 0x00  # a whole IPv6 packet
INNER_IPV6_COMPRESSED = 0x01  # IPv6 header without addresses (peer -> me implied) + payload
INNER_KEEPALIVE = 0x02
INNER_PING = 0x03  # 8-byte probe id
INNER_PONG = 0x04  # echoes the 8-byte probe id
INNER_PROBE = 0x05  # 8-byte probe id; answered like a ping, but never moves the receiver's endpoint
INNER_FEATURES = 0x06  # u32 features the sender understands, u8 flags (FEATURES_REPLY_WANTED)
INNER_IPV6_PARTIAL = 0x07  # as INNER_IPV6_COMPRESSED; the TCP/UDP checksum holds only the pseudo-header sum
INNER_SIZE_PROBE = 0x08  # 8-byte probe id, padding: answered like a probe (does a datagram this large pass?)
PROBE_ID_SIZE = 8
# What a TCP segment's datagram carries besides the segment: data header, inner type, the 8 IPv6 header bytes
# that are not addresses (INNER_IPV6_PARTIAL), tag. The TCP header with options comes on top.
SEGMENT_OVERHEAD = DATA_HEADER_SIZE + 1 + 8 + TAG_SIZE

# Feature bits, exchanged per session (INNER_FEATURES); a peer that never answers has none of them.
FEATURE_PARTIAL_CHECKSUM = 0x01  # may receive INNER_IPV6_PARTIAL
# Answers INNER_SIZE_PROBE, and takes TCP segments larger than its own MTU in datagrams of any size the path
# carries (up to MAX_DATAGRAM): the sender may cut TSO packets to fit the path rather than the overlay MTU.
FEATURE_LARGE_SEGMENTS = 0x02
LOCAL_FEATURES = FEATURE_PARTIAL_CHECKSUM | FEATURE_LARGE_SEGMENTS
FEATURES_REPLY_WANTED = 0x01  # the sender has not seen ours on this session yet
_FEATURES = struct.Struct("!BIB")
FEATURES_FRAME_SIZE = _FEATURES.size  # 6

IPV6_HEADER_SIZE = 40


@dataclass(frozen=True, slots=True)
class HandshakeInit:
    sender_index: int
    timestamp_ns: int
    initiator_address: bytes
    responder_address: bytes
    ephemeral: bytes
    public_key: bytes
    signature: bytes

    def signed_part(self) -> bytes:
        return _INIT_SIGNED.pack(
            MSG_HANDSHAKE_INIT,
            PROTOCOL_VERSION,
            0,
            self.sender_index,
            self.timestamp_ns,
            self.initiator_address,
            self.responder_address,
            self.ephemeral,
            self.public_key,
        )

    def encode(self) -> bytes:
        return self.signed_part() + self.signature


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    sender_index: int
    receiver_index: int
    ephemeral: bytes
    public_key: bytes
    signature: bytes
    mac: bytes

    def signed_part(self) -> bytes:
        return _RESPONSE_SIGNED.pack(
            MSG_HANDSHAKE_RESPONSE,
            PROTOCOL_VERSION,
            0,
            self.sender_index,
            self.receiver_index,
            self.ephemeral,
            self.public_key,
        )

    def encode(self) -> bytes:
        return self.signed_part() + self.signature + self.mac


@dataclass(frozen=True, slots=True)
class HandshakeConfirm:
    receiver_index: int
    public_key: bytes
    signature: bytes
    mac: bytes

    def signed_part(self) -> bytes:
        return _CONFIRM_SIGNED.pack(
            MSG_HANDSHAKE_CONFIRM, PROTOCOL_VERSION, 0, self.receiver_index, self.public_key
        )

    def encode(self) -> bytes:
        return self.signed_part() + self.signature + self.mac


def _check_header(data: bytes, expected_type: int, size: int, name: str) -> None:
    if len(data) != size:
        raise ProtocolError(f"{name}: expected {size} bytes, got {len(data)}")
    if data[0] != expected_type:
        raise ProtocolError(f"{name}: wrong message type {data[0]:#04x}")
    if data[1] != PROTOCOL_VERSION:
        raise ProtocolError(f"{name}: unsupported protocol version {data[1]}")
    if data[2] or data[3]:
        raise ProtocolError(f"{name}: reserved bytes must be zero")


def decode_init(data: bytes) -> HandshakeInit:
    _check_header(data, MSG_HANDSHAKE_INIT, INIT_SIZE, "handshake init")
    _, _, _, sender, ts, init_addr, resp_addr, eph, pub = _INIT_SIGNED.unpack_from(data)
    return HandshakeInit(sender, ts, init_addr, resp_addr, eph, pub, bytes(data[INIT_SIGNED_SIZE:]))


def decode_response(data: bytes) -> HandshakeResponse:
    _check_header(data, MSG_HANDSHAKE_RESPONSE, RESPONSE_SIZE, "handshake response")
    _, _, _, sender, receiver, eph, pub = _RESPONSE_SIGNED.unpack_from(data)
    sig_end = RESPONSE_SIGNED_SIZE + SIGNATURE_SIZE
    return HandshakeResponse(
        sender, receiver, eph, pub, bytes(data[RESPONSE_SIGNED_SIZE:sig_end]), bytes(data[sig_end:])
    )


def decode_confirm(data: bytes) -> HandshakeConfirm:
    _check_header(data, MSG_HANDSHAKE_CONFIRM, CONFIRM_SIZE, "handshake confirm")
    _, _, _, receiver, pub = _CONFIRM_SIGNED.unpack_from(data)
    sig_end = CONFIRM_SIGNED_SIZE + SIGNATURE_SIZE
    return HandshakeConfirm(receiver, pub, bytes(data[CONFIRM_SIGNED_SIZE:sig_end]), bytes(data[sig_end:]))


def encode_data_header(receiver_index: int, counter: int) -> bytes:
    """The 16 bytes of a data frame that are authenticated as associated data."""
    return DATA_HEADER.pack(MSG_DATA, receiver_index, counter)


def decode_data_header(data: bytes) -> tuple[int, int]:
    """(receiver_index, counter) of a data frame; ProtocolError if it cannot be one."""
    if len(data) < DATA_MIN_SIZE:
        raise ProtocolError(f"data frame: {len(data)} bytes is shorter than the minimum {DATA_MIN_SIZE}")
    if data[0] != MSG_DATA or data[1] or data[2] or data[3]:
        raise ProtocolError("data frame: bad type or non-zero reserved bytes")
    _, receiver, counter = DATA_HEADER.unpack_from(data)
    return receiver, counter


def message_type(data: bytes) -> int:
    """The type byte of a datagram; ProtocolError when empty."""
    if not data:
        raise ProtocolError("empty datagram")
    return data[0]


def encode_features(features: int, reply_wanted: bool) -> bytes:
    return _FEATURES.pack(INNER_FEATURES, features, FEATURES_REPLY_WANTED if reply_wanted else 0)


def decode_features(inner: bytes) -> tuple[int, bool]:
    """(features, reply wanted) of a features frame; ProtocolError if it is not one."""
    if len(inner) != FEATURES_FRAME_SIZE or inner[0] != INNER_FEATURES:
        raise ProtocolError("features frame: wrong size or type")
    _, features, flags = _FEATURES.unpack(inner)
    return features, bool(flags & FEATURES_REPLY_WANTED)


# --- inner IPv6 header compression -------------------------------------------------------
# Overlay packets always go from the sender's address to the receiver's (both implied by the
# session), so the 32 address bytes are dropped on the wire and restored on receipt.


def compress_ipv6(packet: bytes | bytearray, src: bytes, dst: bytes) -> bytes:
    """Inner frame for ``packet``: compressed when its addresses are the session's, else whole."""
    if len(packet) >= IPV6_HEADER_SIZE and packet[8:24] == src and packet[24:40] == dst:
        return b"\x01" + packet[:8] + packet[40:]
    return b"\x00" + packet


def can_compress(packet: bytes | bytearray | memoryview, src: bytes, dst: bytes) -> bool:
    return len(packet) >= IPV6_HEADER_SIZE and packet[8:24] == src and packet[24:40] == dst


def compress_partial(packet: bytes | bytearray) -> bytes:
    """Inner frame for a packet whose addresses are the session's and whose checksum is partial."""
    return b"\x07" + packet[:8] + packet[40:]


def decompress_ipv6(inner: bytes, src: bytes, dst: bytes) -> bytes:
    """Restore the IPv6 packet of a compressed inner frame (without its type byte)."""
    if len(inner) < 8:
        raise ProtocolError("compressed IPv6 frame shorter than its 8-byte header")
    return inner[:8] + src + dst + inner[8:]
