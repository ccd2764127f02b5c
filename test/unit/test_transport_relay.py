"""UdpTransport's relayed paths on loopback: a datagram for a relay endpoint (overlay address, port 0) goes to
the home base server behind its own relay header (a GSO send of a relayed run is cut at header + payload;
send_many sends relayed datagrams singly), and nowhere without a base."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fixed_identities import fixed_identity

from husarnet_ros.core import basewire
from husarnet_ros.core.peer import Endpoint, relay_endpoint
from husarnet_ros.daemon.transport import UDP_SEGMENT, UdpTransport

PEER_X = fixed_identity("node b").address
PEER_Y = fixed_identity("node c").address
MARKER = b"marker: sent straight to the receiver, after everything else"


@dataclass
class RecordingSocket:
    """Stands in for the transport's socket: passes every send on and remembers its ancillary data (a GSO
    send carries UDP_SEGMENT there)."""

    sock: socket.socket
    refuse_segments: int | None = None  # an errno: a kernel or route that will not segment
    sends: list[list[tuple[int, int, bytes]]] = field(default_factory=list)

    def sendto(self, data: Any, address: Any) -> int:
        self.sends.append([])
        return self.sock.sendto(data, address)

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        self.sends.append(list(ancdata))
        if self.refuse_segments is not None and ancdata:
            raise OSError(self.refuse_segments, os.strerror(self.refuse_segments))
        return self.sock.sendmsg(buffers, ancdata, flags, address)

    def segments(self) -> list[int]:
        """The segment size of every GSO send."""
        return [
            struct.unpack("=H", data)[0]
            for ancdata in self.sends
            for level, kind, data in ancdata
            if (level, kind) == (socket.SOL_UDP, UDP_SEGMENT)
        ]

    def segmented(self) -> int:
        return len(self.segments())

    def segment_sizes(self) -> set[int]:
        return set(self.segments())


@pytest.fixture(params=["127.0.0.1", "::1"])
def host(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def plain_receiver(host: str) -> Iterator[tuple[socket.socket, Endpoint]]:
    """A plain UDP socket (no GRO: one datagram per receive, as a base server reads them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        sock.settimeout(5)
        yield sock, (host, sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture
def base(host: str) -> Iterator[tuple[socket.socket, Endpoint]]:
    with plain_receiver(host) as receiver:
        yield receiver


@pytest.fixture
def direct(host: str) -> Iterator[tuple[socket.socket, Endpoint]]:
    with plain_receiver(host) as receiver:
        yield receiver


@pytest.fixture(params=[False, True], ids=["plain", "offload"])
def sender(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[UdpTransport]:
    transport = UdpTransport(0, offload=request.param)
    real = transport.sock
    try:
        assert transport.gso is request.param  # with offload asked for, GSO is on: the case under test
        monkeypatch.setattr(transport, "sock", RecordingSocket(real))
        yield transport
    finally:
        real.close()


def recording(transport: UdpTransport) -> RecordingSocket:
    sock = transport.sock
    assert isinstance(sock, RecordingSocket)
    return sock


def relayed(address: bytes, payload: bytes) -> bytes:
    return basewire.relay_header(basewire.MSG_BASE_RELAY, address) + payload


def receive_until_marker(sock: socket.socket, limit: int = 1000) -> list[bytes]:
    """Everything that arrived before the marker (the sender sends it last; loopback keeps the order)."""
    got: list[bytes] = []
    for _ in range(limit):
        data = sock.recv(65536)
        if data == MARKER:
            return got
        got.append(data)
    raise AssertionError("no marker")


def finish(transport: UdpTransport, *receivers: tuple[socket.socket, Endpoint]) -> None:
    for _, endpoint in receivers:
        transport.sendto(MARKER, endpoint)


# --------------------------------------------------------------------------- single datagrams
@pytest.mark.parametrize("as_view", [False, True], ids=["bytes", "memoryview"])
def test_a_relayed_datagram_reaches_the_base_behind_its_relay_header(
    sender: UdpTransport, base: tuple[socket.socket, Endpoint], as_view: bool
) -> None:
    sock, endpoint = base
    sender.set_relay(endpoint)
    first, second = os.urandom(1200), os.urandom(33)
    sender.sendto(memoryview(first) if as_view else first, relay_endpoint(PEER_X))
    sender.sendto(memoryview(second) if as_view else second, relay_endpoint(PEER_Y))
    finish(sender, base)
    got = receive_until_marker(sock)
    assert got == [relayed(PEER_X, first), relayed(PEER_Y, second)]  # byte exact, each with its own address
    assert got[0][0] == basewire.MSG_BASE_RELAY
    assert got[0][basewire.HEADER_SIZE : basewire.RELAY_HEADER_SIZE] == PEER_X
    address, frame = basewire.decode_relay(got[1])
    assert (address, bytes(frame)) == (PEER_Y, second)
    assert ipaddress.IPv6Address(address) == ipaddress.IPv6Address(relay_endpoint(PEER_Y)[0])


def test_the_base_sees_relayed_datagrams_come_from_the_transports_port(
    sender: UdpTransport, base: tuple[socket.socket, Endpoint]
) -> None:
    """The base knows a client by the endpoint it registered from: relayed frames must leave through the same
    socket, not a new one."""
    sock, endpoint = base
    sender.set_relay(endpoint)
    sender.sendto(b"frame", relay_endpoint(PEER_X))
    data, source = sock.recvfrom(65536)
    assert data == relayed(PEER_X, b"frame")
    assert source[1] == sender.port


def test_without_a_base_relayed_datagrams_are_dropped(
    sender: UdpTransport, base: tuple[socket.socket, Endpoint]
) -> None:
    sock, endpoint = base
    sender.sendto(b"never set", relay_endpoint(PEER_X))
    sender.sendto_batch(memoryview(bytes(300)), 100, relay_endpoint(PEER_X))
    sender.send_many([(relay_endpoint(PEER_X), b"many")])
    sender.set_relay(endpoint)
    sender.set_relay(None)  # the home base went away
    sender.sendto(b"withdrawn", relay_endpoint(PEER_X))
    sender.send_many([(relay_endpoint(PEER_Y), b"x" * 100)] * 3)
    assert recording(sender).sends == []  # nothing reached the socket at all
    finish(sender, base)
    assert receive_until_marker(sock) == []


def test_set_relay_moves_relayed_traffic_to_the_new_base(
    sender: UdpTransport, host: str, base: tuple[socket.socket, Endpoint]
) -> None:
    with plain_receiver(host) as other:
        sender.set_relay(base[1])
        sender.sendto(b"to the first", relay_endpoint(PEER_X))
        sender.set_relay(other[1])
        sender.sendto(b"to the second", relay_endpoint(PEER_X))
        finish(sender, base, other)
        assert receive_until_marker(base[0]) == [relayed(PEER_X, b"to the first")]
        assert receive_until_marker(other[0]) == [relayed(PEER_X, b"to the second")]


# --------------------------------------------------------------------------- batches
@pytest.mark.parametrize(("count", "size", "last"), [(2, 1375, 700), (20, 1000, 1000), (70, 500, 17)])
def test_a_batch_for_a_relay_endpoint_arrives_as_one_datagram_per_payload_each_with_its_header(
    sender: UdpTransport, base: tuple[socket.socket, Endpoint], count: int, size: int, last: int
) -> None:
    """With GSO the run may go in few sends, but cut so that every datagram is header + one payload."""
    sock, endpoint = base
    sender.set_relay(endpoint)
    payloads = [os.urandom(size) for _ in range(count - 1)] + [os.urandom(last)]
    sender.sendto_batch(memoryview(b"".join(payloads)), size, relay_endpoint(PEER_X))
    sends = recording(sender)
    if not sender.gso:
        assert len(sends.sends) == count
    assert sends.segment_sizes() <= {size + basewire.RELAY_HEADER_SIZE}
    finish(sender, base)
    assert receive_until_marker(sock) == [relayed(PEER_X, p) for p in payloads]


@pytest.mark.parametrize("refusal", [errno.EIO, errno.EINVAL])
def test_a_relayed_batch_the_kernel_will_not_segment_goes_singly(
    host: str, base: tuple[socket.socket, Endpoint], refusal: int
) -> None:
    transport = UdpTransport(0, offload=True)
    real = transport.sock
    try:
        assert transport.gso
        sock = RecordingSocket(real, refuse_segments=refusal)
        transport.sock = sock  # type: ignore[assignment]
        transport.set_relay(base[1])
        payloads = [os.urandom(900) for _ in range(9)] + [os.urandom(50)]
        transport.sendto_batch(memoryview(b"".join(payloads)), 900, relay_endpoint(PEER_Y))
        assert sock.segmented() == 1  # tried once, refused ...
        assert len(sock.sends) == 1 + len(payloads)  # ... then every datagram on its own
        finish(transport, base)
        assert receive_until_marker(base[0]) == [relayed(PEER_Y, p) for p in payloads]
    finally:
        real.close()


def test_send_many_batches_relayed_runs_behind_their_headers(
    sender: UdpTransport,
    base: tuple[socket.socket, Endpoint],
    direct: tuple[socket.socket, Endpoint],
) -> None:
    """A run of equal datagrams for one relay endpoint goes to the base in one GSO send, each datagram behind
    its relay header (a segment is header + datagram; a shorter last one closes the run), next to a direct
    run in the same call; without GSO every datagram goes on its own. The base gets each intact, in order."""
    sender.set_relay(base[1])
    to_x = [os.urandom(800) for _ in range(6)] + [os.urandom(100)]
    to_direct = [os.urandom(800) for _ in range(5)]
    to_y = [os.urandom(800) for _ in range(3)]
    datagrams = (
        [(relay_endpoint(PEER_X), d) for d in to_x]
        + [(direct[1], d) for d in to_direct]
        + [(relay_endpoint(PEER_Y), d) for d in to_y]
    )
    sender.send_many(datagrams)
    sends = recording(sender)
    relayed_segment = 800 + basewire.RELAY_HEADER_SIZE
    if sender.gso:
        assert sends.segments() == [relayed_segment, 800, relayed_segment]
        assert len(sends.sends) == 3
    else:
        assert sends.segmented() == 0
        assert len(sends.sends) == len(to_x) + len(to_y) + len(to_direct)
    finish(sender, base, direct)
    assert receive_until_marker(base[0]) == [relayed(PEER_X, d) for d in to_x] + [
        relayed(PEER_Y, d) for d in to_y
    ]
    assert receive_until_marker(direct[0]) == to_direct
