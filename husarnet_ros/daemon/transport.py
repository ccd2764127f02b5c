"""The UDP transport: one dual-stack socket carrying handshakes and data frames to every peer.

Endpoints are ``(host, port)`` with IPv4 hosts in plain dotted form and IPv6 link-local hosts
carrying their ``%ifname`` scope, whatever family the socket layer uses internally.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Sequence

from ..core import basewire
from ..core.errors import HusarnetError
from ..core.peer import RELAY_PORT, Endpoint
from .in_use import in_use_message

log = logging.getLogger(__name__)

# Bursts (a DDS message is hundreds of datagrams sent at once) must fit in the socket while the receive thread
# catches up. Set with the *FORCE options while the daemon still has CAP_NET_ADMIN: plain SO_RCVBUF is capped
# by net.core.rmem_max (208 KB by default), which one 1 MB message overflows.
_SOCKET_BUFFER = 8 * 1024 * 1024
_MAX_CACHED_ENDPOINTS = 4096  # address conversions kept; a flood of sources only empties the cache
# linux/udp.h; Python 3.11 does not name them.
UDP_SEGMENT = 103
UDP_GRO = 104
# One GSO send: at most this many datagrams (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels) and this
# many bytes (the whole must fit one IP packet's 16-bit length).
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
# A GRO receive returns up to 64 KB of same-sized datagrams.
RECEIVE_BUFFER_SIZE = 65536 + 4096
# A GSO send refused because the kernel or the device cannot segment (GSO off for good), or because one
# segment would not fit the route's MTU (that size off; a single datagram is fragmented instead).
_GSO_FAILURES = {errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP}
_GSO_TOO_BIG = {errno.EINVAL, errno.EMSGSIZE}


_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class TransportError(HusarnetError):
    """The UDP socket could not be opened or bound."""


class UdpTransport:
    """``gso``/``gro``: the kernel sends several datagrams per ``sendto_many`` call / returns several per
    ``recv_batch`` (negotiated at start when ``offload`` is asked for; GSO also turns itself off if the kernel
    refuses a send, e.g. a route through a device without checksum offload)."""

    def __init__(self, port: int, *, offload: bool = False) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError as exc:
            raise TransportError(f"cannot open an IPv6 UDP socket: {exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _set_buffers(sock)
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
        self.gso = offload and try_udp_option(sock, UDP_SEGMENT, 0)  # 0: no default size, only per send
        self.gro = offload and try_udp_option(sock, UDP_GRO, 1)
        self._gro_ancillary = socket.CMSG_SPACE(4) if self.gro else 0
        self._gso_max_segment = 0xFFFF  # lowered when the kernel refuses a segment size (see _gso_send)
        # Conversions cached both ways: the hot path must not re-parse addresses per packet. Every thread
        # that sends or receives fills them (single dict operations, atomic under the GIL); forget_routes()
        # empties them when interfaces change, since an interface index is part of a link-local target.
        self._to_socket: dict[Endpoint, tuple[str, int, int, int]] = {}
        self._from_socket: dict[tuple[str, int, int], Endpoint] = {}
        # Relayed paths (core/peer.py relay_endpoint): sent to the home base server with a relay header.
        # Set by the control loop; the send threads read it (one attribute: atomic under the GIL).
        self._relay_via: tuple[str, int, int, int] | None = None
        self._relay_headers: dict[Endpoint, bytes] = {}

    def _target(self, endpoint: Endpoint) -> tuple[str, int, int, int]:
        target = self._to_socket.get(endpoint)
        if target is None:
            target = socket_target(endpoint)
            if len(self._to_socket) > _MAX_CACHED_ENDPOINTS:
                self._to_socket.clear()
            self._to_socket[endpoint] = target
        return target

    def set_relay(self, base: Endpoint | None) -> None:
        """Send relayed datagrams through ``base`` from now on (None: no base relays; they are dropped)."""
        self._relay_via = None if base is None else socket_target(base)

    def sendto(self, data: bytes | memoryview, endpoint: Endpoint) -> None:
        if endpoint[1] == RELAY_PORT:
            self._send_relayed(data, endpoint)
            return
        # Unreachable networks and full buffers behave like packet loss.
        with contextlib.suppress(OSError):
            self.sock.sendto(data, self._target(endpoint))

    def _send_relayed(self, data: bytes | memoryview, endpoint: Endpoint) -> None:
        via = self._relay_via
        if via is None:
            return  # like packet loss: the path stops answering and the node looks for another
        with contextlib.suppress(OSError):
            self.sock.sendmsg([self._relay_header(endpoint), data], [], 0, via)

    def _relay_header(self, endpoint: Endpoint) -> bytes:
        header = self._relay_headers.get(endpoint)
        if header is None:
            address = ipaddress.IPv6Address(endpoint[0]).packed
            header = basewire.relay_header(basewire.MSG_BASE_RELAY, address)
            if len(self._relay_headers) > _MAX_CACHED_ENDPOINTS:
                self._relay_headers.clear()
            self._relay_headers[endpoint] = header
        return header

    def sendto_batch(self, datagrams: memoryview, size: int, endpoint: Endpoint) -> None:
        """Send datagrams lying back to back in ``datagrams``, each ``size`` bytes (the last may be shorter),
        to one endpoint: with GSO in as few system calls as the kernel allows, else one by one."""
        total = len(datagrams)
        if endpoint[1] == RELAY_PORT:
            self._send_relayed_batch(datagrams, size, endpoint)
            return
        if not self.gso or total <= size:
            for start in range(0, total, size):
                self.sendto(datagrams[start : start + size], endpoint)
            return
        step = size * max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
        for start in range(0, total, step):
            if not self._gso_send([datagrams[start : start + step]], size, self._target(endpoint)):
                for single in range(start, total, size):
                    self.sendto(datagrams[single : single + size], endpoint)
                return

    def _send_relayed_batch(self, datagrams: memoryview, size: int, endpoint: Endpoint) -> None:
        """Datagrams for a relayed path, each behind its own relay header, in GSO sends of segments of
        ``size`` + header to the base when the kernel allows (the base relays them the same way)."""
        via, total = self._relay_via, len(datagrams)
        if via is None:
            return
        sent = 0  # how much of ``datagrams`` went out in GSO sends; the rest goes one by one
        if self.gso and total > size:
            segment = size + basewire.RELAY_HEADER_SIZE
            step = size * max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))
            while sent < total:
                run = datagrams[sent : sent + step]
                if not self._send_run(
                    [run[start : start + size] for start in range(0, len(run), size)], size, endpoint
                ):
                    break
                sent += len(run)
        for start in range(sent, total, size):
            self._send_relayed(datagrams[start : start + size], endpoint)

    def send_many(self, datagrams: Sequence[tuple[Endpoint, bytes | memoryview]]) -> None:
        """Send datagrams in order; runs of them for one endpoint with one size (the last of a run may be
        shorter) go in one GSO send each: a burst of equal packets (a DDS sample cut into fragments) costs
        one system call, not one per packet. Relayed runs go to the base the same way, each datagram behind
        its relay header."""
        count, index = len(datagrams), 0
        while index < count:
            endpoint, first = datagrams[index]
            size = len(first)
            end = index + 1
            relayed = endpoint[1] == RELAY_PORT
            if self.gso:
                segment = size + basewire.RELAY_HEADER_SIZE if relayed else size
                most = min(count, index + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))
                while end < most and datagrams[end][0] == endpoint and len(datagrams[end][1]) == size:
                    end += 1
                if end < most and datagrams[end][0] == endpoint and len(datagrams[end][1]) < size:
                    end += 1  # a shorter one may close the run
            if end - index == 1 or not self._send_run([d for _, d in datagrams[index:end]], size, endpoint):
                for _, datagram in datagrams[index:end]:
                    self.sendto(datagram, endpoint)
            index = end

    def _send_run(self, run: list[bytes | memoryview], size: int, endpoint: Endpoint) -> bool:
        """One GSO send of ``run`` (datagrams of ``size`` bytes, the last maybe shorter) to ``endpoint``, or
        through the base server for a relayed one; False if the caller must send them one by one."""
        if endpoint[1] != RELAY_PORT:
            return self._gso_send(run, size, self._target(endpoint))
        via = self._relay_via
        if via is None:
            return True  # like packet loss, as for a single relayed datagram
        header = self._relay_header(endpoint)
        parts: list[bytes | memoryview] = []
        for datagram in run:
            parts += (header, datagram)
        return self._gso_send(parts, size + basewire.RELAY_HEADER_SIZE, via)

    def _gso_send(
        self, buffers: list[bytes | memoryview], size: int, target: tuple[str, int, int, int]
    ) -> bool:
        """One GSO send of ``buffers`` (datagrams of ``size`` bytes, the last maybe shorter) to the socket
        address ``target``; False if the kernel refused it, and the caller sends them one by one. A segment
        too big for the route's MTU (which a single datagram would pass, fragmented) is refused for that size
        and larger only; a kernel or device without UDP segmentation turns GSO off for good."""
        if size > self._gso_max_segment:
            return False
        segment = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        try:
            self.sock.sendmsg(buffers, segment, 0, target)
        except OSError as exc:
            if exc.errno in _GSO_TOO_BIG:
                self._gso_max_segment = min(self._gso_max_segment, size - 1)
                log.info(
                    "UDP segments of %d bytes do not fit the route (%s); larger ones go singly", size, exc
                )
                return False
            if exc.errno not in _GSO_FAILURES:
                return True  # full buffers, unreachable networks: packet loss, as for sendto
            log.warning("UDP segmentation offload refused (%s); sending datagrams one by one", exc)
            self.gso = False
            return False
        return True

    def recv_batch(self, buffer: bytearray) -> tuple[int, int, Endpoint]:
        """Receive into ``buffer``: (bytes received, size of each datagram in them, sender). Without GRO, or
        for a datagram that was not coalesced, the size is the whole length."""
        size, ancillary, _flags, addr = self.sock.recvmsg_into([buffer], self._gro_ancillary)
        return size, gro_segment(ancillary, size), self._endpoint_of(addr)

    def _endpoint_of(self, addr: tuple[str, int, int, int]) -> Endpoint:
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
        return endpoint

    def forget_routes(self) -> None:
        """Interfaces changed: look interface names up again (a re-plugged adapter gets a new index)."""
        self._to_socket.clear()
        self._from_socket.clear()

    def close(self) -> None:
        self.sock.close()


def _set_buffers(sock: socket.socket) -> None:
    for forced, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, _SOCKET_BUFFER)
        except OSError:  # no CAP_NET_ADMIN (tests as a user): as much as net.core.*mem_max allows
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)


def try_udp_option(sock: socket.socket, option: int, value: int) -> bool:
    try:
        sock.setsockopt(socket.SOL_UDP, option, value)
    except OSError:
        return False
    return True


def gro_segment(ancillary: list[tuple[int, int, bytes]], size: int) -> int:
    """The size of each datagram in a receive of ``size`` bytes: the UDP_GRO segment size the kernel reports
    with a coalesced receive, else the whole."""
    for level, kind, data in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return int(struct.unpack_from("=i", data)[0]) or size
    return size


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
