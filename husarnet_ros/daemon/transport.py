"""The UDP transport: one dual-stack socket carrying handshakes and data frames to every peer.

Endpoints are ``(host, port)`` with IPv4 hosts in plain dotted form and IPv6 link-local hosts
carrying their ``%ifname`` scope, whatever family the socket layer uses internally.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from ..core.constants import MAX_DATAGRAM
from ..core.errors import HusarnetError
from ..core.peer import Endpoint
from .in_use import in_use_message

_SOCKET_BUFFER = 4 * 1024 * 1024
_MAX_CACHED_ENDPOINTS = 4096  # address conversions kept; a flood of sources only empties the cache


class TransportError(HusarnetError):
    """The UDP socket could not be opened or bound."""


class UdpTransport:
    def __init__(self, port: int) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError as exc:
            raise TransportError(f"cannot open an IPv6 UDP socket: {exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
            sock.bind(("::", port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise TransportError(
                    in_use_message(f"UDP port {port}", "choose another port with --udp-port")
                ) from None
            raise TransportError(f"cannot bind UDP port {port}: {exc.strerror or exc}") from None
        self.sock = sock
        self.port = sock.getsockname()[1]
        # Conversions cached both ways: the hot path must not re-parse addresses per packet. Every thread
        # that sends or receives fills them (single dict operations, atomic under the GIL); forget_routes()
        # empties them when interfaces change, since an interface index is part of a link-local target.
        self._to_socket: dict[Endpoint, tuple[str, int, int, int]] = {}
        self._from_socket: dict[tuple[str, int, int], Endpoint] = {}

    def sendto(self, data: bytes, endpoint: Endpoint) -> None:
        target = self._to_socket.get(endpoint)
        if target is None:
            target = socket_target(endpoint)
            if len(self._to_socket) > _MAX_CACHED_ENDPOINTS:
                self._to_socket.clear()
            self._to_socket[endpoint] = target
        # Unreachable networks and full buffers behave like packet loss.
        with contextlib.suppress(OSError):
            self.sock.sendto(data, target)

    def recvfrom(self, size: int = MAX_DATAGRAM) -> tuple[bytes, Endpoint]:
        data, addr = self.sock.recvfrom(size)
        key = (addr[0], addr[1], addr[3])
        endpoint = self._from_socket.get(key)
        if endpoint is None:
            host = addr[0]
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            elif addr[3] and "%" not in host:
                # Python gives a link-local source without its interface; without it, replies would go out
                # through whichever interface's fe80::/64 route the kernel finds first (after a link flap:
                # often hnet0's own), not the one the datagram came in on.
                host = f"{host}%{_interface_name(addr[3])}"
            endpoint = (host, addr[1])
            if len(self._from_socket) > _MAX_CACHED_ENDPOINTS:
                self._from_socket.clear()
            self._from_socket[key] = endpoint
        return data, endpoint

    def forget_routes(self) -> None:
        """Interfaces changed: look interface names up again (a re-plugged adapter gets a new index)."""
        self._to_socket.clear()
        self._from_socket.clear()

    def close(self) -> None:
        self.sock.close()


def _interface_name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:  # gone already: the number still names the scope for sendto()
        return str(index)


def socket_target(endpoint: Endpoint) -> tuple[str, int, int, int]:
    """The sockaddr for ``endpoint`` on the dual-stack socket. A link-local host's ``%ifname`` becomes the
    scope id *field*: Python ignores a scope written in the host string of a 2-tuple, and the datagram then
    leaves through whichever interface's fe80::/64 route the kernel finds first (after a link flap, often
    hnet0's own), so it never reaches the peer."""
    host, port = endpoint
    if "." in host and ":" not in host:
        return (f"::ffff:{host}", port, 0, 0)
    address, _, scope = host.partition("%")
    if not scope:
        return (host, port, 0, 0)
    try:
        index = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
    except OSError:  # the interface is gone; the send fails like packet loss until it is back
        index = 0
    return (address, port, 0, index)
