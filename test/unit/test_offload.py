"""The sans-IO offload core (core/offload.py) against references written out the long way.

Checksums are compared with RFC 1071 as a loop over 16-bit words with an end-around carry; TSO packets are
built here field by field, cut by ``tcp_segments`` and checked segment by segment as a NIC would cut them;
``Coalescer`` gets those segments in order, with losses, duplicates and reorderings, and every write it
makes is taken apart again and compared with what was fed.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from husarnet_ros.core import offload
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.offload import (
    GSO_NONE,
    GSO_TCPV6,
    GSO_UDP_L4,
    IPV6_HEADER,
    PLAIN_VNET_HEADER,
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    VNET_F_NEEDS_CSUM,
    VNET_HEADER_SIZE,
    Coalescer,
    PartialChecksum,
    PlainPackets,
    VnetHeader,
)

TCP = 6
UDP = 17
ICMPV6 = 58
DEST_OPTIONS = 60
MAX_PACKET = IPV6_HEADER + 0xFFFF  # an IPv6 header and the largest payload its length field can state
SRC = bytes.fromhex("fc94aaaa000000000000000000000001")
DST = bytes.fromhex("fc94bbbb000000000000000000000002")


# --------------------------------------------------------------------------- references
def word_loop_sum(data: bytes | bytearray) -> int:
    """RFC 1071 word by word: 16-bit big-endian words (an odd last byte padded with zero), the carry added
    back after every addition."""
    padded = bytes(data) + b"\x00" if len(data) % 2 else bytes(data)
    total = 0
    for i in range(0, len(padded), 2):
        total += padded[i] << 8 | padded[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_sum(data: bytes | bytearray) -> int:
    """RFC 1071 with deferred carries (the same value as ``word_loop_sum``, checked below; quicker for the
    many segments the other tests verify): add all words, then fold the carries back in."""
    padded = bytes(data) + b"\x00" if len(data) % 2 else bytes(data)
    words: tuple[int, ...] = struct.unpack(f"!{len(padded) // 2}H", padded)
    total = sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header(src: bytes, dst: bytes, length: int, next_header: int) -> bytes:
    """RFC 8200 section 8.1: source, destination, 32-bit upper-layer length, 3 zero bytes, next header."""
    return src + dst + length.to_bytes(4, "big") + bytes(3) + bytes([next_header])


def l4_verifies(packet: bytes | bytearray, l4_start: int, next_header: int) -> bool:
    """Whether the upper-layer checksum of ``packet`` is right: the ones' sum over pseudo-header and upper
    layer (checksum field included) is all ones."""
    l4 = bytes(packet[l4_start:])
    pseudo = pseudo_header(bytes(packet[8:24]), bytes(packet[24:40]), len(l4), next_header)
    return reference_sum(pseudo + l4) == 0xFFFF


def l4_seed(packet: bytes | bytearray, l4_start: int, next_header: int) -> int:
    """What a partial (NEEDS_CSUM) checksum field holds: the folded, uncomplemented pseudo-header sum."""
    length = len(packet) - l4_start
    return reference_sum(pseudo_header(bytes(packet[8:24]), bytes(packet[24:40]), length, next_header))


# --------------------------------------------------------------------------- packet builders
@dataclass(frozen=True)
class Tcp:
    """The fields of a TCP over IPv6 packet, built by ``packet``."""

    payload: bytes
    seq: int = 1_000_000
    ack: int = 7_777
    flags: int = TCP_ACK
    options: bytes = b""
    sport: int = 40000
    dport: int = 8080
    window: int = 512
    urgent: int = 0
    extension: bytes = b""  # one extension header (its next header is TCP), between IPv6 and TCP
    src: bytes = SRC
    dst: bytes = DST
    traffic_class: int = 0
    flow_label: int = 0x12345
    hop_limit: int = 64

    @property
    def l4_start(self) -> int:
        return IPV6_HEADER + len(self.extension)

    @property
    def tcp_header(self) -> int:
        return 20 + len(self.options)

    def packet(self, checksum: int = 0xBEEF) -> bytearray:
        assert len(self.options) % 4 == 0
        assert len(self.options) <= 40
        tcp = (
            self.sport.to_bytes(2, "big")
            + self.dport.to_bytes(2, "big")
            + (self.seq & 0xFFFFFFFF).to_bytes(4, "big")
            + self.ack.to_bytes(4, "big")
            + bytes([(self.tcp_header // 4) << 4, self.flags])
            + self.window.to_bytes(2, "big")
            + checksum.to_bytes(2, "big")
            + self.urgent.to_bytes(2, "big")
            + self.options
        )
        upper = self.extension + tcp + self.payload
        first = 0x60000000 | self.traffic_class << 20 | self.flow_label
        next_header = DEST_OPTIONS if self.extension else TCP
        length = min(len(upper), 0xFFFF).to_bytes(2, "big")  # more only in tests of oversized input
        head = first.to_bytes(4, "big") + length + bytes([next_header, self.hop_limit])
        return bytearray(head + self.src + self.dst + upper)


def destination_options(next_header: int = TCP) -> bytes:
    """An 8-byte Destination Options header holding one PadN option."""
    return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])


def timestamps(value: int = 0x01020304, echo: int = 0x0A0B0C0D) -> bytes:
    return b"\x01\x01\x08\x0a" + value.to_bytes(4, "big") + echo.to_bytes(4, "big")


def udp_packet(payload: bytes, src: bytes = SRC, dst: bytes = DST) -> bytearray:
    length = 8 + len(payload)
    udp = (
        (5353).to_bytes(2, "big") + (9999).to_bytes(2, "big") + length.to_bytes(2, "big") + b"\0\0" + payload
    )
    return bytearray(bytes([0x60, 0, 0, 0]) + length.to_bytes(2, "big") + bytes([UDP, 64]) + src + dst + udp)


def with_checksum(packet: bytearray, l4_start: int, offset: int, next_header: int) -> bytearray:
    """``packet`` with its upper-layer checksum filled in by the reference."""
    out = bytearray(packet)
    out[l4_start + offset : l4_start + offset + 2] = b"\0\0"
    pseudo = pseudo_header(bytes(out[8:24]), bytes(out[24:40]), len(out) - l4_start, next_header)
    value = ~reference_sum(pseudo + out[l4_start:]) & 0xFFFF
    out[l4_start + offset : l4_start + offset + 2] = (value or 0xFFFF).to_bytes(2, "big")
    return out


def with_seed(packet: bytearray, offset: int, next_header: int) -> PartialChecksum:
    """``packet`` (no extension headers) as the kernel hands it with NEEDS_CSUM: the pseudo-header sum in the
    checksum field."""
    out = bytearray(packet)
    out[IPV6_HEADER + offset : IPV6_HEADER + offset + 2] = l4_seed(out, IPV6_HEADER, next_header).to_bytes(
        2, "big"
    )
    return PartialChecksum(out)


def payload_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------- 1. checksums
def checksum_data() -> st.SearchStrategy[bytes]:
    sizes = st.integers(min_value=0, max_value=3000)
    return st.one_of(
        st.binary(max_size=300),
        sizes.map(bytes),  # all zero, odd and even lengths
        sizes.map(lambda n: b"\xff" * n),
        st.tuples(sizes, st.integers(0, 2**32)).map(lambda t: payload_of(*t)),
    )


@given(data=checksum_data())
def test_ones_sum_matches_the_word_loop(data: bytes) -> None:
    expected = word_loop_sum(data)
    assert reference_sum(data) == expected
    assert offload.ones_sum(data) == expected % 0xFFFF  # 0xFFFF and 0 are one value in ones' complement
    assert offload.ones_sum(bytearray(data)) == offload.ones_sum(memoryview(data)) == expected % 0xFFFF
    # the field to store: the complement, never 0 (UDP over IPv6 forbids it; 0xFFFF verifies alike)
    assert offload.checksum_field(offload.ones_sum(data)) == ((~expected) & 0xFFFF or 0xFFFF)


@given(parts=st.lists(checksum_data(), max_size=5))
def test_sums_of_even_pieces_add_up_and_checksum_field_takes_any_total(parts: list[bytes]) -> None:
    even = [part + b"\x00" if len(part) % 2 else part for part in parts]
    total = sum(offload.ones_sum(part) for part in even)  # not reduced: may exceed 16 bits many times
    whole = b"".join(even)
    assert total % 0xFFFF == offload.ones_sum(whole)
    assert offload.checksum_field(total) == offload.checksum_field(offload.ones_sum(whole))
    assert 1 <= offload.checksum_field(total) <= 0xFFFF


def test_checksum_field_edges() -> None:
    assert offload.checksum_field(0) == 0xFFFF
    assert offload.checksum_field(0xFFFF) == 0xFFFF
    assert offload.checksum_field(1) == 0xFFFE
    assert offload.checksum_field(0xFFFE) == 1
    assert offload.ones_sum(b"") == 0
    assert offload.ones_sum(b"\x01") == 0x0100  # an odd last byte is the high half of its word
    assert offload.ones_sum(b"\xff\xff") == 0
    assert offload.ones_sum(b"\xff\xff\x00\x01") == 1


@given(
    src=st.binary(min_size=16, max_size=16),
    dst=st.binary(min_size=16, max_size=16),
    length=st.integers(0, 0xFFFF),
    next_header=st.sampled_from([TCP, UDP, ICMPV6]),
)
def test_pseudo_header_sum_matches_the_rfc_layout(
    src: bytes, dst: bytes, length: int, next_header: int
) -> None:
    expected = reference_sum(pseudo_header(src, dst, length, next_header))
    assert offload.pseudo_header_sum(src, dst, length, next_header) % 0xFFFF == expected % 0xFFFF


@given(size=st.integers(0, 3000), seed=st.integers(0, 2**32), udp=st.booleans(), view=st.booleans())
def test_finish_checksum_completes_a_seeded_packet(size: int, seed: int, udp: bool, view: bool) -> None:
    payload = payload_of(size, seed)
    plain = udp_packet(payload) if udp else Tcp(payload, options=timestamps()).packet()
    offset, next_header = (6, UDP) if udp else (16, TCP)
    seeded = bytearray(with_seed(plain, offset, next_header))
    offload.finish_checksum(memoryview(seeded) if view else seeded, IPV6_HEADER, offset)
    assert l4_verifies(seeded, IPV6_HEADER, next_header)
    assert seeded[IPV6_HEADER + offset : IPV6_HEADER + offset + 2] != b"\0\0"
    assert seeded == with_checksum(plain, IPV6_HEADER, offset, next_header)


@pytest.mark.parametrize(("size", "payload_byte"), [(0, 0), (1, 0), (1, 0xFF), (1400, 0), (1401, 0xFF)])
def test_finish_checksum_on_all_zero_and_all_ones_payloads(size: int, payload_byte: int) -> None:
    plain = udp_packet(bytes([payload_byte]) * size)
    seeded = bytearray(with_seed(plain, 6, UDP))
    offload.finish_checksum(seeded, IPV6_HEADER, 6)
    assert l4_verifies(seeded, IPV6_HEADER, UDP)
    assert seeded[46:48] != b"\0\0"


@pytest.mark.parametrize(("csum_start", "csum_offset"), [(39, 16), (0, 46), (40, 19), (40, 100), (200, 0)])
def test_finish_checksum_outside_the_packet_is_a_protocol_error(csum_start: int, csum_offset: int) -> None:
    packet = bytearray(Tcp(b"").packet())  # 60 bytes
    before = bytes(packet)
    with pytest.raises(ProtocolError):
        offload.finish_checksum(packet, csum_start, csum_offset)
    assert packet == before


def test_can_be_partial_and_the_checksum_offset() -> None:
    assert offload.can_be_partial(TCP, 20)
    assert not offload.can_be_partial(TCP, 19)
    assert offload.can_be_partial(UDP, 8)
    assert not offload.can_be_partial(UDP, 7)
    assert not offload.can_be_partial(ICMPV6, 100)
    assert not offload.can_be_partial(DEST_OPTIONS, 100)
    assert offload.partial_checksum_offset(Tcp(b"x").packet()) == 56
    assert offload.partial_checksum_offset(udp_packet(b"")) == 46
    assert offload.partial_checksum_offset(Tcp(b"x").packet()[:59]) == 0
    assert offload.partial_checksum_offset(Tcp(b"x", extension=destination_options()).packet()) == 0
    icmp = bytearray(udp_packet(b"abcd"))
    icmp[6] = ICMPV6
    assert offload.partial_checksum_offset(icmp) == 0


def test_complete_leaves_full_packets_alone_and_finishes_partial_ones() -> None:
    full = bytes(with_checksum(Tcp(b"data" * 100).packet(), IPV6_HEADER, 16, TCP))
    assert offload.complete(full) is full
    for plain, offset, next_header in (
        (Tcp(b"data" * 100).packet(), 16, TCP),
        (udp_packet(b"x" * 33), 6, UDP),
    ):
        done = offload.complete(with_seed(plain, offset, next_header))
        assert type(done) is bytes
        assert done == with_checksum(plain, IPV6_HEADER, offset, next_header)


# --------------------------------------------------------------------------- virtio header
@given(fields=st.tuples(*[st.integers(0, 255)] * 2, *[st.integers(0, 0xFFFF)] * 4))
def test_vnet_header_round_trip(fields: tuple[int, ...]) -> None:
    header = VnetHeader(*fields)
    data = header.pack()
    assert len(data) == VNET_HEADER_SIZE == offload.VNET_STRUCT.size
    assert VnetHeader.unpack(data) == header
    assert VnetHeader.unpack(data + b"packet") == header
    assert offload.VNET_STRUCT.unpack_from(data) == fields


def test_vnet_header_plain_and_short() -> None:
    assert bytes(10) == PLAIN_VNET_HEADER
    assert VnetHeader.unpack(PLAIN_VNET_HEADER) == VnetHeader()
    with pytest.raises(ProtocolError):
        VnetHeader.unpack(bytes(9))


# --------------------------------------------------------------------------- 2. segmentation
FLAG_SETS = [TCP_ACK | extra for extra in range(256) if extra & ~(TCP_PSH | TCP_FIN | TCP_CWR | TCP_ECE) == 0]


@st.composite
def tso_packets(draw: st.DrawFn, with_extension: bool = True) -> tuple[Tcp, int]:
    """A TSO packet (as Tcp fields) and an MSS to cut it with; at most ~150 segments, to stay quick."""
    mss = draw(st.one_of(st.integers(1, 9000), st.sampled_from([1, 536, 1220, 1440, 8960, 9000])))
    size = draw(st.one_of(st.integers(0, min(65000, mss * 150)), st.sampled_from([0, mss, mss + 1, 2 * mss])))
    size = min(size, 65000)
    options = draw(
        st.one_of(
            st.just(b""),
            st.just(timestamps()),
            st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
        )
    )
    tcp = Tcp(
        payload=payload_of(size, draw(st.integers(0, 2**32))),
        seq=draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 70000, 2**32 - 1))),
        ack=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.sampled_from(FLAG_SETS)),
        options=options,
        urgent=draw(st.integers(0, 0xFFFF)),
        extension=destination_options() if with_extension and draw(st.booleans()) else b"",
        src=draw(st.binary(min_size=16, max_size=16)),
        dst=draw(st.binary(min_size=16, max_size=16)),
        traffic_class=draw(st.integers(0, 255)),
        flow_label=draw(st.integers(0, 0xFFFFF)),
    )
    return tcp, mss


def check_segments(tcp: Tcp, mss: int, segments: Sequence[bytes | bytearray], partial: bool) -> None:
    """Everything a NIC's segmentation promises, segment by segment."""
    original = tcp.packet()
    l4, header_end = tcp.l4_start, tcp.l4_start + tcp.tcp_header
    expected_count = max(1, -(-len(tcp.payload) // mss))
    assert len(segments) == expected_count
    assert b"".join(bytes(s[header_end:]) for s in segments) == tcp.payload
    for number, segment in enumerate(segments):
        first, last = number == 0, number == len(segments) - 1
        chunk = segment[header_end:]
        assert len(chunk) == (mss if not last else len(tcp.payload) - mss * (len(segments) - 1))
        assert int.from_bytes(segment[4:6], "big") == len(segment) - IPV6_HEADER
        assert int.from_bytes(segment[l4 + 4 : l4 + 8], "big") == (tcp.seq + number * mss) & 0xFFFFFFFF
        flags = tcp.flags
        if not last:
            flags &= ~(TCP_FIN | TCP_PSH)
        if not first:
            flags &= ~TCP_CWR
        assert segment[l4 + 13] == flags
        # every other header byte as in the original: IPv6 fields, extension, ports, ack, window, options
        unchanged = [
            (0, 4),
            (6, l4),
            (l4, l4 + 4),
            (l4 + 8, l4 + 13),
            (l4 + 14, l4 + 16),
            (l4 + 18, header_end),
        ]
        for start, end in unchanged:
            assert segment[start:end] == original[start:end]
        field = int.from_bytes(segment[l4 + 16 : l4 + 18], "big")
        if partial:
            assert field == l4_seed(segment, l4, TCP)
        else:
            assert l4_verifies(segment, l4, TCP)
            assert field != 0


@given(case=tso_packets())
def test_tcp_segments_cut_like_a_nic(case: tuple[Tcp, int]) -> None:
    tcp, mss = case
    packet = tcp.packet()
    segments = offload.tcp_segments(packet, tcp.l4_start, mss)
    check_segments(tcp, mss, segments, partial=False)
    assert offload.tcp_segment_count(packet, tcp.l4_start, mss) == len(segments)
    # the pieces are the same bytes, and the input is not touched
    parts = list(offload.tcp_segment_parts(memoryview(packet), tcp.l4_start, mss))
    assert [bytes(head) + bytes(chunk) for head, chunk in parts] == [bytes(s) for s in segments]
    assert packet == tcp.packet()


@given(case=tso_packets(with_extension=False))
def test_partial_segments_carry_the_pseudo_header_sum(case: tuple[Tcp, int]) -> None:
    tcp, mss = case
    packet = bytes(tcp.packet())
    partial = offload.tcp_segments(packet, IPV6_HEADER, mss, partial=True)
    check_segments(tcp, mss, partial, partial=True)
    assert offload.tcp_segment_count(packet, IPV6_HEADER, mss, partial=True) == len(partial)
    full = offload.tcp_segments(packet, IPV6_HEADER, mss)
    # finishing a partial segment gives exactly the fully checksummed one
    assert [offload.complete(PartialChecksum(s)) for s in partial] == [bytes(s) for s in full]


@pytest.mark.parametrize(
    ("size", "mss"),
    [
        (0, 1),
        (0, 1400),
        (1, 1),
        (1400, 1400),
        (1401, 1400),
        (2800, 1400),
        (65000, 1400),
        (65000, 9000),
        (65000, 65000),
        (3000, 1),
    ],
)
def test_tcp_segments_at_the_edges(size: int, mss: int) -> None:
    tcp = Tcp(payload_of(size, size ^ mss), flags=TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR, options=timestamps())
    check_segments(tcp, mss, offload.tcp_segments(tcp.packet(), IPV6_HEADER, mss), partial=False)


def test_sequence_numbers_wrap_around() -> None:
    tcp = Tcp(payload_of(5000, 1), seq=2**32 - 1500)
    segments = offload.tcp_segments(tcp.packet(), IPV6_HEADER, 1000)
    seqs = [int.from_bytes(s[44:48], "big") for s in segments]
    assert seqs == [2**32 - 1500, 2**32 - 500, 500, 1500, 2500]
    check_segments(tcp, 1000, segments, partial=False)


@given(case=tso_packets(with_extension=False), first=st.integers(0, 50), slack=st.integers(0, 30))
def test_write_partial_segments_lays_out_the_partial_segments_as_inner_frames(
    case: tuple[Tcp, int], first: int, slack: int
) -> None:
    """The fast path of send_large: the same segments as ``tcp_segments(partial=True)``, each as a
    compressed inner frame (kind, IPv6 bytes 0-7, TCP header and payload) every ``stride`` bytes."""
    tcp, mss = case
    packet = bytes(tcp.packet())
    expected = [
        bytes([0x07]) + s[:8] + s[40:] for s in offload.tcp_segments(packet, IPV6_HEADER, mss, partial=True)
    ]
    stride = 1 + 8 + tcp.tcp_header + mss + slack
    out = bytearray(b"\xcc" * (first + stride * len(expected)))
    count, full, last = offload.write_partial_segments(out, first, stride, 0x07, packet, mss)
    assert count == len(expected)
    assert full == 1 + 8 + tcp.tcp_header + mss
    assert last == len(expected[-1])
    frames = [
        bytes(out[first + i * stride : first + i * stride + len(frame)]) for i, frame in enumerate(expected)
    ]
    assert frames == expected
    assert out[:first] == b"\xcc" * first


def test_partial_cutting_refuses_extension_headers() -> None:
    tcp = Tcp(b"x" * 3000, extension=destination_options())
    with pytest.raises(ValueError, match="extension"):
        offload.tcp_segments(tcp.packet(), tcp.l4_start, 1000, partial=True)


def malformed_cases() -> list[tuple[str, bytes, int, int]]:
    good = bytes(Tcp(b"x" * 3000).packet())
    short_offset = bytearray(good)
    short_offset[52] = 4 << 4  # data offset 16 bytes
    long_offset = bytearray(Tcp(b"").packet())
    long_offset[52] = 6 << 4  # 24 bytes of TCP header in a 20-byte TCP packet
    ipv4 = bytearray(good)
    ipv4[0] = 0x45
    return [
        ("empty", b"", 40, 1000),
        ("shorter than IPv6", good[:39], 40, 1000),
        ("IPv4", bytes(ipv4), 40, 1000),
        ("l4_start inside the IPv6 header", good, 39, 1000),
        ("l4_start negative", good, -20, 1000),
        ("l4_start leaves no TCP header", good, len(good) - 19, 1000),
        ("l4_start past the end", good, len(good) + 100, 1000),
        ("data offset below 5", bytes(short_offset), 40, 1000),
        ("data offset past the end", bytes(long_offset), 40, 1000),
        ("mss 0", good, 40, 0),
        ("mss negative", good, 40, -1),
        ("TCP header cut short", good[:59], 40, 1000),
    ]


@pytest.mark.parametrize(
    ("packet", "l4_start", "mss"), [pytest.param(*case[1:], id=case[0]) for case in malformed_cases()]
)
@pytest.mark.parametrize("partial", [False, True])
def test_malformed_tso_packets_are_protocol_errors(
    packet: bytes, l4_start: int, mss: int, partial: bool
) -> None:
    with pytest.raises(ProtocolError):
        offload.tcp_segment_count(packet, l4_start, mss, partial=partial)
    with pytest.raises(ProtocolError):
        offload.tcp_segments(packet, l4_start, mss, partial=partial)
    with pytest.raises(ProtocolError):
        list(offload.tcp_segment_parts(packet, l4_start, mss, partial=partial))


def test_a_segment_longer_than_ipv6_allows_is_a_protocol_error() -> None:
    """A TUN read may be longer than any IPv6 packet (the daemon reads up to 64 KiB + 256 bytes); a segment
    whose payload length field cannot hold its size is malformed input, not an overflow in the cutter."""
    tcp = Tcp(bytes(0xFFFF))  # 20 bytes of TCP + 65535 bytes: more than the 16-bit payload length holds
    packet = tcp.packet()
    with pytest.raises(ProtocolError):
        offload.tcp_segments(packet, IPV6_HEADER, 0x10000)


@settings(max_examples=300)
@given(
    packet=st.binary(max_size=200),
    l4_start=st.integers(-5, 220),
    mss=st.integers(-2, 300),
    partial=st.booleans(),
    version_six=st.booleans(),
)
def test_arbitrary_bytes_segment_or_raise_protocol_error(
    packet: bytes, l4_start: int, mss: int, partial: bool, version_six: bool
) -> None:
    if version_six and packet:
        packet = bytes([0x60 | packet[0] & 0x0F]) + packet[1:]
    if partial and l4_start != IPV6_HEADER:
        l4_start = IPV6_HEADER
    try:
        count = offload.tcp_segment_count(packet, l4_start, mss, partial=partial)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            offload.tcp_segments(packet, l4_start, mss, partial=partial)
        return
    segments = offload.tcp_segments(packet, l4_start, mss, partial=partial)
    assert len(segments) == count


# --------------------------------------------------------------------------- 3. coalescing
@dataclass(frozen=True)
class Written:
    vnet: VnetHeader
    packet: bytes


class Recorder:
    """The ``write`` of a sink: keeps a copy of every packet handed to the TUN, with its virtio header."""

    def __init__(self) -> None:
        self.writes: list[Written] = []
        self.raw_headers: list[bytes] = []

    def __call__(self, header: bytes, parts: list[offload.Buffer]) -> None:
        self.raw_headers.append(bytes(header))
        vnet = VnetHeader.unpack(header) if header else VnetHeader()
        self.writes.append(Written(vnet, b"".join(bytes(part) for part in parts)))


Piece = tuple[int, bytes, int]  # sequence number, payload, flags of one TCP segment


def tcp_pieces(packet: bytes, tcp_header: int) -> Piece:
    return int.from_bytes(packet[44:48], "big"), packet[IPV6_HEADER + tcp_header :], packet[53]


def check_joined(written: Written) -> list[Piece]:
    """The checks on one GSO write, and the segments it stands for (cut at gso_size, as the kernel would)."""
    vnet, packet = written.vnet, written.packet
    tcp_header = (packet[52] >> 4) * 4
    assert vnet.flags == VNET_F_NEEDS_CSUM
    assert vnet.gso_type == GSO_TCPV6
    assert vnet.hdr_len == IPV6_HEADER + tcp_header
    assert (vnet.csum_start, vnet.csum_offset) == (IPV6_HEADER, 16)
    assert packet[6] == TCP
    assert int.from_bytes(packet[4:6], "big") == len(packet) - IPV6_HEADER
    assert len(packet) <= MAX_PACKET
    assert int.from_bytes(packet[56:58], "big") == l4_seed(packet, IPV6_HEADER, TCP)
    finished = bytearray(packet)
    offload.finish_checksum(finished, vnet.csum_start, vnet.csum_offset)
    assert l4_verifies(finished, IPV6_HEADER, TCP)
    seq, payload, flags = tcp_pieces(packet, tcp_header)
    size = vnet.gso_size
    assert len(payload) > size > 0  # at least two segments
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    # PSH may only have come from the last segment; the others carried ACK alone
    return [
        ((seq + i * size) & 0xFFFFFFFF, chunk, flags if i == len(chunks) - 1 else flags & ~TCP_PSH)
        for i, chunk in enumerate(chunks)
    ]


def check_alone(written: Written, fed: bytes) -> None:
    """A packet that went up alone: its own bytes, a plain header or, for a partial one, NEEDS_CSUM."""
    assert written.packet == bytes(fed)
    if isinstance(fed, PartialChecksum):
        offset = 16 if fed[6] == TCP else 6
        assert written.vnet == VnetHeader(flags=VNET_F_NEEDS_CSUM, csum_start=IPV6_HEADER, csum_offset=offset)
    else:
        assert written.vnet == VnetHeader()


def feed(sink: offload.PacketSink, packet: bytes, as_parts: bool) -> None:
    if as_parts:
        view = memoryview(packet)
        sink.add_parts(
            view[:8], bytes(view[8:24]), bytes(view[24:40]), view[40:], isinstance(packet, PartialChecksum)
        )
    else:
        sink.add(packet)


def flatten(writes: list[Written], tcp_header: int) -> list[tuple[int, Piece]]:
    """Every segment that went up, in order, with the number of the write that carried it."""
    out: list[tuple[int, Piece]] = []
    for number, written in enumerate(writes):
        if written.vnet.gso_type == GSO_NONE:
            out.append((number, tcp_pieces(written.packet, tcp_header)))
        else:
            out.extend((number, piece) for piece in check_joined(written))
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[Tcp, int]:
    """A TSO packet that a coalescer may join back: ACK, maybe PSH, no extension headers."""
    mss = draw(st.one_of(st.integers(1, 1500), st.sampled_from([1, 1220, 1440, 9000])))
    size = draw(st.integers(0, min(65000, mss * 30)))
    tcp = Tcp(
        payload_of(size, draw(st.integers(0, 2**32))),
        seq=draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 70000, 2**32 - 1))),
        flags=draw(st.sampled_from([TCP_ACK, TCP_ACK | TCP_PSH])),
        options=draw(st.sampled_from([b"", timestamps()])),
    )
    return tcp, mss


