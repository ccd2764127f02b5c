"""Packets read from the TUN one at a time, sealed as a batch in one preallocated buffer, sans-IO.

A burst of small packets (DDS fragments, UDP datagrams, ACKs) does not come as one TSO packet: the send thread
reads it packet by packet. Each packet is read straight into the next free place of one arena, turned into its
inner frame in place (``Node.stage_packet``), and when the TUN has no more (or the arena is full) the whole
batch is sealed in place with one ``os.urandom`` call for every nonce, and handed out as datagrams that still
lie in the arena: no allocation or copy per packet, one random-number system call per batch instead of one per
packet. The caller sends them at once (runs of equal ones for one endpoint in one GSO send) before staging
anything new.
"""

from __future__ import annotations

import os

from . import aead, offload, wire
from .errors import ProtocolError
from .node import STAGE_HEADROOM, Node, Staged
from .peer import Endpoint

# Where a read goes in the free part of the arena: the virtio header ends exactly STAGE_HEADROOM bytes in.
_READ_OFFSET = STAGE_HEADROOM - offload.VNET_HEADER_SIZE


class SendBatch:
    """Up to ``max_packets`` packets staged for one seal; every read may be up to ``read_size`` bytes (virtio
    header included), so the arena always has room for one more read plus its tag."""

    def __init__(self, node: Node, read_size: int, max_packets: int, typical_packet: int = 2048) -> None:
        self._node = node
        self._read_size = read_size
        self._max_packets = max_packets
        self._arena = bytearray(_READ_OFFSET + read_size + wire.TAG_SIZE + max_packets * typical_packet)
        self._view = memoryview(self._arena)
        self._base = aead.pointer(self._arena)
        self._free = 0  # where the next packet's room starts
        self._staged: list[Staged] = []

    def __len__(self) -> int:
        return len(self._staged)

    def read_target(self) -> memoryview:
        """Where the next read from the TUN goes (virtio header, then the packet)."""
        start = self._free + _READ_OFFSET
        return self._view[start : start + self._read_size]

    def stage(self, length: int, flags: int, csum_start: int, csum_offset: int, now: float) -> bool:
        """The packet of ``length`` bytes (without the virtio header) just read into ``read_target()``: staged
        for the next ``seal``; False if it cannot go now (the node handed it to the control loop)."""
        at = self._free + STAGE_HEADROOM
        staged = self._node.stage_packet(self._arena, at, length, flags, csum_start, csum_offset, now)
        if staged is None:
            return False
        self._staged.append(staged)
        self._free = at + length + wire.TAG_SIZE
        return True

    def full(self) -> bool:
        """Whether the batch must be sealed before the next read: as many packets as allowed, or no room for
        one more read of the largest size."""
        if len(self._staged) >= self._max_packets:
            return True
        return self._free + _READ_OFFSET + self._read_size + wire.TAG_SIZE > len(self._arena)

    def discard(self) -> None:
        """Forget the staged packets (after a failure that left the batch in doubt)."""
        self._staged, self._free = [], 0

    def seal(self) -> list[tuple[Endpoint, memoryview]]:
        """Seal every staged packet and start a new batch: the datagrams, in the order read, as views into
        the arena (valid until the next ``stage``)."""
        staged, self._staged, self._free = self._staged, [], 0
        if not staged:
            return []
        nonce_size = wire.NONCE_SIZE
        nonces = memoryview(os.urandom(nonce_size * len(staged)))
        arena, base, view = self._arena, self._base, self._view
        datagrams: list[tuple[Endpoint, memoryview]] = []
        for number, (session, endpoint, start, size) in enumerate(staged):
            try:
                length = session.seal_in_place(
                    arena, base, start, size, nonces[number * nonce_size : (number + 1) * nonce_size]
                )
            except ProtocolError:  # the counter ran out: never in practice (rekeyed long before)
                self._node.tx_counters["drop_counter_exhausted"] += 1
                continue
            datagrams.append((endpoint, view[start : start + length]))
        return datagrams
