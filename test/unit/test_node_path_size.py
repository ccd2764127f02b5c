"""Path-sized TCP segments: a node asks the kernel (``Node.underlay_limit``) how large a datagram the route's
interface takes, sends a padded size probe that large, and only once its pong is back cuts TSO packets for
that peer into segments that fill such datagrams (``Route.datagram_limit``). Between two in-memory nodes; the
``Link`` tamper hook plays a path with an MTU of its own, silently dropping larger datagrams as a middlebox
with a smaller MTU would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fixed_identities import fixed_identity
from test_node_offload import Collect, receive, split, tso
from test_offload import Recorder, check_joined, timestamps

from husarnet_ros.core import offload, wire
from husarnet_ros.core.constants import (
    FEATURES_ATTEMPTS,
    FEATURES_RETRY_INTERVAL,
    LATENCY_PROBE_INTERVAL,
    MAX_PATH_DATAGRAM,
    MIN_SIZE_PROBE,
    PROBE_TIMEOUT,
    SIZE_PROBE_INTERVAL,
)
from husarnet_ros.core.events import DatagramSizeFound
from husarnet_ros.core.node import Node
from husarnet_ros.core.offload import IPV6_HEADER, Coalescer
from husarnet_ros.core.peer import Endpoint, PathKind, Route
from husarnet_ros.testing.memnet import MemNet, NodePair

FEATURES_DATAGRAM = wire.DATA_HEADER_SIZE + wire.FEATURES_FRAME_SIZE + wire.TAG_SIZE
PING_DATAGRAM = wire.DATA_HEADER_SIZE + 1 + wire.PROBE_ID_SIZE + wire.TAG_SIZE
SIZE_PROBE_MIN = wire.DATA_HEADER_SIZE + 1 + wire.PROBE_ID_SIZE + wire.TAG_SIZE
MSS = 1278  # what the kernel's TSO packets carry per segment at the default overlay MTU (1350)


def path_segment(limit: int, tcp_header: int) -> int:
    """The segment size for datagrams of ``limit`` bytes: as many whole MSS as fit."""
    return (limit - wire.SEGMENT_OVERHEAD - tcp_header) // MSS * MSS


@dataclass
class Link:
    """The path between the nodes: datagrams above ``mtu`` vanish (per sender), features frames from
    ``mute`` too; every size probe seen is recorded (sender, size)."""

    mtu: dict[Endpoint, int] = field(default_factory=dict)
    mute_features: set[Endpoint] = field(default_factory=set)
    size_probes: list[tuple[Endpoint, int]] = field(default_factory=list)

    def __call__(self, src: Endpoint, dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_DATA and len(data) > 1400:
            self.size_probes.append((src, len(data)))
        if data[0] == wire.MSG_DATA and len(data) == FEATURES_DATAGRAM and src in self.mute_features:
            return []
        if len(data) > self.mtu.get(src, 1 << 20):
            return []
        return [data]


@dataclass
class Pair(NodePair):
    link: Link
    limits: dict[Endpoint, int]  # what each node's kernel says about the route's interface (by endpoint)

    def advance(self, seconds: float) -> None:
        self.net.advance(seconds, tamper=self.link)

    def route(self, node: Node) -> Route:
        route = self.peer_of(node).route
        assert route is not None
        return route


def make_pair(limit_a: int, limit_b: int, link: Link | None = None) -> Pair:
    net = MemNet()
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    limits = {ea: limit_a, eb: limit_b}
    # Each node's kernel answers for the route to the other; the probe to endpoint X uses X's sender's limit.
    a.underlay_limit = lambda endpoint: limits[ea] if endpoint == eb else 0
    b.underlay_limit = lambda endpoint: limits[eb] if endpoint == ea else 0
    pair = Pair(net, a, ea, b, eb, link or Link(), limits)
    net.introduce(ea, eb)
    pair.advance(1.0)
    assert a.path_of(b.address) is PathKind.DIRECT
    assert b.path_of(a.address) is PathKind.DIRECT
    return pair


def segments_sent(pair: Pair, size: int = 60_000) -> tuple[list[bytes], int]:
    """a's datagrams for one TSO packet (kernel MSS 1278) to b, and the segment size of the batch."""
    batch = pair.a.send_large(memoryview(tso(pair, size).packet()), IPV6_HEADER, MSS, pair.net.now)
    assert batch is not None
    return split(batch[1], batch[2]), batch[2]


