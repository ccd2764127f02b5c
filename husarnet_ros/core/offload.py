"""Segmentation offloads, sans-IO: what the data plane does with the kernel's large TCP packets.

With offloads on, the TUN device hands the daemon TCP packets of up to 64 KB (TSO: one read instead of
~48) with a ``virtio_net_hdr`` in front, and takes such packets back (one write instead of ~48). The wire
never sees them: every wire datagram still carries one IPv6 packet of at most the MTU (or, on a path shown to
carry more, a TCP segment of several MSS: docs/PROTOCOL.md 5.4), with valid checksums, sealed on its own
(its own nonce and counter), so a peer without offloads interoperates and a lost datagram costs one segment.
This module is the pure part of that:

* ``VnetHeader``: the 10-byte header in front of every TUN read and write (``linux/virtio_net.h``);
* ``finish_checksum``: fill in an L4 checksum the kernel left partial (``NEEDS_CSUM``);
* ``tcp_segments``: cut a large TCP packet into MTU-sized packets, as the NIC would (sequence numbers, flags,
  lengths, full checksums);
* ``Coalescer``: join received packets that continue one TCP stream back into one large packet for one
  TUN write (as the kernel's GRO does): only byte-contiguous segments of one flow with identical headers, so a
  gap (a lost or reordered datagram) simply ends a run and everything that arrived is still delivered.

Checksums use the ones'-complement identity ``sum of 16-bit words == value mod 0xFFFF`` (0x10000 is 1 modulo
0xFFFF), so one ``int.from_bytes`` and one modulo in C replace a Python loop over words.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .errors import ProtocolError

Buffer = bytes | bytearray | memoryview

VNET_HEADER_SIZE = 10
# Host byte order: TUN's legacy virtio headers, unless told otherwise (TUNSETVNETLE/BE).
VNET_STRUCT = struct.Struct("=BBHHHH")

# linux/virtio_net.h
VNET_F_NEEDS_CSUM = 0x01
VNET_F_DATA_VALID = 0x02
GSO_NONE = 0x00
GSO_TCPV4 = 0x01
GSO_UDP = 0x03
GSO_TCPV6 = 0x04
GSO_UDP_L4 = 0x05
GSO_ECN = 0x80

IPV6_HEADER = 40
TCP_MIN_HEADER = 20
_NEXT_HEADER_TCP = 6
_NEXT_HEADER_UDP = 17
_TCP_CHECKSUM_OFFSET = 16
_UDP_CHECKSUM_OFFSET = 6
MAX_IPV6_PAYLOAD = 0xFFFF  # the payload length field; no jumbograms on the overlay

# TCP flag bits (byte 13 of the header)
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80


@dataclass(frozen=True, slots=True)
class VnetHeader:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_STRUCT.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )

    @classmethod
    def unpack(cls, data: Buffer) -> VnetHeader:
        if len(data) < VNET_HEADER_SIZE:
            raise ProtocolError(f"virtio header: {len(data)} bytes, need {VNET_HEADER_SIZE}")
        return cls(*VNET_STRUCT.unpack_from(data))


PLAIN_VNET_HEADER = VnetHeader().pack()  # a packet with complete checksums, no segmentation


def ones_sum(data: Buffer) -> int:
    """The ones'-complement sum of ``data`` as 16-bit big-endian words (odd length: zero-padded), reduced
    modulo 0xFFFF (0 stands for both 0x0000 and 0xFFFF)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def checksum_field(total: int) -> int:
    """The checksum to store for data whose ones' sum (any size, checksum field zero) is ``total``. Never 0,
    which UDP over IPv6 forbids; 0xFFFF and 0x0000 verify alike."""
    return 0xFFFF - total % 0xFFFF


def pseudo_header_sum(src: Buffer, dst: Buffer, length: int, next_header: int) -> int:
    """Sum of the IPv6 pseudo-header (RFC 8200 section 8.1)."""
    return ones_sum(src) + ones_sum(dst) + length + next_header


def finish_checksum(packet: bytearray | memoryview, csum_start: int, csum_offset: int) -> None:
    """Complete a partial checksum in place: the kernel stored the pseudo-header sum at
    ``csum_start + csum_offset`` and left the sum over ``packet[csum_start:]`` to whoever sends it."""
    at = csum_start + csum_offset
    if csum_start < IPV6_HEADER or csum_offset < 0 or at + 2 > len(packet):
        raise ProtocolError(f"partial checksum at {csum_start}+{csum_offset} outside {len(packet)} bytes")
    value = checksum_field(ones_sum(packet[csum_start:]))
    packet[at] = value >> 8
    packet[at + 1] = value & 0xFF


