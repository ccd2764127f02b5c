"""LAN discovery: signed beacons by IPv4 and IPv6 multicast on every local interface.

Beacons go out every BEACON_INTERVAL on each interface except loopback and the overlay itself;
received beacons are believed only from local-network sources (``beacon.source_allowed``).
Interfaces are re-scanned on every round, so a cable plugged in later is used without restart.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct

from ..core import beacon
from ..core.constants import DISCOVERY_GROUP_V4, DISCOVERY_GROUP_V6, DISCOVERY_PORT
from ..core.errors import HusarnetError, ProtocolError
from ..core.identity import Identity
from ..core.peer import Endpoint
from .in_use import in_use_message

log = logging.getLogger(__name__)

_GROUP_V4 = socket.inet_aton(DISCOVERY_GROUP_V4)
_GROUP_V6 = socket.inet_pton(socket.AF_INET6, DISCOVERY_GROUP_V6)


class DiscoveryError(HusarnetError):
    """The LAN discovery sockets could not be opened or bound."""


def _mreqn(ifindex: int) -> bytes:
    return struct.pack("4s4si", _GROUP_V4, b"\0\0\0\0", ifindex)


def _open_error(port: int, exc: OSError) -> DiscoveryError:
    remedy = "turn LAN discovery off (discovery_enabled: false in the --config file)"
    if exc.errno == errno.EADDRINUSE:
        # Taken by a socket that does not share the port (SO_REUSEADDR): not one of ours.
        return DiscoveryError(in_use_message(f"UDP port {port} (LAN discovery)", remedy))
    return DiscoveryError(f"cannot open the LAN discovery sockets on UDP port {port}: {exc.strerror or exc}")


class Discovery:
    def __init__(
        self,
        identity: Identity,
        hostname: str,
        udp_port: int,
        overlay_interface: str,
        networks: tuple[str, ...],
        port: int = DISCOVERY_PORT,
    ) -> None:
        self._identity = identity
        self._hostname = hostname
        self._udp_port = udp_port
        self._skip = {"lo", overlay_interface}
        self._networks = beacon.parse_networks(networks)
        self._port = port
        self._joined4: set[int] = set()
        self._joined6: set[int] = set()
        self.received = 0
        self.rejected = 0

        opened: list[socket.socket] = []
        try:
            self.sock4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            opened.append(self.sock4)
            # Shared with any other socket on the port that also allows it (another husarnet-ros daemon):
            # multicast beacons reach every one of them.
            self.sock4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            self.sock4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            self.sock4.bind(("", port))
            self.sock6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            opened.append(self.sock6)
            self.sock6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self.sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            self.sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            self.sock6.bind(("::", port))
            for sock in (self.sock4, self.sock6):
                sock.setblocking(False)
        except OSError as exc:
            for sock in opened:
                sock.close()
            raise _open_error(port, exc) from None
        # Join the groups now, not at the first beacon sent: a peer that starts at the same moment may send
        # its first beacon before this daemon's control loop runs, and then it is not missed.
        self._join()

    def sockets(self) -> list[socket.socket]:
        return [self.sock4, self.sock6]

    def _interfaces(self) -> list[tuple[int, str]]:
        return [(i, n) for i, n in socket.if_nameindex() if n not in self._skip]

    def _join(self) -> list[tuple[int, str]]:
        interfaces = self._interfaces()
        for index, name in interfaces:
            if index not in self._joined4:
                try:
                    self.sock4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(index))
                    self._joined4.add(index)
                except OSError as exc:
                    log.debug("no IPv4 multicast on %s: %s", name, exc)
            if index not in self._joined6:
                try:
                    mreq = _GROUP_V6 + struct.pack("@I", index)
                    self.sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                    self._joined6.add(index)
                except OSError as exc:
                    log.debug("no IPv6 multicast on %s: %s", name, exc)
        present = {i for i, _ in interfaces}
        self._joined4 &= present
        self._joined6 &= present
        return interfaces

    def send_beacons(self, timestamp_ns: int) -> None:
        """One beacon per interface and family (failures on an interface are not errors)."""
        data = beacon.encode(self._identity, self._hostname, self._udp_port, timestamp_ns)
        for index, _name in self._join():
            if index in self._joined4:
                with contextlib.suppress(OSError):
                    self.sock4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn(index))
                    self.sock4.sendto(data, (DISCOVERY_GROUP_V4, self._port))
            if index in self._joined6:
                with contextlib.suppress(OSError):
                    self.sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                    self.sock6.sendto(data, (DISCOVERY_GROUP_V6, self._port, 0, index))

    def receive(self, sock: socket.socket) -> tuple[beacon.Beacon, Endpoint] | None:
        """Read one datagram from ``sock``; a verified beacon from an allowed source, else None."""
        try:
            data, addr = sock.recvfrom(beacon.MAX_SIZE + 1)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            log.debug("beacon socket error: %s", exc)
            return None
        host = addr[0]
        if not beacon.source_allowed(host, self._networks):
            self.rejected += 1
            return None
        try:
            decoded = beacon.decode(data)
        except ProtocolError:
            self.rejected += 1
            return None
        if decoded.address == self._identity.address:
            return None
        self.received += 1
        if sock is self.sock6 and host.startswith("fe80") and "%" not in host and len(addr) > 3 and addr[3]:
            host = f"{host}%{socket.if_indextoname(addr[3])}"
        return decoded, (host, decoded.udp_port)

    def close(self) -> None:
        for sock in self.sockets():
            sock.close()