@given(case=streams(), as_parts=st.booleans(), partial=st.booleans())
def test_in_order_segments_become_the_original_packet_again(
    case: tuple[Tcp, int], as_parts: bool, partial: bool
) -> None:
    tcp, mss = case
    original = bytes(tcp.packet())
    segments = [bytes(s) for s in offload.tcp_segments(original, IPV6_HEADER, mss, partial=partial)]
    if partial:
        segments = [PartialChecksum(s) for s in segments]
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    for segment in segments:
        feed(coalescer, segment, as_parts)
    coalescer.flush()
    assert len(recorder.writes) == 1
    written = recorder.writes[0]
    if len(segments) == 1:
        check_alone(written, segments[0])
        assert coalescer.joined == 0
        return
    assert coalescer.joined == len(segments)
    assert written.vnet.gso_size == mss
    check_joined(written)
    # the joined packet, checksum finished, is the original as one segment (same flags, fields, bytes)
    finished = bytearray(written.packet)
    offload.finish_checksum(finished, IPV6_HEADER, 16)
    assert finished == offload.tcp_segments(original, IPV6_HEADER, 0xFFFF)[0]


@settings(max_examples=80)
@given(
    case=streams(),
    order=st.lists(st.integers(0, 200), max_size=120),
    ways=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=120, max_size=120),
)
def test_losses_duplicates_and_reordering_deliver_every_segment_once_in_order(
    case: tuple[Tcp, int], order: list[int], ways: list[tuple[bool, bool]]
) -> None:
    tcp, mss = case
    original = bytes(tcp.packet())
    full = [bytes(s) for s in offload.tcp_segments(original, IPV6_HEADER, mss)]
    partial = [PartialChecksum(s) for s in offload.tcp_segments(original, IPV6_HEADER, mss, partial=True)]
    indices = [i % len(full) for i in order]
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    fed: list[bytes] = []
    for index, (as_parts, is_partial) in zip(indices, ways, strict=False):
        packet = partial[index] if is_partial else full[index]
        fed.append(packet)
        feed(coalescer, packet, as_parts)
    coalescer.flush()
    coalescer.flush()  # a second flush writes nothing more
    went_up = flatten(recorder.writes, tcp.tcp_header)
    # every packet fed went up exactly once, in the order fed; a joined write stands only for segments
    # that were fed one right after the other and continue each other byte for byte
    assert [piece for _, piece in went_up] == [tcp_pieces(p, tcp.tcp_header) for p in fed]
    for (number, _), packet in zip(went_up, fed, strict=True):
        if recorder.writes[number].vnet.gso_type == GSO_NONE:
            check_alone(recorder.writes[number], packet)
    assert coalescer.joined == sum(1 for number, _ in went_up if recorder.writes[number].vnet.gso_type)
    # and it joins whenever it may: a full-sized segment followed by the next one goes up with it
    last = len(full) - 1
    for i in range(len(indices) - 1):
        if indices[i + 1] == indices[i] + 1 and indices[i] != last:
            assert went_up[i][0] == went_up[i + 1][0], f"segments {indices[i]}, {indices[i + 1]} not joined"