class PartialChecksum(bytes):
    """An IPv6 packet whose TCP or UDP checksum field holds only the pseudo-header sum (``NEEDS_CSUM``), as a
    peer sends it when both ends agreed to skip checksums that the AEAD makes redundant. Whoever writes it to
    the TUN either says so in the virtio header or finishes the checksum (``finish_checksum``) first."""

    __slots__ = ()


def can_be_partial(next_header: int, l4_length: int) -> bool:
    """Whether an upper layer of this protocol and length can carry a partial checksum (TCP or UDP, whole
    header present)."""
    if next_header == _NEXT_HEADER_TCP:
        return l4_length >= TCP_MIN_HEADER
    return next_header == _NEXT_HEADER_UDP and l4_length >= 8


def partial_checksum_offset(packet: Buffer) -> int:
    """Where a partial checksum sits in ``packet`` (plain IPv6 + TCP or UDP, no extension headers), or 0 if
    the packet cannot carry one."""
    next_header = packet[6]
    if next_header == _NEXT_HEADER_TCP and len(packet) >= IPV6_HEADER + TCP_MIN_HEADER:
        return IPV6_HEADER + _TCP_CHECKSUM_OFFSET
    if next_header == _NEXT_HEADER_UDP and len(packet) >= IPV6_HEADER + 8:
        return IPV6_HEADER + _UDP_CHECKSUM_OFFSET
    return 0


def tcp_segments(packet: Buffer, l4_start: int, mss: int, *, partial: bool = False) -> list[bytearray]:
    """Cut a TSO packet (IPv6, any extension headers up to ``l4_start``, then TCP) into packets carrying at
    most ``mss`` payload bytes each: see ``tcp_segment_parts``."""
    return [headers + chunk for headers, chunk in tcp_segment_parts(packet, l4_start, mss, partial=partial)]


