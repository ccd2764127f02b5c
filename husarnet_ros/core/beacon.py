"""LAN discovery beacons: signed announcements sent by multicast to UDP port 5581.

A beacon only suggests where a peer may be reached; the path becomes *direct* only after a
handshake over it authenticates. The signature still matters: it authenticates the hostname
shown in status, and a forged beacon cannot make us list a peer that is not there.

Layout (big-endian): magic "HRB1" | flags (1) | hostname length (1) | UDP port (2) |
timestamp ns (8) | Ed25519 public key (32) | hostname (UTF-8) | signature (64) over all before it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import AuthenticationError, ProtocolError
from .identity import SIGNATURE_SIZE, Identity, derive_address, verify_signature

MAGIC = b"HRB1"
_FIXED = struct.Struct("!4sBBHQ32s")
MAX_HOSTNAME = 63
MAX_SIZE = _FIXED.size + MAX_HOSTNAME + SIGNATURE_SIZE


@dataclass(frozen=True, slots=True)
class Beacon:
    address: bytes
    public_key: bytes
    hostname: str
    udp_port: int
    timestamp_ns: int


def encode(identity: Identity, hostname: str, udp_port: int, timestamp_ns: int) -> bytes:
    # Truncate on a character boundary: a cut multi-byte character would make every peer refuse the beacon.
    name = hostname.encode("utf-8")[:MAX_HOSTNAME].decode("utf-8", "ignore").encode("utf-8")
    body = _FIXED.pack(MAGIC, 0, len(name), udp_port, timestamp_ns, identity.public_key) + name
    return body + identity.sign(body)


def decode(data: bytes) -> Beacon:
    """Verify and decode a beacon; ProtocolError on anything wrong."""
    if len(data) < _FIXED.size + SIGNATURE_SIZE or len(data) > MAX_SIZE:
        raise ProtocolError(f"beacon of {len(data)} bytes has an impossible size")
    magic, _flags, name_len, port, timestamp_ns, public_key = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("not a husarnet_ros beacon")
    if len(data) != _FIXED.size + name_len + SIGNATURE_SIZE:
        raise ProtocolError("beacon length does not match its hostname length")
    if port == 0:
        raise ProtocolError("beacon advertises port 0")
    body = data[: _FIXED.size + name_len]
    # The proof of work (one SHA-256) before the signature (an Ed25519 verification, about 8x the cost):
    # junk from random keys is refused at the cheaper price.
    address = derive_address(public_key)
    if address is None:
        raise ProtocolError("beacon public key fails the address proof of work")
    if not verify_signature(public_key, body, data[len(body) :]):
        raise AuthenticationError("beacon signature is invalid")
    try:
        hostname = body[_FIXED.size :].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("beacon hostname is not UTF-8") from None
    return Beacon(address, public_key, hostname, port, timestamp_ns)


DEFAULT_SOURCE_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "169.254.0.0/16",
    "fe80::/10",
    "fc00::/7",
)


def parse_networks(networks: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for text in networks:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ProtocolError(f"invalid network {text!r}: {exc}") from None
    return tuple(out)


def source_allowed(host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """True if a beacon from ``host`` may be believed: local networks only, never the overlay itself."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address) and ip.packed[:2] == b"\xfc\x94":
        return False  # overlay addresses are never underlay endpoints (no tunnel in a tunnel)
    return any(ip.version == net.version and ip in net for net in networks)
