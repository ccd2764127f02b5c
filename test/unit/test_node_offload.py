"""The offload paths of Node between two in-memory nodes: TSO packets out (send_large), single packets
staged and sealed as a batch (stage_packet, SendBatch), GRO batches in (receive_batch), and the features
exchange that decides between full and partial checksums.

A batch from ``send_large`` is the datagrams back to back; the receiving node gets it as one GRO receive
would hand it over (the same bytes, ``segment`` = the size of all but the last datagram). Frames are told
apart by what the receiver's sink gets: ``add_parts(..., partial=True)`` only for an INNER_IPV6_PARTIAL
frame (0x07). Features frames are recognised on the wire by their size, the only data frames of 62 bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from fixed_identities import fixed_identity
from test_offload import (
    Recorder,
    Tcp,
    check_joined,
    destination_options,
    l4_verifies,
    payload_of,
    timestamps,
    udp_packet,
    with_checksum,
    with_seed,
)

from husarnet_ros.core import aead, offload, wire
from husarnet_ros.core.constants import FEATURES_ATTEMPTS, FEATURES_RETRY_INTERVAL
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.offload import IPV6_HEADER, Coalescer, PartialChecksum, VnetHeader
from husarnet_ros.core.peer import Endpoint, PathKind
from husarnet_ros.core.send_batch import SendBatch
from husarnet_ros.testing.memnet import MemNet, NodePair

TCP, UDP, ICMPV6 = 6, 17, 58
FEATURES_DATAGRAM = wire.DATA_HEADER_SIZE + wire.FEATURES_FRAME_SIZE + wire.TAG_SIZE  # 62


@dataclass
class FeaturesFilter:
    """A memnet tamper hook that drops features frames from the nodes in ``mute`` and counts every features
    frame sent, by sender."""

    mute: set[Endpoint] = field(default_factory=set)
    sent: Counter[Endpoint] = field(default_factory=Counter)

    def __call__(self, src: Endpoint, dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_DATA and len(data) == FEATURES_DATAGRAM:
            self.sent[src] += 1
            if src in self.mute:
                return []
        return [data]


@dataclass
class Pair(NodePair):
    wire_filter: FeaturesFilter

    def advance(self, seconds: float) -> None:
        self.net.advance(seconds, tamper=self.wire_filter)


def make_pair(mute_a: bool = False, mute_b: bool = False, connect: bool = True) -> Pair:
    net = MemNet()
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    mute = {endpoint for endpoint, muted in ((ea, mute_a), (eb, mute_b)) if muted}
    pair = Pair(net, a, ea, b, eb, FeaturesFilter(mute))
    if connect:
        net.introduce(ea, eb)
        pair.advance(0.5)
        assert a.path_of(b.address) is PathKind.DIRECT
        assert b.path_of(a.address) is PathKind.DIRECT
    return pair


class Collect:
    """A PacketSink that keeps a copy of every packet (the views it gets die with the receive buffer)."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.partial: list[bool] = []
        self.flushes = 0

    def add(self, packet: bytes) -> None:
        self.packets.append(bytes(packet))
        self.partial.append(isinstance(packet, PartialChecksum))

    def add_parts(
        self, ip8: offload.Buffer, src: bytes, dst: bytes, l4: offload.Buffer, partial: bool
    ) -> None:
        self.packets.append(bytes(ip8) + src + dst + bytes(l4))
        self.partial.append(partial)

    def flush(self) -> None:
        self.flushes += 1

    def completed(self) -> list[bytes]:
        return [
            offload.complete(PartialChecksum(p)) if partial else p
            for p, partial in zip(self.packets, self.partial, strict=True)
        ]


def tso(pair: NodePair, size: int, *, seq: int = 1000, **fields: Any) -> Tcp:
    """A TSO packet from a to b (``fields``: those of Tcp)."""
    return Tcp(payload_of(size, seq), seq=seq, src=pair.a.address, dst=pair.b.address, **fields)