def test_runs_stop_at_64_kib() -> None:
    """Two back-to-back TSO packets of one stream: the joined packets never exceed the IPv6 maximum."""
    first = Tcp(payload_of(60000, 1), seq=5, options=timestamps())
    second = Tcp(payload_of(60000, 2), seq=5 + 60000, options=timestamps())
    segments = [
        bytes(s) for t in (first, second) for s in offload.tcp_segments(t.packet(), IPV6_HEADER, 1000)
    ]
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    for segment in segments:
        coalescer.add(segment)
    coalescer.flush()
    assert len(recorder.writes) >= 2
    assert all(len(w.packet) <= MAX_PACKET for w in recorder.writes)
    assert max(len(w.packet) for w in recorder.writes) > MAX_PACKET - 1000  # filled up before cutting
    went_up = flatten(recorder.writes, first.tcp_header)
    assert b"".join(piece[1] for _, piece in went_up) == first.payload + second.payload


@given(limit_segments=st.integers(1, 10), count=st.integers(1, 30), mss=st.integers(1, 1400))
def test_runs_stop_at_a_given_length(limit_segments: int, count: int, mss: int) -> None:
    tcp = Tcp(payload_of(mss * count, mss), seq=77)
    max_length = IPV6_HEADER + 20 + limit_segments * mss
    recorder = Recorder()
    coalescer = Coalescer(recorder, max_length=max_length)
    for segment in offload.tcp_segments(tcp.packet(), IPV6_HEADER, mss):
        coalescer.add(bytes(segment))
    coalescer.flush()
    assert all(len(w.packet) <= max_length for w in recorder.writes)
    assert len(recorder.writes) == -(-count // limit_segments)
    assert b"".join(piece[1] for _, piece in flatten(recorder.writes, 20)) == tcp.payload


def passers_by() -> list[tuple[str, bytes]]:
    """Packets that never join a run, TCP ones at sequence number 3000 with 1000 bytes of payload: just
    where ``test_packets_that_cannot_join_pass_alone_between_runs`` lets them continue a stream."""
    data = payload_of(1000, 3)
    trailing = bytearray(Tcp(data, seq=3000).packet())
    trailing[4:6] = (20 + 900).to_bytes(2, "big")  # the length field says less than the packet holds
    cases: list[tuple[str, bytes]] = [
        ("UDP", bytes(udp_packet(data))),
        ("UDP partial", with_seed(udp_packet(data), 6, UDP)),
        (
            "ICMPv6",
            bytes([0x60, 0, 0, 0, 0, 8, ICMPV6, 255]) + SRC + DST + b"\x80\x00\x00\x00\x00\x01\x00\x01",
        ),
        (
            "TCP with destination options",
            bytes(Tcp(data, seq=3000, extension=destination_options()).packet()),
        ),
        ("TCP without payload", bytes(Tcp(b"", seq=3000).packet())),
        ("TCP partial without payload", with_seed(Tcp(b"", seq=3000).packet(), 16, TCP)),
        ("TCP with trailing bytes", bytes(trailing)),
        ("TCP shorter than its header", bytes(Tcp(b"", seq=3000).packet())[:55]),
    ]
    for name, flags in [
        ("SYN", TCP_SYN),
        ("SYN ACK", TCP_SYN | TCP_ACK),
        ("FIN", TCP_FIN | TCP_ACK),
        ("RST", TCP_RST | TCP_ACK),
        ("URG", TCP_URG | TCP_ACK),
        ("ECE", TCP_ECE | TCP_ACK),
        ("CWR", TCP_CWR | TCP_ACK),
        ("no ACK", 0),
    ]:
        packet = Tcp(data, seq=3000, flags=flags).packet()
        cases.append((f"TCP {name}", bytes(packet)))
        cases.append((f"TCP {name} partial", with_seed(packet, 16, TCP)))
    return cases


@pytest.mark.parametrize("packet", [pytest.param(packet, id=name) for name, packet in passers_by()])
@pytest.mark.parametrize("as_parts", [False, True])
def test_packets_that_cannot_join_pass_alone_between_runs(packet: bytes, as_parts: bool) -> None:
    # a, b: a run that the packet would continue, were it joinable; c, d: segments that would continue it
    a, b, c, d = (
        bytes(s) for s in offload.tcp_segments(Tcp(payload_of(4000, 4), seq=1000).packet(), 40, 1000)
    )
    c, d = (bytes(Tcp(payload_of(1000, n), seq=n).packet()) for n in (4000, 5000))
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    for item in (a, b, packet, c, d):
        feed(coalescer, item, as_parts)
    coalescer.flush()
    assert len(recorder.writes) == 3
    check_alone(recorder.writes[1], packet)
    for written, expected in ((recorder.writes[0], (a, b)), (recorder.writes[2], (c, d))):
        assert check_joined(written) == [tcp_pieces(s, 20) for s in expected]
    # and alone, with nothing around it
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    feed(coalescer, packet, as_parts)
    coalescer.flush()
    assert len(recorder.writes) == 1
    check_alone(recorder.writes[0], packet)


def differing() -> list[tuple[str, Tcp]]:
    """A segment that continues the stream byte for byte but differs in a header field that must match."""
    base = Tcp(payload_of(1000, 5), seq=2000, options=timestamps())
    return [
        ("source port", replace(base, sport=1)),
        ("destination port", replace(base, dport=1)),
        ("acknowledgement", replace(base, ack=1)),
        ("window", replace(base, window=1)),
        ("timestamp", replace(base, options=timestamps(value=5))),
        ("no options", replace(base, options=b"")),
        ("other options", replace(base, options=b"\x01\x01\x01\x01" + timestamps())),
        ("source", replace(base, src=DST)),
        ("destination", replace(base, dst=SRC)),
        ("traffic class", replace(base, traffic_class=4)),
        ("flow label", replace(base, flow_label=1)),
        ("hop limit", replace(base, hop_limit=1)),
    ]


@pytest.mark.parametrize("second", [pytest.param(second, id=name) for name, second in differing()])
def test_a_header_difference_ends_the_run(second: Tcp) -> None:
    first = Tcp(payload_of(1000, 6), seq=1000, options=timestamps())
    third = replace(second, payload=payload_of(1000, 7), seq=3000)
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    for tcp in (first, second, third):
        coalescer.add(bytes(tcp.packet()))
    coalescer.flush()
    # first alone; second and third (which match each other) joined
    assert [w.vnet.gso_type for w in recorder.writes] == [GSO_NONE, GSO_TCPV6]
    assert recorder.writes[0].packet == bytes(first.packet())
    assert check_joined(recorder.writes[1]) == [
        tcp_pieces(bytes(t.packet()), t.tcp_header) for t in (second, third)
    ]


def test_what_may_differ_inside_a_run() -> None:
    """The urgent pointer and the checksum are not compared (URG is not set, checksums are redone)."""
    first = Tcp(payload_of(1000, 8), seq=1000)
    second = Tcp(payload_of(1000, 9), seq=2000, urgent=99)
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    coalescer.add(bytes(first.packet(checksum=1)))
    coalescer.add(bytes(second.packet(checksum=2)))
    coalescer.flush()
    assert len(recorder.writes) == 1
    assert recorder.writes[0].vnet.gso_type == GSO_TCPV6


def test_a_short_segment_or_psh_closes_the_run() -> None:
    segments = [Tcp(payload_of(n, n), seq=s) for n, s in ((1000, 0), (500, 1000), (1000, 1500))]
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    for tcp in segments:
        coalescer.add(bytes(tcp.packet()))
    coalescer.flush()
    assert [len(check_joined(recorder.writes[0]))] == [2]
    check_alone(recorder.writes[1], bytes(segments[2].packet()))

    pushed = [Tcp(payload_of(1000, 1), seq=0, flags=TCP_ACK | TCP_PSH), Tcp(payload_of(1000, 2), seq=1000)]
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    for tcp in pushed:
        coalescer.add(bytes(tcp.packet()))
    coalescer.flush()
    assert [w.vnet for w in recorder.writes] == [VnetHeader(), VnetHeader()]

    # a longer segment after a shorter first one does not join either (gso_size is the first's length)
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    coalescer.add(bytes(Tcp(payload_of(500, 1), seq=0).packet()))
    coalescer.add(bytes(Tcp(payload_of(1000, 1), seq=500).packet()))
    coalescer.flush()
    assert [w.vnet for w in recorder.writes] == [VnetHeader(), VnetHeader()]


def test_psh_on_the_last_segment_is_kept_on_the_joined_packet() -> None:
    segments = [Tcp(payload_of(1000, 1), seq=0), Tcp(payload_of(1000, 2), seq=1000, flags=TCP_ACK | TCP_PSH)]
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    for tcp in segments:
        coalescer.add(bytes(tcp.packet()))
    coalescer.flush()
    (written,) = recorder.writes
    assert written.packet[53] == TCP_ACK | TCP_PSH
    assert written.vnet.gso_size == 1000


def test_the_coalescer_keeps_no_packet_after_flush() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    coalescer.flush()
    assert recorder.writes == []
    coalescer.add(bytes(Tcp(payload_of(1000, 1)).packet()))
    assert recorder.writes == []  # held: it may be continued
    coalescer.flush()
    coalescer.flush()
    assert len(recorder.writes) == 1


# --------------------------------------------------------------------------- PlainPackets
def test_plain_packets_complete_partial_checksums_and_pass_the_rest() -> None:
    recorder = Recorder()
    sink = PlainPackets(recorder)
    tcp = Tcp(payload_of(3000, 1), options=timestamps()).packet()
    udp = udp_packet(payload_of(333, 2))
    full_tcp = bytes(with_checksum(tcp, IPV6_HEADER, 16, TCP))
    sink.add(full_tcp)
    sink.add(with_seed(tcp, 16, TCP))
    sink.add(with_seed(udp, 6, UDP))
    feed(sink, with_seed(tcp, 16, TCP), as_parts=True)
    feed(sink, with_seed(udp, 6, UDP), as_parts=True)
    feed(sink, full_tcp, as_parts=True)
    odd = bytes(Tcp(b"not checksummed").packet())
    feed(sink, odd, as_parts=True)
    sink.flush()
    assert set(recorder.raw_headers) == {b""}  # no virtio header on a plain TUN
    assert [w.packet for w in recorder.writes] == [
        full_tcp,
        full_tcp,
        bytes(with_checksum(udp, IPV6_HEADER, 6, UDP)),
        full_tcp,
        bytes(with_checksum(udp, IPV6_HEADER, 6, UDP)),
        full_tcp,
        odd,  # not partial: passed as it came, checksum untouched
    ]


# --------------------------------------------------------------------------- 4. UDP: segmentation and runs
def udp_gso_packet(payload: bytes, *, port: int = 9999, flow: int = 0) -> bytearray:
    """An application's UDP_SEGMENT send as the TUN hands it over: one IPv6 + UDP header for all the payload,
    the pseudo-header sum in the checksum field (NEEDS_CSUM)."""
    packet = udp_packet(payload)
    packet[1:4] = flow.to_bytes(3, "big")
    packet[42:44] = port.to_bytes(2, "big")
    return bytearray(with_seed(packet, 6, UDP))


def datagrams(sizes: Sequence[int], seed: int = 0, *, port: int = 9999, partial: bool = False) -> list[bytes]:
    """One UDP flow's datagrams of these payload sizes, full checksums (or the seed, ``partial``)."""
    out: list[bytes] = []
    for number, size in enumerate(sizes):
        packet = udp_packet(payload_of(size, seed * 1000 + number))
        packet[42:44] = port.to_bytes(2, "big")
        out.append(
            with_seed(packet, 6, UDP) if partial else bytes(with_checksum(packet, IPV6_HEADER, 6, UDP))
        )
    return out


@given(
    size=st.integers(0, 65000),
    gso_size=st.one_of(st.integers(1, 1500), st.sampled_from([1202, 1250, 1452, 8952])),
)
def test_udp_segments_cut_like_the_kernel(size: int, gso_size: int) -> None:
    payload = payload_of(size, size)
    packet = udp_gso_packet(payload, flow=0xABCDE)
    segments = offload.udp_segments(packet, IPV6_HEADER, gso_size)
    assert len(segments) == max(1, -(-size // gso_size))
    assert b"".join(bytes(s[48:]) for s in segments) == payload
    for segment in segments[:-1]:
        assert len(segment) == IPV6_HEADER + 8 + gso_size
    for segment in segments:
        assert segment[:4] == packet[:4]  # version, class, flow label
        assert segment[6:40] == packet[6:40]  # next header, hop limit, addresses
        assert segment[40:44] == packet[40:44]  # ports
        assert int.from_bytes(segment[4:6], "big") == len(segment) - IPV6_HEADER
        assert int.from_bytes(segment[44:46], "big") == len(segment) - IPV6_HEADER
        assert l4_verifies(segment, IPV6_HEADER, UDP)


@pytest.mark.parametrize(
    ("packet", "csum_start", "gso_size"),
    [
        (udp_gso_packet(b"x" * 100), IPV6_HEADER, 0),
        (udp_gso_packet(b"x" * 100), IPV6_HEADER + 8, 50),
        (udp_gso_packet(b"")[:47], IPV6_HEADER, 50),
        (Tcp(payload_of(100, 1)).packet(), IPV6_HEADER, 50),
        (bytearray(b"\x40") + udp_gso_packet(b"x" * 100)[1:], IPV6_HEADER, 50),
    ],
    ids=["no segment size", "checksum not after the IPv6 header", "short", "TCP", "not IPv6"],
)
def test_udp_segments_refuses_what_is_not_a_udp_gso_packet(
    packet: bytearray, csum_start: int, gso_size: int
) -> None:
    with pytest.raises(ProtocolError):
        offload.udp_segments(packet, csum_start, gso_size)


def check_udp_joined(written: Written) -> list[bytes]:
    """The checks on one UDP GSO write, and the datagrams the kernel makes of it (cut at gso_size, each with
    its own lengths and checksum)."""
    vnet, packet = written.vnet, written.packet
    assert vnet.flags == VNET_F_NEEDS_CSUM
    assert vnet.gso_type == GSO_UDP_L4
    assert vnet.hdr_len == IPV6_HEADER + 8
    assert (vnet.csum_start, vnet.csum_offset) == (IPV6_HEADER, 6)
    assert packet[6] == UDP
    assert int.from_bytes(packet[4:6], "big") == len(packet) - IPV6_HEADER
    assert int.from_bytes(packet[44:46], "big") == len(packet) - IPV6_HEADER
    assert len(packet) <= MAX_PACKET
    # The seed for the whole length: __udp_gso_segment moves it to each datagram's length by arithmetic.
    assert int.from_bytes(packet[46:48], "big") == l4_seed(packet, IPV6_HEADER, UDP)
    assert len(packet) - IPV6_HEADER - 8 > vnet.gso_size > 0  # at least two datagrams
    assert -(-(len(packet) - IPV6_HEADER - 8) // vnet.gso_size) <= offload.MAX_UDP_SEGMENTS
    return [bytes(s) for s in offload.udp_segments(packet, IPV6_HEADER, vnet.gso_size)]


def went_up(writes: list[Written]) -> list[bytes]:
    """Every packet the kernel delivers of these writes, in order, with full checksums."""
    out: list[bytes] = []
    for written in writes:
        if written.vnet.gso_type == GSO_UDP_L4:
            out.extend(check_udp_joined(written))
        elif written.vnet.gso_type == GSO_NONE:
            whole = bytearray(written.packet)
            if written.vnet.flags & VNET_F_NEEDS_CSUM:
                offload.finish_checksum(whole, written.vnet.csum_start, written.vnet.csum_offset)
            out.append(bytes(whole))
        else:
            raise AssertionError(f"a UDP datagram went up as {written.vnet}")
    return out


@given(
    sizes=st.lists(st.one_of(st.integers(1, 1400), st.sampled_from([1202, 1250])), min_size=1, max_size=150),
    partial=st.booleans(),
    as_parts=st.booleans(),
)
def test_udp_datagrams_go_up_exactly_as_they_came_in_as_few_writes_as_allowed(
    sizes: list[int], partial: bool, as_parts: bool
) -> None:
    """Any sequence of one flow's datagrams: what the kernel makes of the writes is the very datagrams, in
    order; a run ends only where it must (a larger datagram, a shorter one before, 64 datagrams, 64 KB)."""
    fed = datagrams(sizes, partial=partial)
    recorder = Recorder()
    coalescer = Coalescer(recorder, udp=True)
    for packet in fed:
        feed(coalescer, packet, as_parts)
    coalescer.flush()
    expected = [bytes(offload.complete(p)) for p in fed]
    assert went_up(recorder.writes) == expected
    # Greedy joining: every write but a lone one holds a run that could not have taken the next datagram.
    runs, index = [], 0
    for written in recorder.writes:
        count = len(check_udp_joined(written)) if written.vnet.gso_type == GSO_UDP_L4 else 1
        runs.append(fed[index : index + count])
        index += count
    for run, following in itertools.pairwise(runs):
        first, nxt = len(run[0]), len(following[0])
        ended = (
            len(run) == offload.MAX_UDP_SEGMENTS
            or len(run[-1]) < first
            or nxt > first
            or sum(len(p) - IPV6_HEADER - 8 for p in run) + nxt - IPV6_HEADER - 8 + 48 > MAX_PACKET
        )
        assert ended, (len(run), first, len(run[-1]), nxt)


@pytest.mark.parametrize(("size", "runs"), [(900, [64, 64, 3]), (1250, [52, 52, 27])])
def test_a_burst_of_equal_datagrams_is_one_write_per_64_or_per_64_kb(size: int, runs: list[int]) -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder, udp=True)
    fed = datagrams([size] * 130 + [300])
    for packet in fed:
        coalescer.add(packet)
    coalescer.flush()
    assert [len(check_udp_joined(w)) for w in recorder.writes] == runs
    assert went_up(recorder.writes) == fed
    assert coalescer.joined == len(fed)


def test_udp_runs_end_at_another_flow_and_never_mix_with_tcp() -> None:
    one, other = datagrams([1000] * 3, port=1111), datagrams([1000] * 3, port=2222)
    tcp = [bytes(s) for s in offload.tcp_segments(Tcp(payload_of(3000, 9), seq=5).packet(), 40, 1000)]
    recorder = Recorder()
    coalescer = Coalescer(recorder, udp=True)
    order = [*one[:2], *other, one[2], *tcp, *one]
    for packet in order:
        coalescer.add(packet)
    coalescer.flush()
    kinds = [w.vnet.gso_type for w in recorder.writes]
    assert kinds == [GSO_UDP_L4, GSO_UDP_L4, GSO_NONE, GSO_TCPV6, GSO_UDP_L4]
    flat: list[bytes] = []
    for written in recorder.writes:
        if written.vnet.gso_type == GSO_TCPV6:
            flat.extend(tcp[i] for i in range(len(check_joined(written))))
        else:
            flat.extend(went_up([written]))
    assert flat == order


@pytest.mark.parametrize(
    "change",
    ["udp length", "ipv6 length", "empty", "hop limit", "flow label"],
)
def test_a_datagram_that_does_not_match_the_run_goes_alone_or_starts_a_new_one(change: str) -> None:
    first, second, third = datagrams([800, 800, 800])
    odd = bytearray(second)
    if change == "udp length":
        odd[44:46] = (int.from_bytes(odd[44:46], "big") - 1).to_bytes(2, "big")
    elif change == "ipv6 length":
        odd[4:6] = (int.from_bytes(odd[4:6], "big") + 1).to_bytes(2, "big")
    elif change == "empty":
        odd = bytearray(datagrams([0])[0])
    elif change == "hop limit":
        odd[7] = 1
    else:
        odd[3] ^= 1
    recorder = Recorder()
    coalescer = Coalescer(recorder, udp=True)
    for packet in (first, bytes(odd), third):
        coalescer.add(packet)
    coalescer.flush()
    assert [w.packet for w in recorder.writes] == [first, bytes(odd), third]
    assert all(w.vnet == VnetHeader() for w in recorder.writes)


def test_without_udp_offload_udp_datagrams_always_go_alone() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    fed = datagrams([1250] * 5)
    for packet in fed:
        coalescer.add(packet)
    coalescer.flush()
    assert [w.packet for w in recorder.writes] == fed
    assert all(w.vnet == VnetHeader() for w in recorder.writes)