def test_a_path_shown_to_carry_jumbo_datagrams_gets_segments_that_fill_them() -> None:
    pair = make_pair(9052, 9052)
    assert pair.route(pair.a).datagram_limit == 9052
    assert pair.route(pair.b).datagram_limit == 9052
    assert sorted(pair.link.size_probes) == [(pair.ea, 9052), (pair.eb, 9052)]
    found = [e for e in pair.a.events if isinstance(e, DatagramSizeFound)]
    assert found == [DatagramSizeFound(pair.b.address, pair.eb, 9052)]

    tcp = tso(pair, 60_000, options=timestamps())
    batch = pair.a.send_large(memoryview(tcp.packet()), IPV6_HEADER, MSS, pair.net.now)
    assert batch is not None
    datagrams = split(batch[1], batch[2])
    # 60,000 bytes in segments of 7 MSS (9052 - 65 - 32 for the TCP header with timestamps holds 7 x 1278):
    # 7 datagrams instead of 47
    segment = path_segment(9052, 32)
    assert segment == 7 * MSS
    assert batch[2] == segment + wire.SEGMENT_OVERHEAD + 32
    assert len(datagrams) == 7
    assert all(len(d) == batch[2] for d in datagrams[:-1])
    assert pair.a.tx_counters["tso_path_sized"] == 1
    # every segment still sealed on its own: consecutive counters, one nonce each
    counters = [wire.decode_data_header(d)[1] for d in datagrams]
    assert counters == list(range(counters[0], counters[0] + 7))
    assert len({d[16:40] for d in datagrams}) == 7

    recorder = Recorder()
    receive(pair, batch, Coalescer(recorder))
    (written,) = recorder.writes
    check_joined(written)
    assert written.vnet.gso_size == segment
    finished = bytearray(written.packet)
    offload.finish_checksum(finished, IPV6_HEADER, 16)
    assert finished == offload.tcp_segments(tcp.packet(), IPV6_HEADER, 0xFFFF)[0]


def test_path_sized_segments_arrive_one_by_one_as_the_tso_packet_cut_at_that_size() -> None:
    pair = make_pair(4000, 4000)
    tcp = tso(pair, 20_000, flags=offload.TCP_ACK | offload.TCP_PSH)
    sink = Collect()
    batch = pair.a.send_large(memoryview(tcp.packet()), IPV6_HEADER, MSS, pair.net.now)
    assert batch is not None
    receive(pair, batch, sink)
    expected = offload.tcp_segments(tcp.packet(), IPV6_HEADER, path_segment(4000, 20))
    assert sink.completed() == [bytes(s) for s in expected]
    assert len(expected) == 6


def test_a_lost_path_sized_datagram_costs_only_its_own_segment() -> None:
    pair = make_pair(9052, 9052)
    tcp = tso(pair, 50_000)
    batch = pair.a.send_large(memoryview(tcp.packet()), IPV6_HEADER, MSS, pair.net.now)
    assert batch is not None
    endpoint, datagrams, size = batch
    kept = bytes(datagrams[: 2 * size]) + bytes(datagrams[3 * size :])  # the third datagram is lost
    sink = Collect()
    receive(pair, (endpoint, memoryview(kept), size), sink)
    segment = path_segment(9052, 20)
    full = [bytes(s) for s in offload.tcp_segments(tcp.packet(), IPV6_HEADER, segment)]
    assert sink.completed() == full[:2] + full[3:]


