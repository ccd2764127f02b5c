"""UdpTransport's batches on loopback: GSO sends, GRO receives, and the fallbacks when either is missing."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from husarnet_ros.daemon.transport import RECEIVE_BUFFER_SIZE, UdpTransport

LOOPBACK = ("::1", 0)


@pytest.fixture
def pair() -> Iterator[tuple[UdpTransport, UdpTransport]]:
    sender, receiver = UdpTransport(0, offload=True), UdpTransport(0, offload=True)
    receiver.sock.settimeout(5)
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def batch_of(count: int, size: int, last: int) -> tuple[memoryview, list[bytes]]:
    """``count`` random datagrams back to back, each ``size`` bytes but the last (``last`` bytes)."""
    datagrams = [os.urandom(size) for _ in range(count - 1)] + [os.urandom(last)]
    return memoryview(b"".join(datagrams)), datagrams


def receive_all(receiver: UdpTransport, expected: int) -> list[bytes]:
    """Datagrams as the data plane sees them: every receive split by the size the kernel reports."""
    buffer = bytearray(RECEIVE_BUFFER_SIZE)
    got: list[bytes] = []
    while len(got) < expected:
        size, segment, _ = receiver.recv_batch(buffer)
        got += [bytes(buffer[start : min(start + segment, size)]) for start in range(0, size, segment)]
    return got


def target(transport: UdpTransport) -> tuple[str, int]:
    return ("::1", transport.port)


@pytest.mark.parametrize(
    ("count", "size", "last"), [(1, 1375, 1375), (2, 1375, 700), (48, 1375, 1), (130, 500, 17)]
)
def test_a_batch_arrives_whole_and_in_order(
    pair: tuple[UdpTransport, UdpTransport], count: int, size: int, last: int
) -> None:
    sender, receiver = pair
    view, datagrams = batch_of(count, size, last)
    sender.sendto_batch(view, size, target(receiver))
    assert receive_all(receiver, count) == datagrams


def test_without_offload_nothing_is_batched() -> None:
    sender, receiver = UdpTransport(0), UdpTransport(0)
    receiver.sock.settimeout(5)
    try:
        assert not (sender.gso)
        assert not (sender.gro)
        assert not (receiver.gso)
        assert not (receiver.gro)
        view, datagrams = batch_of(10, 1000, 300)
        sender.sendto_batch(view, 1000, target(receiver))
        buffer = bytearray(RECEIVE_BUFFER_SIZE)
        for expected in datagrams:
            size, segment, _ = receiver.recv_batch(buffer)
            assert (size, segment) == (len(expected), len(expected))  # one datagram per receive
            assert bytes(buffer[:size]) == expected
    finally:
        sender.close()
        receiver.close()


class RefusingSocket:
    """A socket whose GSO sends fail as a kernel without UDP segmentation would make them fail."""

    def __init__(self, sock: socket.socket, errno_: int) -> None:
        self._sock = sock
        self._errno = errno_
        self.refused = 0

    def sendmsg(self, *_args: Any) -> int:
        self.refused += 1
        raise OSError(self._errno, os.strerror(self._errno))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.mark.parametrize("refusal", [errno.EIO, errno.EOPNOTSUPP])
def test_a_kernel_without_segmentation_turns_gso_off(
    pair: tuple[UdpTransport, UdpTransport], refusal: int
) -> None:
    sender, receiver = pair
    refusing = RefusingSocket(sender.sock, refusal)
    sender.sock = refusing  # type: ignore[assignment]
    view, datagrams = batch_of(20, 1200, 99)
    sender.sendto_batch(view, 1200, target(receiver))
    assert refusing.refused == 1
    assert not sender.gso  # off for good after the first refusal
    sender.sendto_batch(view, 1200, target(receiver))
    assert refusing.refused == 1
    assert receive_all(receiver, 40) == datagrams + datagrams


@pytest.mark.parametrize("refusal", [errno.EINVAL, errno.EMSGSIZE])
def test_a_segment_too_big_for_the_route_goes_singly_from_then_on(
    pair: tuple[UdpTransport, UdpTransport], refusal: int
) -> None:
    """A datagram bigger than the route's MTU is fragmented when sent alone, but refused as a GSO segment:
    datagrams of that size (and larger) go one by one; smaller ones still go together."""
    sender, receiver = pair
    refusing = RefusingSocket(sender.sock, refusal)
    sender.sock = refusing  # type: ignore[assignment]
    view, big = batch_of(5, 9000, 9000)
    sender.sendto_batch(view, 9000, target(receiver))
    sender.send_many([(target(receiver), datagram) for datagram in big])
    assert refusing.refused == 1  # the second batch of that size did not even try
    assert sender.gso
    sender.sock = refusing._sock  # the real socket again: smaller datagrams still go by GSO
    _, small = batch_of(10, 1000, 1000)
    sender.send_many([(target(receiver), datagram) for datagram in small])
    assert receive_all(receiver, 20) == big + big + small


def test_send_many_groups_runs_and_keeps_order(pair: tuple[UdpTransport, UdpTransport]) -> None:
    """Runs of one size for one endpoint (the last maybe shorter) go together; order is kept throughout."""
    sender, receiver = pair
    other = UdpTransport(0)
    other.sock.settimeout(5)
    try:
        sizes = [1250] * 7 + [300] + [1250] * 3 + [80, 80, 1400]
        items = [(target(receiver), os.urandom(size)) for size in sizes]
        items.insert(5, (target(other), b"elsewhere"))
        sender.send_many(items)
        assert receive_all(receiver, len(sizes)) == [data for to, data in items if to == target(receiver)]
        assert other.sock.recv(100) == b"elsewhere"
    finally:
        other.close()


def test_a_full_buffer_is_packet_loss_not_a_fallback(pair: tuple[UdpTransport, UdpTransport]) -> None:
    sender, receiver = pair
    refusing = RefusingSocket(sender.sock, errno.ENOBUFS)
    sender.sock = refusing  # type: ignore[assignment]
    view, _ = batch_of(5, 1000, 1000)
    sender.sendto_batch(view, 1000, target(receiver))  # does not raise
    assert sender.gso