def receive(pair: NodePair, batch: tuple[Endpoint, memoryview, int], sink: offload.PacketSink) -> bytearray:
    """Hand a batch from a to b as one GRO receive; returns the buffer as it was received (a copy)."""
    endpoint, datagrams, size = batch
    assert endpoint == pair.eb
    buffer = bytearray(datagrams)
    received = bytearray(buffer)
    pair.b.receive_batch(buffer, aead.pointer(buffer), len(buffer), size, pair.ea, pair.net.now, sink)
    sink.flush()
    return received


def split(datagrams: bytes | bytearray | memoryview, size: int) -> list[bytes]:
    return [bytes(datagrams[i : i + size]) for i in range(0, len(datagrams), size)]


def send_large(pair: Pair, tcp: Tcp, mss: int) -> tuple[Endpoint, memoryview, int]:
    batch = pair.a.send_large(memoryview(tcp.packet()), tcp.l4_start, mss, pair.net.now)
    assert batch is not None
    return batch


# --------------------------------------------------------------------------- features exchange
def test_both_ends_learn_each_others_features_when_the_session_comes_up() -> None:
    pair = make_pair()
    for node in (pair.a, pair.b):
        session = pair.session(node)
        assert session.peer_features == wire.LOCAL_FEATURES
        assert 1 <= session.features_sent <= FEATURES_ATTEMPTS
    sent = dict(pair.wire_filter.sent)
    pair.advance(5.0)
    assert dict(pair.wire_filter.sent) == sent  # answered: no more offers


def test_a_peer_that_never_answers_gets_a_bounded_number_of_offers_and_full_checksums() -> None:
    pair = make_pair(mute_a=True, mute_b=True)  # neither end's features frames arrive: two old peers
    pair.advance(FEATURES_RETRY_INTERVAL * FEATURES_ATTEMPTS * 4)
    assert pair.wire_filter.sent[pair.ea] == FEATURES_ATTEMPTS
    assert pair.wire_filter.sent[pair.eb] == FEATURES_ATTEMPTS
    for node in (pair.a, pair.b):
        assert pair.session(node).peer_features == 0
        assert pair.session(node).features_sent == FEATURES_ATTEMPTS
    tcp = tso(pair, 20_000, options=timestamps())
    sink = Collect()
    receive(pair, send_large(pair, tcp, 1400), sink)
    assert sink.partial == [False] * 15
    assert sink.packets == [bytes(s) for s in offload.tcp_segments(tcp.packet(), IPV6_HEADER, 1400)]


def test_one_way_silence_only_stops_partial_checksums_towards_the_silent_side() -> None:
    """b's offers and answers never reach a: a does not know b takes partial checksums, b knows a does."""
    pair = make_pair(mute_b=True)
    pair.advance(FEATURES_RETRY_INTERVAL * FEATURES_ATTEMPTS * 2)
    assert pair.session(pair.a).peer_features == 0
    assert pair.session(pair.b).peer_features == wire.LOCAL_FEATURES
    assert pair.wire_filter.sent[pair.ea] == FEATURES_ATTEMPTS
    sink = Collect()
    receive(pair, send_large(pair, tso(pair, 5000), 1000), sink)
    assert sink.partial == [False] * 5


# --------------------------------------------------------------------------- send_large -> receive_batch
@pytest.mark.parametrize(
    ("size", "mss", "with_timestamps"),
    [
        (0, 1400, False),
        (1, 1400, False),
        (1400, 1400, False),
        (20_000, 1400, True),
        (65_000, 1428, False),
        (9000, 8960, True),
        (3000, 1, False),
    ],
)
def test_full_checksums_before_the_features_exchange_and_partial_after(
    size: int, mss: int, with_timestamps: bool
) -> None:
    pair = make_pair(mute_a=True, mute_b=True)
    a_session = pair.session(pair.a)
    assert a_session.peer_features == 0
    options = timestamps() if with_timestamps else b""
    tcp = tso(pair, size, options=options, flags=offload.TCP_ACK | offload.TCP_PSH)
    full = [bytes(s) for s in offload.tcp_segments(tcp.packet(), IPV6_HEADER, mss)]
    count = offload.tcp_segment_count(tcp.packet(), IPV6_HEADER, mss)

    batch = send_large(pair, tcp, mss)
    datagrams = split(batch[1], batch[2])
    assert len(datagrams) == count == len(full)
    assert all(len(d) == batch[2] for d in datagrams[:-1])
    assert len(datagrams[-1]) <= batch[2]
    # each segment sealed on its own: consecutive counters of one session, fresh nonces
    headers = [wire.decode_data_header(d) for d in datagrams]
    assert {index for index, _ in headers} == {pair.session(pair.b).local_index}
    counters = [counter for _, counter in headers]
    assert counters == list(range(counters[0], counters[0] + count))
    assert len({d[16:40] for d in datagrams}) == count
    sink = Collect()
    receive(pair, batch, sink)
    assert sink.partial == [False] * count
    assert sink.packets == full
    assert all(l4_verifies(p, IPV6_HEADER, TCP) for p in sink.packets)

    # the features exchange completes (the next retry gets through): now partial checksums
    pair.wire_filter.mute.clear()
    pair.advance(FEATURES_RETRY_INTERVAL * 2)
    assert a_session.peer_features & wire.FEATURE_PARTIAL_CHECKSUM
    sink = Collect()
    receive(pair, send_large(pair, tcp, mss), sink)
    assert sink.partial == [True] * count
    assert sink.completed() == full
    for packet in sink.packets:  # the checksum field holds the pseudo-header sum, nothing more
        assert packet == bytes(with_seed(bytearray(packet), 16, TCP))