def make_pair_with_dropping_link(link: Link) -> Pair:
    """a's interface takes 9000-byte frames, b's 4000; the path drops a's datagrams above 4000 silently."""
    net = MemNet()
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    link.mtu = {ea: 4000}
    a.underlay_limit = lambda endpoint: 9052
    b.underlay_limit = lambda endpoint: 3952
    pair = Pair(net, a, ea, b, eb, link, {ea: 9052, eb: 3952})
    net.introduce(ea, eb)
    pair.advance(1.0)
    return pair


def test_a_smaller_mtu_further_on_keeps_the_overlay_segment_size_and_probes_again_later() -> None:
    """Something between drops what is larger than 4000 bytes and says nothing: a's probe never comes back,
    so a never sends what the path cannot carry; b's smaller probe passes."""
    link = Link()
    pair = make_pair_with_dropping_link(link)
    assert pair.route(pair.a).datagram_limit == 0
    assert pair.route(pair.b).datagram_limit == 3952
    datagrams, size = segments_sent(pair)
    assert size < 1400
    assert len(datagrams) == 47
    assert [p for p in link.size_probes if p[0] == pair.ea] == [(pair.ea, 9052)]
    pair.advance(SIZE_PROBE_INTERVAL)
    assert [p for p in link.size_probes if p[0] == pair.ea] == [(pair.ea, 9052)] * 2
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT
    assert pair.route(pair.a).datagram_limit == 0


def _small_frames_from_a(lost: bool) -> int:
    """How many ping-sized frames a sends in SIZE_PROBE_INTERVAL after a size probe sent between two latency
    rounds (so that nothing else answers right after it), which the link loses or not."""
    link = Link()
    pair = make_pair_with_dropping_link(link)
    if not lost:
        link.mtu.clear()
    logged = len(pair.net.log)
    pair.peer_of(pair.a).next_size_probe_at = pair.net.now + LATENCY_PROBE_INTERVAL / 2
    pair.advance(SIZE_PROBE_INTERVAL)
    assert (pair.route(pair.a).datagram_limit == 0) is lost
    return sum(1 for src, _, d in pair.net.log[logged:] if src == pair.ea and len(d) == PING_DATAGRAM)


def test_an_unanswered_size_probe_is_not_an_unanswered_path() -> None:
    """Its silence says the path does not carry that size, not that the path is gone: no liveness pings
    follow it (a sends exactly the small frames it sends when the probe is answered), and the path stays."""
    assert _small_frames_from_a(lost=True) == _small_frames_from_a(lost=False)


def test_no_size_probe_to_a_peer_without_the_feature() -> None:
    """b never answers features frames (an older peer): a learns nothing of it and sends no size probe."""
    link = Link()
    net = MemNet()
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    link.mute_features = {eb}
    a.underlay_limit = b.underlay_limit = lambda endpoint: 9052
    pair = Pair(net, a, ea, b, eb, link, {})
    net.introduce(ea, eb)
    pair.advance(FEATURES_RETRY_INTERVAL * FEATURES_ATTEMPTS * 2 + SIZE_PROBE_INTERVAL)
    assert [p for p in link.size_probes if p[0] == ea] == []
    assert pair.route(a).datagram_limit == 0
    assert pair.route(b).datagram_limit == 9052  # a does answer: b may send large segments to a


def test_a_probe_is_not_worth_it_below_the_ipv6_minimum_and_never_above_the_cap() -> None:
    pair = make_pair(MIN_SIZE_PROBE - 1, 65_000)  # a 1500-byte interface gains nothing from a larger segment
    assert pair.route(pair.a).datagram_limit == 0
    assert pair.route(pair.b).datagram_limit == MAX_PATH_DATAGRAM
    assert [size for src, size in pair.link.size_probes if src == pair.ea] == []


