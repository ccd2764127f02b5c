"""The node engine through the in-memory network: sessions, whitelist, rekey, expiry, loss, RTT, roaming."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest
from fixed_identities import fixed_identity

from husarnet_ros.core import node as node_module
from husarnet_ros.core import wire
from husarnet_ros.core.beacon import Beacon
from husarnet_ros.core.constants import (
    HANDSHAKE_RETRY_INTERVAL,
    HANDSHAKE_TIMEOUT,
    LATENCY_PROBE_INTERVAL,
    PATH_DEAD_AFTER,
    PATH_PROBE_INTERVAL,
    PREVIOUS_SESSION_GRACE,
    PROBE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    SESSION_IDLE_TIMEOUT,
)
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.node import Node, PathLost, PeerDown, PeerUp, PongReceived
from husarnet_ros.core.peer import Endpoint, PathKind
from husarnet_ros.testing.memnet import MemNet, NodePair, ipv6_packet


class Pair(NodePair):
    def initiator_first(self) -> tuple[Node, Endpoint, Node, Endpoint]:
        """(initiator, its endpoint, responder, its endpoint) of the newest session."""
        peer = self.a.peer(self.b.address)
        if peer is not None and peer.current is not None and peer.current.is_initiator:
            return self.a, self.ea, self.b, self.eb
        return self.b, self.eb, self.a, self.ea

    def packet(self, src: Node, payload: bytes) -> bytes:
        dst = self.b if src is self.a else self.a
        return ipv6_packet(src.address, dst.address, payload)


def make_pair(labels: tuple[str, str] = ("node a", "node b"), whitelist_all: bool = True) -> Pair:
    net = MemNet()
    a, ea = net.add(fixed_identity(labels[0]), whitelist_all=whitelist_all)
    b, eb = net.add(fixed_identity(labels[1]), whitelist_all=whitelist_all)
    return Pair(net, a, ea, b, eb)


def established(labels: tuple[str, str] = ("node a", "node b")) -> Pair:
    pair = make_pair(labels)
    pair.net.introduce(pair.ea, pair.eb)
    pair.net.advance(0.5)
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT
    assert pair.b.path_of(pair.a.address) is PathKind.DIRECT
    return pair


def kinds(log: list[tuple[Endpoint, Endpoint, bytes]], src: Endpoint, kind: int) -> list[bytes]:
    return [data for s, _, data in log if s == src and data and data[0] == kind]


@dataclass
class DelayLine:
    """Every datagram arrives ``delay`` seconds after it was sent (time moves in ``step`` increments)."""

    net: MemNet
    delay: float
    queue: list[tuple[float, Endpoint, Endpoint, bytes]] = field(default_factory=list)

    def tamper(self, src: Endpoint, dst: Endpoint, data: bytes) -> list[bytes]:
        self.queue.append((self.net.now + self.delay, src, dst, data))
        return []

    def advance(self, seconds: float, step: float = 0.005) -> None:
        end = self.net.now + seconds
        for _ in range(int(seconds / step) + 2):
            if self.net.now >= end:
                return
            self.net.now = min(end, self.net.now + step)
            for node in self.net.nodes.values():
                node.tick(self.net.now)
            self.net.flush(self.tamper)
            due = [item for item in self.queue if item[0] <= self.net.now + 1e-9]
            self.queue = [item for item in self.queue if item[0] > self.net.now + 1e-9]
            for _, src, dst, data in due:
                self.net.deliver(src, dst, data)
            self.net.flush(self.tamper)


# --------------------------------------------------------------------------- basic
def test_two_nodes_reach_direct_and_deliver_both_ways() -> None:
    pair = established()
    a, b, net = pair.a, pair.b, pair.net
    assert any(isinstance(e, PeerUp) and e.address == b.address and e.endpoint == pair.eb for e in a.events)
    assert any(isinstance(e, PeerUp) and e.address == a.address and e.endpoint == pair.ea for e in b.events)
    to_b, to_a = pair.packet(a, b"ping from a" * 10), pair.packet(b, b"answer from b")
    net.send(pair.ea, to_b)
    net.send(pair.eb, to_a)
    assert net.delivered[pair.eb] == [to_b]
    assert net.delivered[pair.ea] == [to_a]
    peer_b = a.peer(b.address)
    assert peer_b is not None
    assert (peer_b.tx_bytes, peer_b.rx_bytes) == (len(to_b), len(to_a))
    assert peer_b.endpoint == pair.eb


def test_compressed_and_uncompressed_inner_packets_are_restored_exactly() -> None:
    pair = established()
    packet = pair.packet(pair.a, b"x" * 100)
    pair.net.send(pair.ea, packet)
    assert pair.net.delivered[pair.eb] == [packet]
    frame = kinds(pair.net.log, pair.ea, wire.MSG_DATA)[-1]
    # the 32 address bytes are implied by the session: type byte + 8 header bytes + payload
    assert len(frame) == wire.DATA_HEADER_SIZE + 1 + len(packet) - 32 + wire.TAG_SIZE
    # an uncompressed (type 0x00) frame with the right source is delivered as is
    whole = pair.packet(pair.b, b"whole")
    assert pair.a.receive_data(pair.session(pair.b).seal(b"\x00" + whole), pair.eb, pair.net.now) == whole


@pytest.mark.parametrize("labels", [("node a", "node b"), ("node b", "node a")])
def test_packets_queued_before_the_handshake_are_delivered_after_it(labels: tuple[str, str]) -> None:
    """Whichever side ends up initiating, the packets that triggered the handshake arrive."""
    pair = make_pair(labels)
    pair.net.introduce(pair.ea, pair.eb)
    first, second = pair.packet(pair.a, b"1"), pair.packet(pair.a, b"2")
    assert pair.a.send(first, pair.net.now) is None
    assert pair.a.send(second, pair.net.now) is None
    pair.net.advance(0.5)
    assert pair.net.delivered[pair.eb] == [first, second]


def test_queued_packets_arrive_when_the_responder_reads_ahead_of_its_control_loop() -> None:
    """In the daemon a node's receive thread opens data frames at once but hands handshake messages to the
    control loop, so a frame right behind the confirm is opened before the session it needs exists. The
    packets that started the handshake still arrive: they are not sealed before the responder has the keys."""
    pair = make_pair()
    net, a, b = pair.net, pair.a, pair.b
    a.add_static_endpoint(b.address, pair.eb, net.now)  # only a knows where b is: a initiates
    packets = [pair.packet(a, b"first"), pair.packet(a, b"second")]
    for packet in packets:
        assert a.send(packet, net.now) is None  # no session yet: queued
    inbox: dict[Endpoint, list[tuple[Endpoint, bytes]]] = {pair.ea: [], pair.eb: []}
    arrived = []
    for _ in range(10):
        net.now += 0.01
        for node, here, there in ((a, pair.ea, pair.eb), (b, pair.eb, pair.ea)):
            for source, data in inbox[here]:  # the receive thread reads everything that came in ...
                opened = node.receive(data, source, net.now)
                if opened is not None:
                    arrived.append(opened)
            inbox[here] = []
            node.process_posted(net.now)  # ... and only then does the control loop run
            node.tick(net.now)
            for queue in (node.replies, node.outbox):
                while queue:
                    _, data = queue.popleft()
                    inbox[there].append((here, data))
    assert arrived == packets
    assert b.counters["drop_unknown_session"] == 0


def test_non_ipv6_and_unknown_destinations_are_counted() -> None:
    pair = established()
    assert pair.a.send(b"\x45" + bytes(59), pair.net.now) is None
    assert pair.a.send(bytes(10), pair.net.now) is None
    assert pair.a.counters["drop_not_ipv6"] == 2
    stranger = fixed_identity("stranger").address
    assert pair.a.send(ipv6_packet(pair.a.address, stranger, b"x"), pair.net.now) is None
    assert pair.a.counters["drop_no_peer"] == 1


# --------------------------------------------------------------------------- whitelist
def test_whitelist_refuses_sessions_and_packets_in_both_directions_until_enabled() -> None:
    pair = make_pair(whitelist_all=False)
    net, a, b = pair.net, pair.a, pair.b
    net.allowed[pair.ea].add(b.address)  # a allows b, b does not allow a
    net.introduce(pair.ea, pair.eb)
    net.advance(20)
    assert b.peer(a.address) is None  # not allowed: b keeps nothing about a (even its static endpoint)
    assert not b._sessions
    assert not b._responders
    assert a.path_of(b.address) is PathKind.NONE
    assert b.counters["drop_whitelist"] >= 1  # a's inits
    # b -> a: dropped and counted at b (b knows no such peer)
    before = b.counters["drop_no_peer"]
    assert b.send(pair.packet(b, b"out"), net.now) is None
    assert b.counters["drop_no_peer"] == before + 1
    # a -> b: queued at a, never delivered
    net.send(pair.ea, pair.packet(a, b"in"))
    net.advance(5)
    assert net.delivered[pair.eb] == []
    assert net.delivered[pair.ea] == []
    # enabling it later works without a restart: the allowed set is live
    net.allowed[pair.eb].add(a.address)
    net.advance(10)
    assert a.path_of(b.address) is PathKind.DIRECT
    assert b.path_of(a.address) is PathKind.DIRECT
    net.send(pair.eb, pair.packet(b, b"now it passes"))
    assert net.delivered[pair.ea] == [pair.packet(b, b"now it passes")]


def test_whitelist_removal_drops_the_live_session_and_its_packets() -> None:
    pair = make_pair(whitelist_all=False)
    net, a, b = pair.net, pair.a, pair.b
    net.allowed[pair.ea].add(b.address)
    net.allowed[pair.eb].add(a.address)
    net.introduce(pair.ea, pair.eb)
    net.advance(1)
    assert b.path_of(a.address) is PathKind.DIRECT
    net.allowed[pair.eb].discard(a.address)
    # before b's next tick: a's packets are already refused by b's data path
    net.send(pair.ea, pair.packet(a, b"late"))
    assert net.delivered[pair.eb] == []
    assert b.counters["drop_whitelist"] == 1
    net.advance(0.2)
    assert b.path_of(a.address) is PathKind.NONE
    assert PeerDown(a.address, "not whitelisted") in b.events
    assert b.send(pair.packet(b, b"out"), net.now) is None


def test_beacon_of_a_non_whitelisted_peer_is_ignored() -> None:
    from husarnet_ros.core import beacon

    pair = make_pair(whitelist_all=False)
    other = fixed_identity("node b")
    decoded = beacon.decode(beacon.encode(other, "b", 5582, 1))
    pair.a.learn_beacon(decoded, ("198.18.0.99", 5582), pair.net.now)
    assert pair.a.peer(other.address) is None
    assert pair.a.counters["drop_beacon_not_whitelisted"] == 1
    pair.net.allowed[pair.ea].add(other.address)
    pair.a.learn_beacon(decoded, ("198.18.0.99", 5582), pair.net.now)
    peer = pair.a.peer(other.address)
    assert peer is not None
    assert peer.hostname == "b"
    assert ("198.18.0.99", 5582) in peer.candidates


def beacon_of(identity: Identity, endpoint: Endpoint) -> Beacon:
    from husarnet_ros.core import beacon

    return beacon.decode(beacon.encode(identity, "peer", endpoint[1], 1))


def test_whitelisting_a_peer_heard_before_starts_the_handshake_at_once() -> None:
    pair = make_pair(whitelist_all=False)
    b = pair.b
    decoded = beacon_of(b.identity, pair.eb)
    pair.a.learn_beacon(decoded, pair.eb, pair.net.now)
    assert pair.a.peer(b.address) is None
    pair.net.allowed[pair.ea].add(b.address)
    pair.a.whitelist_changed(pair.net.now)
    peer = pair.a.peer(b.address)
    assert peer is not None
    assert pair.eb in peer.candidates
    pair.a.tick(pair.net.now)
    inits = [d for e, d in pair.a.outbox if e == pair.eb and d[0] == wire.MSG_HANDSHAKE_INIT]
    assert len(inits) == 1


def test_heard_beacons_are_bounded_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    from husarnet_ros.core.constants import BEACON_CANDIDATE_TTL

    MAX_HEARD_BEACONS = 3
    monkeypatch.setattr(node_module, "MAX_HEARD_BEACONS", MAX_HEARD_BEACONS)
    pair = make_pair(whitelist_all=False)
    first = fixed_identity("heard 0")
    pair.a.learn_beacon(beacon_of(first, ("198.18.0.50", 5582)), ("198.18.0.50", 5582), pair.net.now)
    for i in range(1, MAX_HEARD_BEACONS + 1):
        ident = fixed_identity(f"heard {i}")
        pair.a.learn_beacon(beacon_of(ident, ("198.18.0.50", 5582)), ("198.18.0.50", 5582), pair.net.now)
    assert len(pair.a._heard) == MAX_HEARD_BEACONS
    pair.net.allowed[pair.ea].add(first.address)  # the oldest was pushed out: nothing to start
    pair.a.whitelist_changed(pair.net.now)
    assert pair.a.peer(first.address) is None
    late = fixed_identity(f"heard {MAX_HEARD_BEACONS}")
    pair.net.allowed[pair.ea].add(late.address)  # heard, but too long ago
    pair.a.whitelist_changed(pair.net.now + BEACON_CANDIDATE_TTL + 1)
    assert pair.a.peer(late.address) is None


# --------------------------------------------------------------------------- simultaneous open
def test_crossing_init_from_a_new_endpoint_redirects_the_lower_sides_initiation() -> None:
    pair = make_pair()
    a_is_lower = pair.a.address < pair.b.address
    low, low_ep, high = (pair.a, pair.ea, pair.b) if a_is_lower else (pair.b, pair.eb, pair.a)
    stale = ("198.18.0.99", 5582)  # where the higher peer used to be: nothing answers there any more
    low.add_static_endpoint(high.address, stale, pair.net.now)
    high.add_static_endpoint(low.address, low_ep, pair.net.now)
    pair.net.advance(0.5)
    assert low.path_of(high.address) is PathKind.DIRECT
    assert high.path_of(low.address) is PathKind.DIRECT
    assert low.counters["drop_simultaneous_open"] >= 1  # the case under test did happen


@pytest.mark.parametrize(
    "labels", [("node a", "node b"), ("node b", "node a"), ("sim 1", "sim 2"), ("sim 3", "sim 4")]
)
def test_simultaneous_open_converges_to_one_session_per_side(labels: tuple[str, str]) -> None:
    pair = make_pair(labels)
    pair.net.introduce(pair.ea, pair.eb)
    pair.net.advance(0.1)  # both tick, both initiate, the inits cross
    a_inits = kinds(pair.net.log, pair.ea, wire.MSG_HANDSHAKE_INIT)
    b_inits = kinds(pair.net.log, pair.eb, wire.MSG_HANDSHAKE_INIT)
    assert len(a_inits) == len(b_inits) == 1
    pair.net.advance(30)
    sa, sb = pair.session(pair.a), pair.session(pair.b)
    assert (sa.local_index, sa.remote_index) == (sb.remote_index, sb.local_index)
    assert len(pair.a._sessions) == len(pair.b._sessions) == 1
    lower = pair.a if pair.a.address < pair.b.address else pair.b
    assert pair.session(lower).is_initiator  # the lower address keeps its initiation
    assert lower.counters["drop_simultaneous_open"] == 1
    assert not pair.a._initiations
    assert not pair.b._initiations


# --------------------------------------------------------------------------- rekey
def test_rekey_at_rekey_after_time() -> None:
    pair = established()
    initiator, _, responder, _ = pair.initiator_first()
    old = pair.session(initiator)
    pair.net.advance(old.created_at + REKEY_AFTER_TIME - 0.05 - pair.net.now)
    assert pair.session(initiator) is old
    pair.net.advance(0.2)
    new = pair.session(initiator)
    assert new is not old
    assert new.is_initiator
    assert pair.session(responder).remote_index == new.local_index
    peer = initiator.peer(responder.address)
    assert peer is not None
    assert peer.previous is old
    assert not any(isinstance(e, PeerDown) for e in (*initiator.events, *responder.events))


def test_frames_in_flight_on_the_previous_session_are_accepted_within_the_grace_only() -> None:
    pair = established()
    initiator, ei, responder, er = pair.initiator_first()
    old = pair.session(initiator)
    in_flight = []
    pair.net.advance(old.created_at + REKEY_AFTER_TIME - 1 - pair.net.now)
    for payload in (b"early", b"late", b"too late"):
        out = responder.send(pair.packet(responder, payload), pair.net.now)
        assert out is not None
        in_flight.append(out[1])
    pair.net.advance(1.2)
    new = pair.session(initiator)
    assert new is not old
    installed = new.created_at
    pair.net.deliver(er, ei, in_flight[0])
    assert pair.net.delivered[ei] == [pair.packet(responder, b"early")]
    pair.net.advance(installed + PREVIOUS_SESSION_GRACE - 0.2 - pair.net.now)
    pair.net.deliver(er, ei, in_flight[1])
    assert pair.net.delivered[ei][-1] == pair.packet(responder, b"late")
    pair.net.advance(0.4)
    before = initiator.counters["drop_unknown_session"]
    pair.net.deliver(er, ei, in_flight[2])
    assert len(pair.net.delivered[ei]) == 2
    assert initiator.counters["drop_unknown_session"] == before + 1


def test_rekey_after_messages() -> None:
    pair = established()
    initiator, ei, _, _ = pair.initiator_first()
    old = pair.session(initiator)
    old._counter = itertools.count(REKEY_AFTER_MESSAGES - 2)
    pair.net.send(ei, pair.packet(initiator, b"x"))
    assert old.sent_messages == REKEY_AFTER_MESSAGES - 1
    pair.net.advance(0.2)
    assert pair.session(initiator) is old
    pair.net.send(ei, pair.packet(initiator, b"y"))
    assert old.sent_messages == REKEY_AFTER_MESSAGES
    pair.net.advance(0.2)
    assert pair.session(initiator) is not old


def test_responder_rekeys_when_the_initiator_does_not() -> None:
    """The initiator's timers stall (it still receives and answers): the responder rekeys 2 handshake
    timeouts after the initiator should have."""
    pair = established()
    initiator, _, responder, _ = pair.initiator_first()
    old = pair.session(responder)
    rekey_at = old.created_at + REKEY_AFTER_TIME + 2 * HANDSHAKE_TIMEOUT
    net = pair.net
    for _ in range(2000):  # bounded; 0.1 s steps
        if net.now >= rekey_at + 0.5:
            break
        net.now += 0.1
        responder.tick(net.now)
        net.flush()
        if net.now < rekey_at - 0.1:
            assert pair.session(responder) is old
    new = pair.session(responder)
    assert new is not old
    assert pair.session(initiator).remote_index == new.local_index
    assert pair.session(responder).is_initiator
    assert not any(isinstance(e, PeerDown) for e in (*initiator.events, *responder.events))


def test_lost_rekey_init_is_retransmitted() -> None:
    pair = established()
    initiator, ei, responder, _ = pair.initiator_first()
    old = pair.session(initiator)
    dropped: list[bytes] = []

    def drop_first_init(src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        if src == ei and data[0] == wire.MSG_HANDSHAKE_INIT and not dropped:
            dropped.append(data)
            return []
        return [data]

    pair.net.advance(old.created_at + REKEY_AFTER_TIME + 0.5 - pair.net.now, tamper=drop_first_init)
    assert dropped
    assert pair.session(initiator) is old
    pair.net.advance(HANDSHAKE_RETRY_INTERVAL + 0.2, tamper=drop_first_init)
    assert pair.session(initiator) is not old
    assert pair.session(responder).remote_index == pair.session(initiator).local_index
    assert not any(isinstance(e, PeerDown) for e in (*initiator.events, *responder.events))


def test_session_is_never_used_beyond_reject_after_time() -> None:
    pair = established()
    initiator, *_ = pair.initiator_first()
    old = pair.session(initiator)

    def drop_all_inits(_src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        return [] if data[0] == wire.MSG_HANDSHAKE_INIT else [data]

    pair.net.advance(old.created_at + REJECT_AFTER_TIME - 0.05 - pair.net.now, tamper=drop_all_inits)
    assert pair.session(initiator) is old
    pair.net.advance(0.1, tamper=drop_all_inits)
    peer = next(iter(initiator.peers.values()))
    assert peer.current is None
    assert PeerDown(peer.address, "expired") in initiator.events


# --------------------------------------------------------------------------- expiry and reconnect
def test_idle_expiry_when_the_other_side_is_gone_then_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep REJECT_AFTER_TIME out of the way so that the idle timer alone is observed.
    monkeypatch.setattr(node_module, "REJECT_AFTER_TIME", 10_000.0)
    pair = established()
    net, a, b = pair.net, pair.a, pair.b
    net.advance(30)
    gone = net.nodes.pop(pair.eb)
    peer = a.peer(b.address)
    assert peer is not None
    assert peer.last_seen is not None
    last_heard = peer.last_seen
    # With no traffic, the next latency ping finds the path dead (within about a second of going
    # unanswered); the session itself lives until the idle timeout.
    net.advance(LATENCY_PROBE_INTERVAL + PATH_DEAD_AFTER + 0.5)
    assert a.path_of(b.address) is PathKind.NONE
    assert PathLost(b.address, pair.eb) in a.events
    net.advance(last_heard + SESSION_IDLE_TIMEOUT - 0.1 - net.now)
    assert peer.current is not None
    assert not any(isinstance(e, PeerDown) for e in a.events)
    net.advance(0.2)
    assert a.path_of(b.address) is PathKind.NONE
    assert PeerDown(b.address, "idle") in a.events
    assert peer.rtt_ms is None
    assert peer.endpoint is None
    # b comes back (same node, same endpoint): a reconnects on its own
    net.nodes[pair.eb] = gone
    net.advance(15)
    assert a.path_of(b.address) is PathKind.DIRECT
    assert b.path_of(a.address) is PathKind.DIRECT
    net.send(pair.ea, pair.packet(a, b"welcome back"))
    assert net.delivered[pair.eb][-1] == pair.packet(a, b"welcome back")


def test_restarted_peer_with_the_same_identity_reconnects() -> None:
    pair = established()
    net, a = pair.net, pair.a
    net.nodes.pop(pair.eb)
    net.advance(5)
    restarted = Node(fixed_identity("node b"), lambda _addr: True, wall_offset_ns=1_700_000_000 * 10**9)
    net.nodes[pair.eb] = restarted
    restarted.add_static_endpoint(a.address, pair.ea, net.now)
    net.advance(30)
    assert restarted.path_of(a.address) is PathKind.DIRECT
    assert a.path_of(restarted.address) is PathKind.DIRECT
    net.send(pair.eb, ipv6_packet(restarted.address, a.address, b"hi"))
    assert net.delivered[pair.ea][-1] == ipv6_packet(restarted.address, a.address, b"hi")


# --------------------------------------------------------------------------- handshake robustness
def test_replayed_init_is_ignored_after_the_session() -> None:
    pair = established()
    _, ei, responder, er = pair.initiator_first()
    init = kinds(pair.net.log, ei, wire.MSG_HANDSHAKE_INIT)[0]
    session = pair.session(responder)
    pair.net.deliver(ei, er, init)
    assert responder.counters["drop_stale_init"] == 1
    assert not responder.outbox
    assert pair.session(responder) is session
    # replayed from an attacker's endpoint: same
    pair.net.deliver(("198.18.0.66", 5582), er, init)
    assert responder.counters["drop_stale_init"] == 2
    assert not responder.outbox


def test_retransmitted_init_is_answered_identically() -> None:
    pair = make_pair()
    dropped: list[bytes] = []

    def drop_first_response(_src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_HANDSHAKE_RESPONSE and not dropped:
            dropped.append(data)
            return []
        return [data]

    pair.net.introduce(pair.ea, pair.eb)
    pair.net.advance(HANDSHAKE_RETRY_INTERVAL + 0.5, tamper=drop_first_response)
    responses = [d for _, _, d in pair.net.log if d[0] == wire.MSG_HANDSHAKE_RESPONSE]
    assert len(responses) == 1  # the first was dropped before reaching the log
    assert responses[0] == dropped[0]
    inits = [d for _, _, d in pair.net.log if d[0] == wire.MSG_HANDSHAKE_INIT]
    assert inits.count(inits[-1]) >= 2  # the same init bytes, retransmitted
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT


def test_lost_confirm_is_recovered_by_retransmission() -> None:
    pair = make_pair()
    lost: list[bytes] = []

    def drop_first_confirm(_src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_HANDSHAKE_CONFIRM and not lost:
            lost.append(data)
            return []
        return [data]

    pair.net.introduce(pair.ea, pair.eb)
    pair.net.advance(0.2, tamper=drop_first_confirm)
    assert lost
    initiator, _, responder, _ = pair.initiator_first()
    waiting = initiator.peer(responder.address)
    assert waiting is not None
    # The initiator holds the new keys aside (nothing is sealed with them) until the responder answers.
    assert waiting.current is None
    assert waiting.next is not None
    assert not waiting.next.confirmed
    assert initiator.path_of(responder.address) is PathKind.NONE
    pair.net.advance(HANDSHAKE_RETRY_INTERVAL + 0.2, tamper=drop_first_confirm)
    assert initiator.path_of(responder.address) is PathKind.DIRECT
    assert responder.path_of(initiator.address) is PathKind.DIRECT
    confirms = [d for _, _, d in pair.net.log if d[0] == wire.MSG_HANDSHAKE_CONFIRM]
    assert confirms == [lost[0]]  # the very same confirm, retransmitted


def test_lost_keepalive_after_confirm_is_recovered() -> None:
    pair = make_pair()
    state = {"dropped": 0}

    def drop_first_data(_src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_DATA and not state["dropped"]:
            state["dropped"] = 1
            return []
        return [data]

    pair.net.introduce(pair.ea, pair.eb)
    pair.net.advance(HANDSHAKE_RETRY_INTERVAL + 0.5, tamper=drop_first_data)
    assert state["dropped"]
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT
    assert pair.b.path_of(pair.a.address) is PathKind.DIRECT


@pytest.mark.parametrize("seed", range(6))
def test_random_loss_still_converges(seed: int) -> None:
    rng = random.Random(seed)

    def lossy(_src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        return [] if rng.random() < 0.4 else [data]

    pair = make_pair()
    pair.net.introduce(pair.ea, pair.eb)
    for _ in range(600):  # at most 60 s of fake time
        pair.net.advance(0.1, tamper=lossy)
        if (
            pair.a.path_of(pair.b.address) is PathKind.DIRECT
            and pair.b.path_of(pair.a.address) is PathKind.DIRECT
        ):
            break
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT
    assert pair.b.path_of(pair.a.address) is PathKind.DIRECT
    sa, sb = pair.session(pair.a), pair.session(pair.b)
    assert (sa.local_index, sa.remote_index) == (sb.remote_index, sb.local_index)
    delivered = 0
    for i in range(50):
        packet = pair.packet(pair.a, i.to_bytes(2, "big"))
        pair.net.send(pair.ea, packet, tamper=lossy)
        delivered += pair.net.delivered[pair.eb][-1:] == [packet]
    assert 10 < delivered < 50


def test_duplicated_datagrams_are_harmless() -> None:
    def duplicate(_src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        return [data, data]

    pair = make_pair()
    pair.net.introduce(pair.ea, pair.eb)
    pair.net.advance(3, tamper=duplicate)
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT
    packet = pair.packet(pair.a, b"once")
    pair.net.send(pair.ea, packet, tamper=duplicate)
    assert pair.net.delivered[pair.eb] == [packet]
    assert pair.b.counters["drop_replay"] >= 1


# --------------------------------------------------------------------------- latency
@pytest.mark.parametrize("delay", [0.02, 0.05])
def test_latency_probes_measure_the_round_trip(delay: float) -> None:
    pair = make_pair()
    line = DelayLine(pair.net, delay)
    pair.net.introduce(pair.ea, pair.eb)
    line.advance(1.0)
    assert pair.a.path_of(pair.b.address) is PathKind.DIRECT
    line.advance(LATENCY_PROBE_INTERVAL + 1)
    pongs = [e for e in pair.a.events if isinstance(e, PongReceived)]
    assert len(pongs) >= 2
    for pong in pongs:
        assert 2 * delay * 1000 - 1e-6 <= pong.rtt_ms <= (2 * delay + 0.02) * 1000
    peer = pair.a.peer(pair.b.address)
    assert peer is not None
    assert peer.rtt_ms == pongs[-1].rtt_ms


def test_on_demand_ping() -> None:
    pair = established()
    probe_id = pair.a.ping(pair.b.address, pair.net.now)
    assert probe_id is not None
    pair.net.flush()
    assert any(isinstance(e, PongReceived) and e.probe_id == probe_id for e in pair.a.events)
    assert pair.a.ping(fixed_identity("stranger").address, pair.net.now) is None


def test_unanswered_probes_are_forgotten() -> None:
    pair = established()
    peer = pair.a.peer(pair.b.address)
    assert peer is not None
    pair.net.nodes.pop(pair.eb)
    pair.net.advance(LATENCY_PROBE_INTERVAL * 3)
    assert peer.probes
    assert all(pair.net.now - probe.sent_at <= PROBE_TIMEOUT for probe in peer.probes.values())
    rounds = PROBE_TIMEOUT / PATH_PROBE_INTERVAL + 1
    assert len(peer.probes) <= rounds * (len(peer.candidates) + 1)


# --------------------------------------------------------------------------- roaming and spoofing
def test_authenticated_data_from_a_new_endpoint_switches_the_endpoint() -> None:
    pair = established()
    net, a, b = pair.net, pair.a, pair.b
    new_eb = ("198.18.0.77", 40000)
    net.nodes[new_eb] = net.nodes.pop(pair.eb)
    net.delivered[new_eb] = []
    net.send(new_eb, pair.packet(b, b"from my new address"))
    assert net.delivered[pair.ea] == [pair.packet(b, b"from my new address")]
    peer = a.peer(b.address)
    assert peer is not None
    assert peer.endpoint == new_eb
    net.send(pair.ea, pair.packet(a, b"found you"))
    assert net.delivered[new_eb] == [pair.packet(a, b"found you")]


def test_unauthenticated_or_replayed_data_from_a_new_endpoint_does_not_switch() -> None:
    pair = established()
    net, a, b = pair.net, pair.a, pair.b
    net.send(pair.eb, pair.packet(b, b"genuine"))
    genuine = kinds(net.log, pair.eb, wire.MSG_DATA)[-1]
    attacker = ("198.18.0.66", 5582)
    net.deliver(attacker, pair.ea, genuine)  # replay
    index, counter = wire.decode_data_header(genuine)
    forged = wire.encode_data_header(index, counter + 1000) + genuine[wire.DATA_AD_SIZE :]
    net.deliver(attacker, pair.ea, forged)
    peer = a.peer(b.address)
    assert peer is not None
    assert peer.endpoint == pair.eb
    assert a.counters["drop_replay"] == 1
    assert a.counters["drop_auth"] == 1


def test_spoofed_inner_source_address_is_dropped() -> None:
    pair = established()
    spoofed_src = fixed_identity("stranger").address
    packet = ipv6_packet(spoofed_src, pair.a.address, b"not from b")
    pair.net.send(pair.eb, packet)
    assert pair.net.delivered[pair.ea] == []
    assert pair.a.counters["drop_spoofed"] == 1


@pytest.mark.parametrize("destination", ["stranger", "multicast"])
def test_inner_packet_for_another_destination_is_dropped(destination: str) -> None:
    pair = established()
    multicast_all_nodes = bytes.fromhex("ff02" + "00" * 13 + "01")
    to = fixed_identity("stranger").address if destination == "stranger" else multicast_all_nodes
    packet = ipv6_packet(pair.b.address, to, b"not for a")
    frame = pair.session(pair.b).seal(bytes([wire.INNER_IPV6]) + packet)
    assert pair.a.receive_data(frame, pair.eb, pair.net.now) is None
    assert pair.a.counters["drop_wrong_destination"] == 1
    ok = ipv6_packet(pair.b.address, pair.a.address, b"ok")
    good = pair.session(pair.b).seal(bytes([wire.INNER_IPV6]) + ok)
    assert pair.a.receive_data(good, pair.eb, pair.net.now) is not None


# --------------------------------------------------------------------------- garbage
GARBAGE = [
    b"",
    b"\x00",
    b"\x01",
    b"\x02" * 12,
    b"\x03" * 8,
    b"\x04",
    b"\x04" + bytes(100),
    b"\x05hello",
    b"\xff" * 2000,
    bytes(wire.INIT_SIZE),
    b"\x01\x01\x00\x00" + bytes(76),
    b"\x02\x01\x00\x00" + bytes(152),
    b"\x03\x01\x00\x00" + bytes(116),
]


def test_garbage_is_counted_never_raising() -> None:
    pair = established()
    a, ea = pair.a, pair.ea
    src = ("198.18.0.66", 1)
    for data in GARBAGE:
        before = sum(a.counters.values())
        assert a.receive_data(data, src, pair.net.now) is None
        a.receive_control(data, src, pair.net.now)
        assert sum(a.counters.values()) == before + 2, data[:8]
    # valid-looking data frames for the live session index, but forged
    session = pair.session(a)
    highest = session.replay.highest
    for counter in (highest + 1, highest + 2, 2**63):
        frame = wire.encode_data_header(session.local_index, counter) + bytes(60)
        assert a.receive_data(frame, src, pair.net.now) is None
    assert a.counters["drop_auth"] == 3
    assert session.replay.highest == highest
    assert a.path_of(pair.b.address) is PathKind.DIRECT
    assert ea in pair.net.nodes


def test_authenticated_but_malformed_inner_frames_are_counted() -> None:
    pair = established()
    session_b = pair.session(pair.b)
    for inner in (
        b"\x01short",
        b"\x02extra",
        b"\x03" + bytes(7),
        b"\x04" + bytes(9),
        b"\x09",
        b"\x00" + bytes(10),
    ):
        frame = session_b.seal(inner)
        before = sum(pair.a.counters.values())
        assert pair.a.receive_data(frame, pair.eb, pair.net.now) is None
        assert sum(pair.a.counters.values()) == before + 1, inner


def test_unexpected_handshake_messages_are_counted() -> None:
    pair = established()
    initiator, ei, responder, er = pair.initiator_first()
    response = kinds(pair.net.log, er, wire.MSG_HANDSHAKE_RESPONSE)[0]
    pair.net.deliver(er, ei, response)  # a response for a finished initiation
    assert initiator.counters["drop_unexpected_response"] == 1
    confirm = kinds(pair.net.log, ei, wire.MSG_HANDSHAKE_CONFIRM)[0]
    pair.net.deliver(ei, er, b"\x03\x01\x00\x00" + b"\xee" * 116)
    assert responder.counters["drop_unexpected_confirm"] == 1
    # the confirm retransmitted after the session is up: answered with a keepalive, nothing else
    pair.net.deliver(ei, er, confirm)
    assert [d[0] for _, d in responder.outbox] == [wire.MSG_DATA]


def test_init_rate_limit_per_source() -> None:
    pair = established()
    node = pair.a
    src = ("198.18.0.66", 9)
    stranger = fixed_identity("stranger")
    junk_init = wire.HandshakeInit(
        1, 1, stranger.address, bytes(16), bytes(32), stranger.public_key, bytes(64)
    ).encode()
    for _ in range(50):
        node.receive_control(junk_init, src, pair.net.now)
    assert node.counters["drop_rate_limited"] == 50 - 10
    assert node.counters["drop_not_for_us"] == 10
    node.receive_control(junk_init, ("198.18.0.67", 9), pair.net.now)  # another source has its own bucket
    assert node.counters["drop_not_for_us"] == 11


def test_forget_peer_drops_all_state() -> None:
    pair = established()
    pair.a.forget_peer(pair.b.address)
    assert pair.a.peer(pair.b.address) is None
    assert not pair.a._sessions
    assert PeerDown(pair.b.address, "forgotten") in pair.a.events
    pair.net.send(pair.eb, pair.packet(pair.b, b"x"))
    assert pair.a.counters["drop_unknown_session"] >= 1


def test_timestamps_stay_above_the_floor_whatever_the_wall_clock_says() -> None:
    floor = 1_800_000_000 * 10**9  # the floor the daemon persisted in its previous run
    node = Node(
        fixed_identity("node a"),
        lambda _a: True,
        wall_offset_ns=1_700_000_000 * 10**9,
        timestamp_floor_ns=floor,
    )
    first = node.next_timestamp_ns(1000.0)
    second = node.next_timestamp_ns(999.0)  # even when the clock goes back while running
    assert floor < first < second
    assert node.last_timestamp_ns == second