@pytest.mark.parametrize("features", [False, True])
def test_a_batch_goes_up_joined_through_the_coalescer(features: bool) -> None:
    pair = make_pair(mute_a=not features, mute_b=not features)
    tcp = tso(pair, 30_000, options=timestamps())
    recorder = Recorder()
    receive(pair, send_large(pair, tcp, 1400), Coalescer(recorder))
    (written,) = recorder.writes
    check_joined(written)
    finished = bytearray(written.packet)
    offload.finish_checksum(finished, IPV6_HEADER, 16)
    assert finished == offload.tcp_segments(tcp.packet(), IPV6_HEADER, 0xFFFF)[0]


def test_extension_headers_always_go_with_full_checksums() -> None:
    pair = make_pair()
    assert pair.session(pair.a).peer_features & wire.FEATURE_PARTIAL_CHECKSUM
    tcp = tso(pair, 10_000, extension=destination_options())
    sink = Collect()
    receive(pair, send_large(pair, tcp, 1200), sink)
    assert sink.partial == [False] * 9
    assert sink.packets == [bytes(s) for s in offload.tcp_segments(tcp.packet(), tcp.l4_start, 1200)]
    assert all(l4_verifies(p, tcp.l4_start, TCP) for p in sink.packets)


def test_a_replayed_batch_is_dropped() -> None:
    pair = make_pair()
    batch = send_large(pair, tso(pair, 14_000), 1400)
    first = Collect()
    received = receive(pair, batch, first)
    assert len(first.packets) == 10
    before = pair.b.rx_counters["drop_replay"]
    again = Collect()
    pair.b.receive_batch(
        received, aead.pointer(received), len(received), batch[2], pair.ea, pair.net.now, again
    )
    assert again.packets == []
    assert pair.b.rx_counters["drop_replay"] - before == 10


def test_a_batch_with_a_tampered_datagram_loses_only_that_segment() -> None:
    pair = make_pair()
    tcp = tso(pair, 7000)
    endpoint, datagrams, size = send_large(pair, tcp, 1000)
    tampered = bytearray(datagrams)
    tampered[3 * size + 100] ^= 0x40
    sink = Collect()
    receive(pair, (endpoint, memoryview(tampered), size), sink)
    full = [bytes(s) for s in offload.tcp_segments(tcp.packet(), IPV6_HEADER, 1000)]
    assert sink.completed() == full[:3] + full[4:]
    assert pair.b.rx_counters["drop_auth"] == 1


def test_send_large_before_a_session_queues_the_first_segment_with_a_full_checksum() -> None:
    pair = make_pair(connect=False)
    tcp = tso(pair, 5000)
    pair.net.introduce(pair.ea, pair.eb)
    assert pair.a.send_large(memoryview(tcp.packet()), IPV6_HEADER, 1000, pair.net.now) is None
    pair.advance(0.5)
    first = bytes(offload.tcp_segments(tcp.packet(), IPV6_HEADER, 1000)[0])
    assert pair.net.delivered[pair.eb] == [first]
    assert l4_verifies(first, IPV6_HEADER, TCP)


