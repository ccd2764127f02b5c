"""This host's own underlay addresses, advertised to base servers as candidates for peers on the same
networks (the base adds the NAT-observed public endpoint itself)."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

from ..core.basewire import MAX_ENDPOINTS
from ..core.peer import Endpoint

_SIOCGIFADDR = 0x8915
_IF_INET6 = Path("/proc/net/if_inet6")


def _ipv4_of(sock: socket.socket, name: str) -> str | None:
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    except OSError:  # no IPv4 address on it
        return None
    return socket.inet_ntoa(answer[20:24])


def _ipv6_addresses(skip: set[str]) -> list[str]:
    try:
        lines = _IF_INET6.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[5] in skip:
            continue
        address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        if not (address.is_link_local or address.is_loopback or address.is_multicast):
            found.append(str(address))
    return found


def local_endpoints(port: int, skip_interfaces: set[str]) -> list[Endpoint]:
    """(address, port) for every IPv4 and global/ULA IPv6 address outside ``skip_interfaces`` (the overlay
    interface) and loopback: IPv4 first, at most ``MAX_ENDPOINTS``."""
    skip = {"lo", *skip_interfaces}
    v4: list[Endpoint] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            if name in skip:
                continue
            address = _ipv4_of(sock, name)
            if address is not None and not ipaddress.IPv4Address(address).is_loopback:
                v4.append((address, port))
    v6 = [(address, port) for address in _ipv6_addresses(skip)]
    return (v4 + v6)[:MAX_ENDPOINTS]