def tcp_segment_count(packet: Buffer, l4_start: int, mss: int, *, partial: bool = False) -> int:
    """How many segments ``tcp_segment_parts`` makes of ``packet``; ProtocolError if it cannot cut it."""
    header_end = _tso_header_end(packet, l4_start, mss, partial)
    return max(1, -(-(len(packet) - header_end) // mss))


def _tso_header_end(packet: Buffer, l4_start: int, mss: int, partial: bool) -> int:
    size = len(packet)
    if size < IPV6_HEADER or packet[0] >> 4 != 6:
        raise ProtocolError("TSO packet is not IPv6")
    if mss <= 0:
        raise ProtocolError("TSO packet without a segment size")
    if l4_start < IPV6_HEADER or l4_start + TCP_MIN_HEADER > size:
        raise ProtocolError(f"TSO packet: TCP header at {l4_start} does not fit in {size} bytes")
    if partial and l4_start != IPV6_HEADER:
        raise ValueError("partial checksums only for packets without extension headers")
    tcp_header = (packet[l4_start + 12] >> 4) * 4
    if tcp_header < TCP_MIN_HEADER or l4_start + tcp_header > size:
        raise ProtocolError("TSO packet: bad TCP data offset")
    longest = l4_start + tcp_header + min(mss, size - l4_start - tcp_header) - IPV6_HEADER
    if longest > MAX_IPV6_PAYLOAD:
        raise ProtocolError(f"TSO packet: a {longest}-byte segment does not fit an IPv6 payload")
    return l4_start + tcp_header


def write_partial_segments(
    out: bytearray, first: int, stride: int, kind: int, packet: Buffer, mss: int
) -> tuple[int, int, int]:
    """The fast way to cut a TSO packet (plain IPv6 + TCP, no extension headers) into segments with partial
    checksums: each goes into ``out`` as a compressed inner frame (``kind`` byte, IPv6 header bytes 0-7,
    TCP header, payload: the addresses are implied by the session), one every ``stride`` bytes from
    ``first``. Every segment but the last has the same header apart from its sequence number, so one header
    is built and copied; only the first and last are then patched. Same result as ``tcp_segment_parts`` with
    ``partial``. Returns (segments, length of a full frame, length of the last frame)."""
    header_end = _tso_header_end(packet, IPV6_HEADER, mss, True)
    tcp_header = header_end - IPV6_HEADER
    view = memoryview(packet)
    size = len(packet)
    count = max(1, -(-(size - header_end) // mss))
    addresses = ones_sum(view[8:40]) + _NEXT_HEADER_TCP
    seq = int.from_bytes(view[44:48], "big")
    flags = packet[53]
    # Offsets inside a frame: 0 kind, 1-8 IPv6 bytes 0-7 (payload length at 5-6), 9.. TCP header.
    flags_at, checksum_at = 9 + 13, 9 + 16
    head = bytearray(9 + tcp_header)
    head[0] = kind
    head[1:9] = view[0:8]
    head[9:] = view[IPV6_HEADER:header_end]
    full_l4 = tcp_header + mss
    head[5:7] = full_l4.to_bytes(2, "big")
    head[flags_at] = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    head[checksum_at : checksum_at + 2] = ((addresses + full_l4) % 0xFFFF or 0xFFFF).to_bytes(2, "big")
    head_size = len(head)
    pack_seq = _SEQ.pack_into
    at, source = first, header_end
    for number in range(count):
        out[at : at + head_size] = head
        pack_seq(out, at + 13, (seq + number * mss) & 0xFFFFFFFF)
        chunk = view[source : source + mss]
        body = at + head_size
        out[body : body + len(chunk)] = chunk
        at += stride
        source += mss
    out[first + flags_at] = flags if count == 1 else flags & ~(TCP_FIN | TCP_PSH)
    last = first + (count - 1) * stride
    last_l4 = size - IPV6_HEADER - (count - 1) * mss
    if count > 1:
        out[last + flags_at] = flags & ~TCP_CWR
    out[last + 5 : last + 7] = last_l4.to_bytes(2, "big")
    out[last + checksum_at : last + checksum_at + 2] = ((addresses + last_l4) % 0xFFFF or 0xFFFF).to_bytes(
        2, "big"
    )
    return count, head_size + mss, 9 + last_l4


_SEQ = struct.Struct("!I")


def tcp_segment_parts(
    packet: Buffer, l4_start: int, mss: int, *, partial: bool = False
) -> Iterator[tuple[bytearray, memoryview]]:
    """The segments of a TSO packet as (headers, payload) pairs, payload at most ``mss`` bytes, with the
    header fields a NIC would set: the IPv6 payload length, the sequence number, FIN and PSH only on the last
    segment, CWR only on the first, and a full checksum; or, with ``partial``, only the pseudo-header sum
    (what ``PartialChecksum`` means; needs ``l4_start`` 40). ProtocolError if it is not such a packet."""
    size = len(packet)
    header_end = _tso_header_end(packet, l4_start, mss, partial)
    tcp_header = header_end - l4_start
    view = memoryview(packet)
    headers = bytearray(view[:header_end])
    # Routing headers would change the pseudo-header's destination; locally sent TCP never carries one, and
    # the kernel's own TSO (tcp6_gso_segment) checks only the first next-header too.
    addresses = ones_sum(view[8:40]) + _NEXT_HEADER_TCP
    seq = int.from_bytes(view[l4_start + 4 : l4_start + 8], "big")
    flags = headers[l4_start + 13]
    checksum_at = l4_start + 16
    headers[checksum_at] = headers[checksum_at + 1] = 0  # filled in per segment
    extension = l4_start - IPV6_HEADER
    offset = header_end
    while True:
        chunk = view[offset : offset + mss]
        last = offset + mss >= size
        seg = bytearray(headers)
        seg_flags = flags
        if not last:
            seg_flags &= ~(TCP_FIN | TCP_PSH)
        if offset != header_end:
            seg_flags &= ~TCP_CWR
        seg[l4_start + 13] = seg_flags
        seg[l4_start + 4 : l4_start + 8] = ((seq + offset - header_end) & 0xFFFFFFFF).to_bytes(4, "big")
        l4_length = tcp_header + len(chunk)
        seg[4:6] = (extension + l4_length).to_bytes(2, "big")
        if partial:
            field = (addresses + l4_length) % 0xFFFF or 0xFFFF
        else:
            field = checksum_field(addresses + l4_length + ones_sum(seg[l4_start:]) + ones_sum(chunk))
        seg[checksum_at] = field >> 8
        seg[checksum_at + 1] = field & 0xFF
        yield seg, chunk
        offset += mss
        if last:
            return


# The most datagrams the kernel makes of one UDP GSO packet (UDP_MAX_SEGMENTS): a run joins no more.
MAX_UDP_SEGMENTS = 64
UDP_HEADER = 8


def udp_segments(packet: Buffer, csum_start: int, gso_size: int) -> list[bytearray]:
    """The datagrams of a UDP GSO packet (plain IPv6 + UDP, payload cut every ``gso_size`` bytes), each a
    whole IPv6 packet with its lengths and a full checksum, as the kernel's own segmentation would make them.
    ProtocolError if it is not such a packet."""
    size = len(packet)
    if (
        size < IPV6_HEADER + UDP_HEADER
        or packet[0] >> 4 != 6
        or packet[6] != _NEXT_HEADER_UDP
        or csum_start != IPV6_HEADER
        or gso_size <= 0
    ):
        raise ProtocolError("UDP GSO packet: not IPv6 + UDP without extension headers, or no segment size")
    view = memoryview(packet)
    addresses = ones_sum(view[8:40]) + _NEXT_HEADER_UDP
    ports = view[IPV6_HEADER : IPV6_HEADER + 4]
    segments = []
    for offset in range(IPV6_HEADER + UDP_HEADER, max(size, IPV6_HEADER + UDP_HEADER + 1), gso_size):
        chunk = view[offset : offset + gso_size]
        length = UDP_HEADER + len(chunk)
        segment = bytearray(IPV6_HEADER + length)
        segment[:IPV6_HEADER] = view[:IPV6_HEADER]
        segment[4:6] = length.to_bytes(2, "big")
        segment[IPV6_HEADER : IPV6_HEADER + 4] = ports
        segment[IPV6_HEADER + 4 : IPV6_HEADER + 6] = length.to_bytes(2, "big")
        segment[IPV6_HEADER + UDP_HEADER :] = chunk
        field = checksum_field(addresses + length + ones_sum(segment[IPV6_HEADER:]))
        segment[IPV6_HEADER + 6 : IPV6_HEADER + 8] = field.to_bytes(2, "big")
        segments.append(segment)
    return segments


def _partial_header(checksum_offset: int) -> bytes:
    return VnetHeader(flags=VNET_F_NEEDS_CSUM, csum_start=IPV6_HEADER, csum_offset=checksum_offset).pack()


_TCP_PARTIAL_VNET_HEADER = _partial_header(_TCP_CHECKSUM_OFFSET)
_UDP_PARTIAL_VNET_HEADER = _partial_header(_UDP_CHECKSUM_OFFSET)


def complete(packet: bytes) -> bytes:
    """``packet`` with a full checksum (a ``PartialChecksum`` completed), for a TUN without virtio headers."""
    if not isinstance(packet, PartialChecksum):
        return packet
    whole = bytearray(packet)
    at = partial_checksum_offset(whole)
    if at == 0:  # the receive path lets only TCP and UDP through as partial
        raise ProtocolError("a partial checksum in a packet that is neither TCP nor UDP")
    finish_checksum(whole, IPV6_HEADER, at - IPV6_HEADER)
    return bytes(whole)


class PacketSink(Protocol):
    """Where the receive path puts the packets it opened, in order: whole, or as the pieces of a compressed
    frame (first 8 header bytes, source, destination, upper layer), which saves joining them."""

    def add(self, packet: bytes) -> None: ...

    def add_parts(self, ip8: Buffer, src: bytes, dst: bytes, l4: Buffer, partial: bool) -> None: ...

    def flush(self) -> None: ...


Write = Callable[[bytes, list[Buffer]], None]


def _vnet_for(partial: bool, next_header: int) -> bytes:
    if not partial:
        return PLAIN_VNET_HEADER
    return _TCP_PARTIAL_VNET_HEADER if next_header == _NEXT_HEADER_TCP else _UDP_PARTIAL_VNET_HEADER


class PlainPackets:
    """A ``PacketSink`` for a TUN without virtio headers: every packet whole, checksums completed."""

    def __init__(self, write: Write) -> None:
        self._write = write

    def add(self, packet: bytes) -> None:
        self._write(b"", [complete(packet)])

    def add_parts(self, ip8: Buffer, src: bytes, dst: bytes, l4: Buffer, partial: bool) -> None:
        if partial:
            self.add(PartialChecksum(b"".join((ip8, src, dst, l4))))
        else:
            self._write(b"", [ip8, src, dst, l4])

    def flush(self) -> None:
        pass


# The fields of the first 8 bytes of an IPv6 header and of a TCP header that decide whether segments join.
_IP8 = struct.Struct("!IHBB")  # version/class/flow label, payload length, next header, hop limit
_TCP = struct.Struct("!IIIBBH")  # ports, sequence, acknowledgement, data offset, flags, window


_UDP = struct.Struct("!IH")  # ports, length


@dataclass(slots=True)
class _Run:
    """Segments of one TCP stream, or datagrams of one UDP flow, being joined: the first packet's pieces,
    what the next must match, and every payload."""

    first: tuple[Buffer, bytes, bytes, Buffer]  # ip8, src, dst, l4 of the first packet
    l4_header: int  # TCP header with options, or the 8-byte UDP header
    parts: list[Buffer]
    mss: int  # the first packet's payload: every one but the last has this size
    next_seq: int  # TCP: the sequence number that continues the run
    length: int  # headers + payloads
    closed: bool  # a short segment (or TCP's PSH) ended it: nothing may follow
    partial: bool  # the first packet's checksum is partial (matters only if it stays alone)
    psh: int
    # What must match for a segment to join (besides its sequence number): version, class and flow label,
    # hop limit, addresses, ports, and for TCP the acknowledgement, data offset, window, options. Not
    # compared: the payload length, sequence number, flags (only ACK, maybe PSH, ever join), checksum and
    # urgent pointer.
    same: tuple[object, ...]
    options: bytes
    udp: bool


class Coalescer:
    """A ``PacketSink`` for a TUN with virtio headers: joins consecutive packets of one TCP stream into one
    large packet (as the kernel's GRO does), so the TUN takes in one write what would take ~45; with
    ``udp``, consecutive datagrams of one UDP flow with one payload size (the last may be shorter) likewise,
    into one ``GSO_UDP_L4`` packet that the kernel cuts back into the very same datagrams.

    ``write(vnet_header, parts)`` is called for every packet to hand to the TUN, in order; call ``flush``
    after the last packet of a batch. Only one run is open at a time: a packet that does not continue it
    (another flow, a gap from a lost or reordered datagram, other flags or sizes) ends it, and every packet
    that arrived still goes up. Joined packets go up with ``NEEDS_CSUM`` (the AEAD authenticated every
    segment; the kernel treats the checksum as verified).
    """

    def __init__(
        self, write: Write, max_length: int = IPV6_HEADER + MAX_IPV6_PAYLOAD, *, udp: bool = False
    ) -> None:
        self._write = write
        self._max_length = max_length
        self._udp = udp
        self._run: _Run | None = None
        self.joined = 0  # segments that went up inside a larger packet (statistics)

    def add(self, packet: bytes) -> None:
        view = memoryview(packet)
        self.add_parts(
            view[:8], bytes(view[8:24]), bytes(view[24:40]), view[40:], isinstance(packet, PartialChecksum)
        )

    def add_parts(self, ip8: Buffer, src: bytes, dst: bytes, l4: Buffer, partial: bool) -> None:
        flow, length, next_header, hop = _IP8.unpack_from(ip8)
        size = len(l4)
        if next_header == _NEXT_HEADER_UDP and self._udp:
            self._add_udp(ip8, src, dst, l4, partial, (flow, hop, length, size))
            return
        if next_header != _NEXT_HEADER_TCP or size < TCP_MIN_HEADER:
            self._alone(ip8, src, dst, l4, partial)
            return
        ports, seq, ack, offset, flags, window = _TCP.unpack_from(l4)
        tcp_header = (offset >> 4) * 4
        # Only plain data segments join: ACK and maybe PSH, a payload, a payload length that matches.
        if flags & ~TCP_PSH != TCP_ACK or size <= tcp_header or tcp_header < TCP_MIN_HEADER or length != size:
            self._alone(ip8, src, dst, l4, partial)
            return
        payload = size - tcp_header
        same = (flow, hop, src, dst, ports, ack, offset, window)
        options = l4[TCP_MIN_HEADER:tcp_header]
        run = self._run
        if run is not None:
            if (
                not run.udp
                and seq == run.next_seq
                and not run.closed
                and payload <= run.mss
                and run.length + payload <= self._max_length
                and same == run.same
                and options == run.options
            ):
                run.parts.append(l4[tcp_header:])
                run.length += payload
                run.next_seq = (seq + payload) & 0xFFFFFFFF
                if payload < run.mss or flags & TCP_PSH:
                    run.closed = True
                    run.psh |= flags & TCP_PSH
                return
            self.flush()
        self._run = _Run(
            first=(ip8, src, dst, l4),
            l4_header=tcp_header,
            parts=[l4[tcp_header:]],
            mss=payload,
            next_seq=(seq + payload) & 0xFFFFFFFF,
            length=IPV6_HEADER + size,
            closed=bool(flags & TCP_PSH),
            partial=partial,
            psh=0,
            same=same,
            options=bytes(options),
            udp=False,
        )

    def _add_udp(
        self,
        ip8: Buffer,
        src: bytes,
        dst: bytes,
        l4: Buffer,
        partial: bool,
        fields: tuple[int, int, int, int],
    ) -> None:
        flow, hop, length, size = fields
        if size <= UDP_HEADER or length != size:
            self._alone(ip8, src, dst, l4, partial)
            return
        ports, udp_length = _UDP.unpack_from(l4)
        payload = size - UDP_HEADER
        if udp_length != size:
            self._alone(ip8, src, dst, l4, partial)
            return
        same = (flow, hop, src, dst, ports)
        run = self._run
        if run is not None:
            if (
                run.udp
                and not run.closed
                and payload <= run.mss
                and len(run.parts) < MAX_UDP_SEGMENTS
                and run.length + payload <= self._max_length
                and same == run.same
            ):
                run.parts.append(l4[UDP_HEADER:])
                run.length += payload
                run.closed = payload < run.mss
                return
            self.flush()
        self._run = _Run(
            first=(ip8, src, dst, l4),
            l4_header=UDP_HEADER,
            parts=[l4[UDP_HEADER:]],
            mss=payload,
            next_seq=0,
            length=IPV6_HEADER + size,
            closed=False,
            partial=partial,
            psh=0,
            same=same,
            options=b"",
            udp=True,
        )

    def _alone(self, ip8: Buffer, src: bytes, dst: bytes, l4: Buffer, partial: bool) -> None:
        self.flush()
        self._write(_vnet_for(partial, ip8[6]), [ip8, src, dst, l4])

    def flush(self) -> None:
        run = self._run
        if run is None:
            return
        self._run = None
        ip8, src, dst, l4 = run.first
        next_header = _NEXT_HEADER_UDP if run.udp else _NEXT_HEADER_TCP
        if len(run.parts) == 1:
            self._write(_vnet_for(run.partial, next_header), [ip8, src, dst, l4])
            return
        l4_header = run.l4_header
        l4_length = run.length - IPV6_HEADER
        head = bytearray(ip8)
        head[4:6] = l4_length.to_bytes(2, "big")
        header = bytearray(l4[:l4_header])
        # NEEDS_CSUM wants the pseudo-header sum in the checksum field (folded, not complemented).
        seed = pseudo_header_sum(src, dst, l4_length, next_header) % 0xFFFF or 0xFFFF
        if run.udp:
            # The kernel cuts the payload every gso_size bytes and gives each datagram its own length,
            # adjusting this checksum seed by the difference (__udp_gso_segment).
            header[4:6] = l4_length.to_bytes(2, "big")
            header[6:8] = seed.to_bytes(2, "big")
        else:
            header[13] |= run.psh
            header[16:18] = seed.to_bytes(2, "big")
        vnet = VnetHeader(
            flags=VNET_F_NEEDS_CSUM,
            gso_type=GSO_UDP_L4 if run.udp else GSO_TCPV6,
            hdr_len=IPV6_HEADER + l4_header,
            gso_size=run.mss,
            csum_start=IPV6_HEADER,
            csum_offset=_UDP_CHECKSUM_OFFSET if run.udp else _TCP_CHECKSUM_OFFSET,
        ).pack()
        self.joined += len(run.parts)
        self._write(vnet, [head, src, dst, header, *run.parts])