def test_send_large_refuses_a_malformed_tso_packet() -> None:
    pair = make_pair()
    packet = tso(pair, 3000).packet()
    with pytest.raises(ProtocolError):
        pair.a.send_large(memoryview(packet), IPV6_HEADER, 0, pair.net.now)
    with pytest.raises(ProtocolError):
        pair.a.send_large(memoryview(packet), len(packet) - 10, 1000, pair.net.now)
    packet[52] = 0x30  # TCP data offset 12 bytes
    with pytest.raises(ProtocolError):
        pair.a.send_large(memoryview(packet), IPV6_HEADER, 1000, pair.net.now)


# --------------------------------------------------------------------------- malformed partial frames
def partial_frame(next_header: int, l4: bytes) -> bytes:
    """An INNER_IPV6_PARTIAL frame: kind, the first 8 bytes of the IPv6 header, the upper layer."""
    return (
        bytes([wire.INNER_IPV6_PARTIAL, 0x60, 0, 0, 0])
        + len(l4).to_bytes(2, "big")
        + bytes([next_header, 64])
        + l4
    )


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(partial_frame(ICMPV6, bytes(40)), id="ICMPv6"),
        pytest.param(partial_frame(60, destination_options() + bytes(40)), id="destination options"),
        pytest.param(partial_frame(59, bytes(20)), id="no next header"),
        pytest.param(partial_frame(TCP, bytes(19)), id="TCP shorter than its header"),
        pytest.param(partial_frame(UDP, bytes(7)), id="UDP shorter than its header"),
        pytest.param(bytes([wire.INNER_IPV6_PARTIAL, 0x60, 0, 0, 0]), id="no IPv6 header"),
        pytest.param(bytes([wire.INNER_IPV6_PARTIAL]), id="kind byte only"),
    ],
)
@pytest.mark.parametrize("batched", [False, True])
def test_malformed_partial_frames_are_dropped(inner: bytes, batched: bool) -> None:
    pair = make_pair()
    datagram = pair.session(pair.a).seal(inner)
    before = pair.b.rx_counters["drop_malformed"]
    sink = Collect()
    if batched:
        buffer = bytearray(datagram)
        pair.b.receive_batch(
            buffer, aead.pointer(buffer), len(buffer), len(buffer), pair.ea, pair.net.now, sink
        )
    else:
        assert pair.b.receive_data(datagram, pair.ea, pair.net.now) is None
    assert sink.packets == []
    assert pair.b.rx_counters["drop_malformed"] == before + 1


@pytest.mark.parametrize(("next_header", "l4"), [(TCP, bytes(20)), (UDP, bytes(8)), (TCP, bytes(1000))])
def test_the_smallest_partial_frames_are_delivered(next_header: int, l4: bytes) -> None:
    pair = make_pair()
    packet = pair.b.receive_data(
        pair.session(pair.a).seal(partial_frame(next_header, l4)), pair.ea, pair.net.now
    )
    assert isinstance(packet, PartialChecksum)
    assert packet[40:] == l4
    assert packet[8:24] == pair.a.address
    assert packet[24:40] == pair.b.address


# --------------------------------------------------------------------------- stage_packet + SendBatch
READ_SIZE = offload.VNET_HEADER_SIZE + 65536


def partial_tcp(pair: Pair, size: int = 3000, **fields: Any) -> tuple[Tcp, PartialChecksum]:
    tcp = tso(pair, size, **fields)
    return tcp, with_seed(tcp.packet(), 16, TCP)


def stage(
    batch: SendBatch, packet: bytes | bytearray, now: float, csum: tuple[int, int] | None = None
) -> bool:
    """Put ``packet`` where the daemon's read would (behind its virtio header) and stage it; ``csum``: the
    (start, offset) of a partial checksum (NEEDS_CSUM)."""
    flags = offload.VNET_F_NEEDS_CSUM if csum else 0
    start, offset = csum or (0, 0)
    target = batch.read_target()
    target[: offload.VNET_HEADER_SIZE] = VnetHeader(flags=flags, csum_start=start, csum_offset=offset).pack()
    target[offload.VNET_HEADER_SIZE : offload.VNET_HEADER_SIZE + len(packet)] = packet
    return batch.stage(len(packet), flags, start, offset, now)