def test_another_endpoint_starts_over_and_a_rekey_keeps_what_was_shown() -> None:
    pair = make_pair(9052, 9052)
    a_peer = pair.a.peer(pair.b.address)
    assert a_peer is not None
    session = pair.route(pair.a).session
    # a rekey: a new session on the same endpoint keeps the limit
    pair.advance(125.0)
    assert pair.route(pair.a).session is not session
    assert pair.route(pair.a).datagram_limit == 9052
    probes = len(pair.link.size_probes)
    # b moves (a new endpoint, as after a roam): a starts from the overlay's segment size and probes it
    new_eb: Endpoint = ("198.18.0.99", pair.eb[1])
    pair.net.nodes[new_eb] = pair.net.nodes.pop(pair.eb)
    pair.net.delivered[new_eb] = []
    pair.limits[pair.ea] = 9052
    pair.a.underlay_limit = lambda endpoint: 9052
    pair.b.underlay_limit = lambda endpoint: 9052
    pair.eb = new_eb
    pair.advance(6.0)
    assert pair.route(pair.a).endpoint == new_eb
    assert pair.route(pair.b).endpoint == pair.ea
    assert pair.route(pair.a).datagram_limit == 9052
    assert (pair.ea, 9052) in pair.link.size_probes[probes:]


def test_an_interface_that_shrinks_lowers_the_limit_at_the_next_check() -> None:
    pair = make_pair(9052, 9052)
    pair.limits[pair.ea] = 4000
    _, size = segments_sent(pair)
    assert size > 4000  # not yet asked again
    pair.advance(SIZE_PROBE_INTERVAL + 0.5)
    assert pair.route(pair.a).datagram_limit == 4000
    assert (pair.ea, 4000) in pair.link.size_probes


def test_a_size_probe_of_any_length_is_answered_and_a_truncated_one_is_dropped() -> None:
    pair = make_pair(0, 0)
    b_session = pair.route(pair.b).session
    a_peer = pair.a.peer(pair.b.address)
    assert a_peer is not None
    before = pair.b.rx_counters["drop_malformed"]
    # one without its id: malformed, no answer
    a_session = pair.route(pair.a).session
    pair.net.deliver(pair.ea, pair.eb, a_session.seal(bytes([wire.INNER_SIZE_PROBE]) + b"1234"))
    assert pair.b.rx_counters["drop_malformed"] == before + 1
    assert not pair.b.replies
    # the bare id and no padding at all: answered with a pong echoing the id
    probe_id = b"ABCDEFGH"
    pair.net.deliver(pair.ea, pair.eb, a_session.seal(bytes([wire.INNER_SIZE_PROBE]) + probe_id))
    (reply,) = pair.b.replies
    assert reply[0] == pair.ea
    assert pair.route(pair.a).session.open_(reply[1]) == bytes([wire.INNER_PONG]) + probe_id
    assert len(reply[1]) < SIZE_PROBE_MIN + 1
    assert b_session is pair.route(pair.b).session


def test_a_path_that_stops_carrying_the_size_in_use_goes_back_to_one_mss_within_one_check() -> None:
    """After the size was shown, something between starts dropping what is larger than 4000 bytes and tells
    no one (the kernel's bound stays 9052): small frames pass, so only the next size probe's silence shows
    it. Until then large segments are lost; after it, TCP goes in one-MSS segments again."""
    pair = make_pair(9052, 9052)
    assert pair.route(pair.a).datagram_limit == 9052
    pair.link.mtu[pair.ea] = 4000
    pair.advance(SIZE_PROBE_INTERVAL + PROBE_TIMEOUT + 1.0)
    assert pair.route(pair.a).datagram_limit == 0
    assert DatagramSizeFound(pair.b.address, pair.eb, 0) in pair.a.events
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT  # the path itself never stopped working
    _, size = segments_sent(pair)
    assert size < 1400
    # b's way to a still carries its size: its probes keep being answered
    assert pair.route(pair.b).datagram_limit == 9052
    # the link heals: the next check shows the size again
    pair.link.mtu.clear()
    pair.advance(SIZE_PROBE_INTERVAL)
    assert pair.route(pair.a).datagram_limit == 9052