def send_one(
    pair: Pair, packet: bytes | bytearray, csum: tuple[int, int] | None = None
) -> tuple[Endpoint, bytes]:
    batch = SendBatch(pair.a, READ_SIZE, 8)
    assert stage(batch, packet, pair.net.now, csum)
    [(endpoint, datagram)] = batch.seal()
    return endpoint, bytes(datagram)


def test_a_staged_partial_checksum_goes_as_it_is_to_a_peer_that_takes_them() -> None:
    pair = make_pair()
    tcp, seeded = partial_tcp(pair, options=timestamps())
    endpoint, datagram = send_one(pair, seeded, (IPV6_HEADER, 16))
    assert endpoint == pair.eb
    packet = pair.b.receive_data(datagram, pair.ea, pair.net.now)
    assert isinstance(packet, PartialChecksum)
    assert packet == seeded
    assert offload.complete(packet) == bytes(with_checksum(tcp.packet(), IPV6_HEADER, 16, TCP))
    udp = udp_packet(payload_of(500, 1), pair.a.address, pair.b.address)
    _, datagram = send_one(pair, with_seed(udp, 6, UDP), (IPV6_HEADER, 6))
    packet = pair.b.receive_data(datagram, pair.ea, pair.net.now)
    assert isinstance(packet, PartialChecksum)
    assert offload.complete(packet) == bytes(with_checksum(udp, IPV6_HEADER, 6, UDP))


def test_a_staged_partial_checksum_is_completed_for_a_peer_without_the_feature() -> None:
    pair = make_pair(mute_b=True)
    assert pair.session(pair.a).peer_features == 0
    tcp, seeded = partial_tcp(pair)
    _, datagram = send_one(pair, seeded, (IPV6_HEADER, 16))
    packet = pair.b.receive_data(datagram, pair.ea, pair.net.now)
    assert type(packet) is bytes
    assert packet == bytes(with_checksum(tcp.packet(), IPV6_HEADER, 16, TCP))


def test_a_staged_checksum_not_where_partial_frames_put_it_is_completed() -> None:
    pair = make_pair()
    tcp = tso(pair, 2000, extension=destination_options())
    packet = tcp.packet()
    l4 = tcp.l4_start
    seed = offload.pseudo_header_sum(pair.a.address, pair.b.address, len(packet) - l4, TCP) % 0xFFFF or 0xFFFF
    packet[l4 + 16 : l4 + 18] = seed.to_bytes(2, "big")
    _, datagram = send_one(pair, packet, (l4, 16))
    delivered = pair.b.receive_data(datagram, pair.ea, pair.net.now)
    assert type(delivered) is bytes
    assert delivered == bytes(with_checksum(tcp.packet(), l4, 16, TCP))


def test_a_packet_staged_before_a_session_is_queued_completed() -> None:
    pair = make_pair(connect=False)
    tcp, seeded = partial_tcp(pair)
    pair.net.introduce(pair.ea, pair.eb)
    batch = SendBatch(pair.a, READ_SIZE, 8)
    assert not stage(batch, seeded, pair.net.now, (IPV6_HEADER, 16))
    assert len(batch) == 0
    assert batch.seal() == []
    pair.advance(0.5)
    assert pair.net.delivered[pair.eb] == [bytes(with_checksum(tcp.packet(), IPV6_HEADER, 16, TCP))]


def test_a_checksum_outside_the_packet_is_refused_and_the_batch_goes_on() -> None:
    pair = make_pair(mute_b=True)
    _, seeded = partial_tcp(pair, 10)
    batch = SendBatch(pair.a, READ_SIZE, 8)
    with pytest.raises(ProtocolError):
        stage(batch, seeded, pair.net.now, (IPV6_HEADER, len(seeded)))
    assert len(batch) == 0
    whole = with_checksum(tso(pair, 100).packet(), IPV6_HEADER, 16, TCP)
    assert stage(batch, whole, pair.net.now)
    [(_, datagram)] = batch.seal()
    assert pair.b.receive_data(bytes(datagram), pair.ea, pair.net.now) == bytes(whole)


def icmp_echo(src: bytes, dst: bytes, size: int) -> bytearray:
    body = bytes([128, 0, 0, 0]) + payload_of(size, size)
    header = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2, "big") + bytes([ICMPV6, 64])
    return bytearray(header + src + dst + body)


@pytest.mark.parametrize("features", [True, False])
def test_a_batch_of_mixed_packets_arrives_in_order_each_as_sent(features: bool) -> None:
    """TCP with partial checksums, UDP, ICMPv6, of many sizes, and one packet from another source address
    (sent whole, not compressed, and refused by the receiver as not its peer's): sealed together, each in its
    own datagram with its own nonce and the next counter, and each opened by the peer into the very packet
    that was read (partial checksums completed where the peer lacks the feature)."""
    pair = make_pair(mute_b=not features)
    other_source = bytes.fromhex("fc94" + "ab" * 14)
    packets: list[tuple[bytearray, tuple[int, int] | None]] = []
    for number, size in enumerate([0, 1, 100, 1250, 1302, 9000]):
        tcp = tso(pair, size, seq=number)
        packets.append((bytearray(with_seed(tcp.packet(), 16, TCP)), (IPV6_HEADER, 16)))
        udp = udp_packet(payload_of(size, number), pair.a.address, pair.b.address)
        packets.append((with_checksum(udp, IPV6_HEADER, 6, UDP), None))
        packets.append((icmp_echo(pair.a.address, pair.b.address, size), None))
    packets.append((udp_packet(payload_of(300, 7), other_source, pair.b.address), None))
    batch = SendBatch(pair.a, READ_SIZE, len(packets))
    counter = pair.session(pair.a).sent_messages
    for packet, csum in packets:
        assert stage(batch, packet, pair.net.now, csum)
    datagrams = batch.seal()
    assert len(batch) == 0
    assert [endpoint for endpoint, _ in datagrams] == [pair.eb] * len(packets)
    numbers = [wire.DATA_HEADER.unpack_from(d)[2] for _, d in datagrams]
    assert numbers == list(range(counter, counter + len(packets)))
    nonces = {bytes(d[wire.DATA_AD_SIZE : wire.DATA_HEADER_SIZE]) for _, d in datagrams}
    assert len(nonces) == len(packets)
    inner_kinds = []
    for (packet, csum), (_, datagram) in zip(packets, datagrams, strict=True):
        sealed = bytes(datagram)
        delivered = pair.b.receive_data(sealed, pair.ea, pair.net.now)
        if packet[8:24] == other_source:
            assert delivered is None
            continue
        assert delivered is not None
        expected = with_checksum(packet, IPV6_HEADER, 16, TCP) if csum else packet
        assert offload.complete(delivered) == bytes(expected)
        assert isinstance(delivered, PartialChecksum) == (csum is not None and features)
        inner_kinds.append(len(sealed) - wire.DATA_HEADER_SIZE - wire.TAG_SIZE - len(packet))
    assert set(inner_kinds) == {1 - 32}  # compressed: the type byte in, the two addresses out
    assert pair.b.rx_counters["drop_spoofed"] == 1


def test_a_batch_is_full_at_its_packet_count_or_when_no_largest_read_fits() -> None:
    pair = make_pair()
    small = with_checksum(udp_packet(b"x" * 100, pair.a.address, pair.b.address), IPV6_HEADER, 6, UDP)
    batch = SendBatch(pair.a, READ_SIZE, 3)
    for _ in range(3):
        assert not batch.full()
        assert stage(batch, small, pair.net.now)
    assert batch.full()
    assert len(batch.seal()) == 3
    assert not batch.full()
    big = with_checksum(udp_packet(b"y" * 60_000, pair.a.address, pair.b.address), IPV6_HEADER, 6, UDP)
    batch = SendBatch(pair.a, READ_SIZE, 64, typical_packet=2048)  # 128 KB beyond the room for one read
    staged = 0
    while not batch.full():
        assert stage(batch, big, pair.net.now)
        staged += 1
        assert staged < 64
    assert staged == 3
    for _, datagram in batch.seal():
        assert pair.b.receive_data(bytes(datagram), pair.ea, pair.net.now) == bytes(big)
