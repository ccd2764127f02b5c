"""The node's base-server paths through the in-memory network: relayed sessions, hole punching to direct,
falling back to the relay, and the bookkeeping of relay candidates (learn_from_base, offer/withdraw_relay)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest
from fixed_identities import fixed_identity

from husarnet_ros.core import wire
from husarnet_ros.core.constants import (
    LATENCY_PROBE_INTERVAL,
    MAX_INIT_TARGETS,
    PATH_DEAD_AFTER,
    PATH_PROBE_INTERVAL,
    PATH_QUIET_AFTER,
    PUNCH_DURATION,
)
from husarnet_ros.core.node import Node
from husarnet_ros.core.peer import (
    RELAY_PORT,
    RELAY_RANK,
    CandidateSource,
    Endpoint,
    PathKind,
    endpoint_rank,
    is_relay,
    relay_endpoint,
)
from husarnet_ros.testing.memnet import MemNet, NodePair, ipv6_packet

STEP = 0.05  # fake-time resolution of the measurements below


@dataclass
class RelayNet(MemNet):
    """MemNet with a base server's relay and a switch for the direct paths.

    A datagram a node sends to a relay endpoint (host: the destination's overlay address, port 0) reaches the
    node with that address as if it came from the sender's relay endpoint, as the daemon's transport and a
    base server together deliver it. ``direct_open`` False drops everything between the nodes' own endpoints
    (two sites behind NATs that have not been punched), except between endpoints in ``lan``, which always
    reach each other; ``relay_open`` False drops relayed datagrams."""

    direct_open: bool = True
    relay_open: bool = True
    lan: set[Endpoint] = field(default_factory=set)
    relayed: list[tuple[Endpoint, Endpoint, bytes]] = field(default_factory=list)

    def endpoint_of(self, address: bytes) -> Endpoint | None:
        return next((e for e, node in self.nodes.items() if node.address == address), None)

    def deliver(self, src: Endpoint, dst: Endpoint, data: bytes) -> None:
        if is_relay(dst):
            target = self.endpoint_of(ipaddress.IPv6Address(dst[0]).packed)
            sender = self.nodes.get(src)
            if not self.relay_open or target is None or sender is None:
                self.log.append((src, dst, data))
                return
            self.relayed.append((src, dst, data))
            super().deliver(relay_endpoint(sender.address), target, data)
            return
        if not self.direct_open and not is_relay(src) and not (src in self.lan and dst in self.lan):
            self.log.append((src, dst, data))
            return
        super().deliver(src, dst, data)


@dataclass
class RelayPair(NodePair):
    net: RelayNet

    def paths(self) -> tuple[PathKind, PathKind]:
        return self.a.path_of(self.b.address), self.b.path_of(self.a.address)

    def learn_from_base(self, relay: bool = True) -> None:
        """The base server's rendezvous: each side hears of the other's endpoint at the same moment."""
        self.a.learn_from_base(self.b.address, [self.eb], relay, self.net.now)
        self.b.learn_from_base(self.a.address, [self.ea], relay, self.net.now)

    def exchange(self, payload: bytes) -> bool:
        """One packet each way; True if both arrived."""
        net = self.net
        to_b = ipv6_packet(self.a.address, self.b.address, payload)
        to_a = ipv6_packet(self.b.address, self.a.address, payload)
        before_b, before_a = len(net.delivered[self.eb]), len(net.delivered[self.ea])
        net.send(self.ea, to_b)
        net.send(self.eb, to_a)
        return net.delivered[self.eb][before_b:] == [to_b] and net.delivered[self.ea][before_a:] == [to_a]

    def advance_until(self, wanted: tuple[PathKind, PathKind], limit: float, traffic: bool = False) -> float:
        """Fake seconds until both paths are ``wanted`` (with a packet each way per step if ``traffic``);
        fails after ``limit``."""
        start = self.net.now
        while self.paths() != wanted:
            assert self.net.now - start < limit, f"paths {self.paths()} after {limit} s, wanted {wanted}"
            if traffic:
                self.exchange(b"keep talking")
            self.net.advance(STEP, step=STEP)
        return self.net.now - start


def relay_only_pair() -> RelayPair:
    """Two nodes whose direct endpoints cannot reach each other, introduced by a base server that relays."""
    net = RelayNet(direct_open=False)
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    pair = RelayPair(net, a, ea, b, eb)
    pair.learn_from_base()
    net.advance(1.0)
    return pair


def settled_direct_after_relay() -> RelayPair:
    """A pair that came up over the relay, was punched to direct, and has run there for a while (so no
    probe of the move is still in flight)."""
    pair = relay_only_pair()
    pair.net.direct_open = True
    pair.learn_from_base()
    pair.advance_until((PathKind.DIRECT, PathKind.DIRECT), limit=PUNCH_DURATION)
    pair.net.advance(1.0)
    assert pair.paths() == (PathKind.DIRECT, PathKind.DIRECT)
    return pair


def direct_pair() -> RelayPair:
    """Two nodes on one LAN with a session on the direct path, each also offered the relay."""
    net = RelayNet()
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    net.introduce(ea, eb)
    net.advance(0.5)
    pair = RelayPair(net, a, ea, b, eb)
    a.offer_relay(b.address, net.now)
    b.offer_relay(a.address, net.now)
    assert pair.paths() == (PathKind.DIRECT, PathKind.DIRECT)
    return pair


# --------------------------------------------------------------------------- ranks
def test_the_relay_ranks_below_every_direct_endpoint() -> None:
    relay = relay_endpoint(fixed_identity("node b").address)
    assert relay == (str(ipaddress.IPv6Address(fixed_identity("node b").address)), RELAY_PORT)
    assert is_relay(relay)
    assert endpoint_rank(relay) == RELAY_RANK
    direct = [("198.18.0.1", 5582), ("fd00:98::1", 5582), ("fe80::1%eth0", 5582), ("robot.local", 5582)]
    assert not any(is_relay(e) for e in direct)
    assert all(endpoint_rank(e) < endpoint_rank(relay) for e in direct)
    # Among candidates heard of the same way, the relay comes last, even heard of last and most recently.
    node = Node(fixed_identity("node a"), lambda _address: True)
    address = fixed_identity("node b").address
    node.learn_from_base(address, list(reversed(direct)), relay=True, now=1000.0)
    peer = node.peer(address)
    assert peer is not None
    assert peer.ordered_candidates()[-1] == relay_endpoint(address)


# --------------------------------------------------------------------------- relayed sessions
def test_a_relay_only_pair_comes_up_tunnelled_and_carries_traffic() -> None:
    pair = relay_only_pair()
    net, a, b = pair.net, pair.a, pair.b
    assert pair.paths() == (PathKind.TUNNELLED, PathKind.TUNNELLED)
    assert pair.peer_of(a).endpoint == relay_endpoint(b.address)
    assert pair.peer_of(b).endpoint == relay_endpoint(a.address)
    for node in (a, b):
        sources = {c.source for c in pair.peer_of(node).candidates.values()}
        assert CandidateSource.BASE in sources  # the direct endpoint the base named stays a candidate
    relayed_before = len(net.relayed)
    to_b = ipv6_packet(a.address, b.address, b"over the base server" * 20)
    to_a = ipv6_packet(b.address, a.address, b"and back")
    net.send(pair.ea, to_b)
    net.send(pair.eb, to_a)
    assert net.delivered[pair.eb] == [to_b]
    assert net.delivered[pair.ea] == [to_a]
    data = [(src, dst) for src, dst, d in net.relayed[relayed_before:] if d[0] == wire.MSG_DATA]
    assert (pair.ea, relay_endpoint(b.address)) in data
    assert (pair.eb, relay_endpoint(a.address)) in data


def test_hole_punching_moves_a_relayed_pair_to_direct_and_keeps_the_relay_candidate() -> None:
    pair = relay_only_pair()
    net, a, b = pair.net, pair.a, pair.b
    net.advance(PUNCH_DURATION)  # the first punching round found nothing: the NATs were closed
    assert pair.paths() == (PathKind.TUNNELLED, PathKind.TUNNELLED)
    net.direct_open = True
    pair.learn_from_base()  # a new rendezvous: both sides punch again, and this time the NATs let it in
    # Moved by the punching, not by the next latency round (which also tries better endpoints).
    next_latency_round = min(pair.peer_of(a).next_probe_at, pair.peer_of(b).next_probe_at) - net.now
    took = pair.advance_until((PathKind.DIRECT, PathKind.DIRECT), limit=PUNCH_DURATION)
    assert took < next_latency_round
    assert pair.peer_of(a).endpoint == pair.eb
    assert pair.peer_of(b).endpoint == pair.ea
    for node, other in ((a, b), (b, a)):
        candidate = pair.peer_of(node).candidates.get(relay_endpoint(other.address))
        assert candidate is not None
        assert candidate.source is CandidateSource.RELAY
    relayed_before = len(net.relayed)
    assert pair.exchange(b"direct now")
    assert len(net.relayed) == relayed_before  # nothing goes through the base any more


def test_without_a_rendezvous_a_relayed_pair_moves_to_direct_on_a_latency_round() -> None:
    """Hole punching is the fast way; a relayed route also tries the better endpoints on every latency
    probe, so a path that opens later (no new rendezvous) is still found."""
    pair = relay_only_pair()
    pair.net.advance(PUNCH_DURATION)
    pair.net.direct_open = True
    pair.advance_until((PathKind.DIRECT, PathKind.DIRECT), limit=LATENCY_PROBE_INTERVAL + 1.0)


def test_when_the_direct_path_breaks_traffic_falls_back_to_the_relay_within_seconds() -> None:
    pair = settled_direct_after_relay()
    net = pair.net
    net.direct_open = False
    # dead path (unanswered traffic) -> probes to every candidate -> the relay answers -> tunnelled
    took = pair.advance_until((PathKind.TUNNELLED, PathKind.TUNNELLED), limit=10.0, traffic=True)
    bound = PATH_DEAD_AFTER + PATH_QUIET_AFTER + 2 * PATH_PROBE_INTERVAL + 2 * STEP
    assert took <= bound, f"fell back after {took:.2f} s (fake time), bound {bound:.2f} s"
    assert pair.exchange(b"relayed again")


def test_the_side_that_falls_back_second_is_not_kept_on_a_dead_direct_path_by_relayed_frames() -> None:
    """a streams to b; the direct path dies; a notices first (b is quiet) and moves to the relay. When b
    then starts answering, its packets must reach a too: b's sends to the dead endpoint go unanswered, so
    within a latency interval and the dead-path detection b falls back as well."""
    pair = settled_direct_after_relay()
    net, a, b = pair.net, pair.a, pair.b
    net.direct_open = False
    start = net.now
    while a.path_of(b.address) is not PathKind.TUNNELLED:
        assert net.now - start < 5.0, f"a still {a.path_of(b.address)}"
        net.send(pair.ea, ipv6_packet(a.address, b.address, b"stream"))
        net.advance(STEP, step=STEP)
    from_b = ipv6_packet(b.address, a.address, b"answer")
    answered_at = net.now
    bound = LATENCY_PROBE_INTERVAL + PATH_DEAD_AFTER + 2 * PATH_PROBE_INTERVAL + 2 * STEP
    while from_b not in net.delivered[pair.ea] and net.now - answered_at <= bound:
        net.send(pair.ea, ipv6_packet(a.address, b.address, b"stream"))
        net.send(pair.eb, from_b)
        net.advance(STEP, step=STEP)
    assert from_b in net.delivered[pair.ea], f"b's packets lost for {net.now - answered_at:.2f} s (fake time)"
    assert pair.paths() == (PathKind.TUNNELLED, PathKind.TUNNELLED)


# --------------------------------------------------------------------------- relayed frames and live routes
def test_a_relayed_frame_does_not_move_an_alive_direct_route() -> None:
    pair = direct_pair()
    net, a, b = pair.net, pair.a, pair.b
    packet = ipv6_packet(a.address, b.address, b"late, through the base")
    out = a.send(packet, net.now)
    assert out is not None
    assert b.receive(out[1], relay_endpoint(a.address), net.now) == packet  # delivered all the same
    b.process_posted(net.now)
    peer = pair.peer_of(b)
    assert peer.endpoint == pair.ea
    assert pair.paths() == (PathKind.DIRECT, PathKind.DIRECT)


def test_a_relayed_frame_moves_a_dead_route_to_the_relay() -> None:
    pair = direct_pair()
    net, a, b = pair.net, pair.a, pair.b
    net.direct_open = net.relay_open = False
    for _ in range(int(5.0 / STEP)):  # b talks into the void until it knows its path is dead
        if pair.peer_of(b).path_alive:
            net.send(pair.eb, ipv6_packet(b.address, a.address, b"anyone?"))
            net.advance(STEP, step=STEP)
    assert not pair.peer_of(b).path_alive
    packet = ipv6_packet(a.address, b.address, b"through the base")
    out = a.send(packet, net.now)
    assert out is not None
    assert b.receive(out[1], relay_endpoint(a.address), net.now) == packet
    b.process_posted(net.now)
    assert pair.peer_of(b).endpoint == relay_endpoint(a.address)
    assert b.path_of(a.address) is PathKind.TUNNELLED


# --------------------------------------------------------------------------- candidates and targets
def test_learn_from_base_ignores_peers_not_on_the_whitelist() -> None:
    net = RelayNet()
    a, _ = net.add(fixed_identity("node a"), whitelist_all=False)
    b, eb = net.add(fixed_identity("node b"), whitelist_all=False)
    a.learn_from_base(b.address, [eb, ("fd00:98::2", 5582)], relay=True, now=net.now)
    a.offer_relay(b.address, net.now)
    assert a.peer(b.address) is None
    assert a.counters["drop_base_peer_not_allowed"] == 1
    net.advance(2.0)
    assert a.peer(b.address) is None
    assert not [dst for src, dst, _ in net.log if src != eb]  # a sent nothing anywhere


def test_withdraw_relay_forgets_unused_relay_candidates_but_keeps_the_one_in_use() -> None:
    pair = relay_only_pair()
    net, a, b = pair.net, pair.a, pair.b
    c, ec = net.add(fixed_identity("node c"))
    net.lan = {pair.ea, ec}  # a and c share a LAN; b stays behind its NAT
    net.introduce(pair.ea, ec)
    net.advance(0.5)
    assert a.path_of(c.address) is PathKind.DIRECT
    a.offer_relay(c.address, net.now)
    unused = fixed_identity("node d").address
    a.offer_relay(unused, net.now)  # the base would relay to d too, but no session was ever wanted
    peer_c, peer_d = a.peer(c.address), a.peer(unused)
    assert peer_c is not None
    assert peer_d is not None
    assert relay_endpoint(c.address) in peer_c.candidates
    assert relay_endpoint(unused) in peer_d.candidates

    a.withdraw_relay()

    assert relay_endpoint(c.address) not in peer_c.candidates
    assert relay_endpoint(unused) not in peer_d.candidates
    peer_b = pair.peer_of(a)
    assert relay_endpoint(b.address) in peer_b.candidates  # in use: it stays until it stops answering
    assert peer_b.endpoint == relay_endpoint(b.address)
    assert a.path_of(b.address) is PathKind.TUNNELLED
    assert a.path_of(c.address) is PathKind.DIRECT
    assert pair.exchange(b"still relayed")


def test_init_targets_keep_the_relay_when_direct_candidates_are_many() -> None:
    a = Node(fixed_identity("node a"), lambda _address: True)
    address = fixed_identity("node b").address
    direct = [(f"198.18.1.{i}", 5582) for i in range(1, MAX_INIT_TARGETS + 3)]
    a.learn_from_base(address, direct, relay=True, now=1000.0)
    a.tick(1000.0)
    peer = a.peer(address)
    assert peer is not None
    assert len(peer.initiation_endpoints) == MAX_INIT_TARGETS
    assert relay_endpoint(address) in peer.initiation_endpoints
    inits = [dst for dst, data in a.outbox if data[0] == wire.MSG_HANDSHAKE_INIT]
    assert sorted(inits) == sorted(peer.initiation_endpoints)
    assert len([e for e in inits if not is_relay(e)]) == MAX_INIT_TARGETS - 1


def test_a_base_server_cannot_name_relay_endpoints_as_direct_candidates() -> None:
    """Port 0 names a relayed path, never a UDP endpoint: the relay is a candidate only when the base relays
    (``relay``), and only to the peer's own address."""
    node = Node(fixed_identity("node a"), lambda _address: True)
    address, other = fixed_identity("node b").address, fixed_identity("node c").address
    named = [("198.18.1.1", 5582), relay_endpoint(other), relay_endpoint(address)]
    node.learn_from_base(address, named, relay=False, now=1000.0)
    peer = node.peer(address)
    assert peer is not None
    assert set(peer.candidates) == {("198.18.1.1", 5582)}
    assert peer.candidates[("198.18.1.1", 5582)].source is CandidateSource.BASE
    node.learn_from_base(address, named, relay=True, now=1001.0)
    assert set(peer.candidates) == {("198.18.1.1", 5582), relay_endpoint(address)}
    assert peer.candidates[relay_endpoint(address)].source is CandidateSource.RELAY


@pytest.mark.parametrize("established", ["direct", "tunnelled"])
def test_what_a_base_server_names_never_moves_an_established_path(established: str) -> None:
    # A base server (or anyone forging its messages) names endpoints the peer is not at, over and over: they
    # may be probed (hole punching: all a base server can cause), never answer, and the route stays where
    # authenticated traffic comes from.
    pair = settled_direct_after_relay() if established == "direct" else relay_only_pair()
    expected = PathKind.DIRECT if established == "direct" else PathKind.TUNNELLED
    assert pair.paths() == (expected, expected)
    route_a, route_b = pair.peer_of(pair.a).endpoint, pair.peer_of(pair.b).endpoint
    decoys = [("198.18.200.1", 5582), ("198.18.200.2", 40000), ("fd00:98::200", 5582)]
    for _ in range(5):
        pair.a.learn_from_base(pair.b.address, decoys, True, pair.net.now)
        pair.b.learn_from_base(pair.a.address, decoys, True, pair.net.now)
        for _ in range(10):
            assert pair.exchange(b"still here")
            pair.net.advance(STEP, step=STEP)
    assert pair.paths() == (expected, expected)
    assert (pair.peer_of(pair.a).endpoint, pair.peer_of(pair.b).endpoint) == (route_a, route_b)
    if established == "tunnelled":  # every decoy ranks better than the relay: each was tried, none taken
        assert set(decoys) <= {dst for _src, dst, _data in pair.net.log}


# --------------------------------------------------------------------------- one-way direct paths
@dataclass
class OneWayNet(RelayNet):
    """RelayNet whose direct path works one way only: ``blocked`` (source, destination) pairs are dropped (a
    firewall that lets a node's datagrams out but not the answers in, as the dataplane benchmark's relay lab
    did to IPv6)."""

    blocked: set[tuple[Endpoint, Endpoint]] = field(default_factory=set)
    # The relay is slower than the direct path (a detour through the base server): a relayed datagram
    # arrives one step later, after what the nodes send directly on their next tick.
    held: list[tuple[Endpoint, Endpoint, bytes]] = field(default_factory=list)

    def deliver(self, src: Endpoint, dst: Endpoint, data: bytes) -> None:
        if (src, dst) in self.blocked:
            self.log.append((src, dst, data))
            return
        if is_relay(dst):
            self.held.append((src, dst, data))
            return
        super().deliver(src, dst, data)

    def step(self, until: float, tamper: Any = None) -> None:
        late, self.held = self.held, []
        super().step(until, tamper)
        for src, dst, data in late:
            RelayNet.deliver(self, src, dst, data)
        self.flush(tamper)


@pytest.mark.parametrize("punched", [True, False], ids=["with-rendezvous", "without"])
@pytest.mark.parametrize("blocked_side", ["b", "a"])
def test_a_direct_path_that_works_one_way_only_is_never_used_and_the_relay_carries_both_ways(
    punched: bool, blocked_side: str
) -> None:
    """One node's datagrams reach the other directly, the answers never do (both are fine through the relay,
    which is slower). Frames sent straight across (hole punching, upgrade probes) prove only one direction:
    the receiver must not take that path for a new session, adopt it, nor keep it alive on them, or its
    answers vanish. Either node may be the one whose direct sends are dropped (the lower address keeps its
    own initiation on a simultaneous open). Traffic keeps flowing both ways."""
    net = OneWayNet(direct_open=True)
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    net.blocked.add((eb, ea) if blocked_side == "b" else (ea, eb))
    pair = RelayPair(net, a, ea, b, eb)
    if punched:
        pair.learn_from_base()
    else:
        a.learn_from_base(b.address, [eb], True, net.now)
        b.learn_from_base(a.address, [], True, net.now)
    net.advance(1.0)

    def exchanged(payload: bytes) -> bool:
        """One packet each way, given a step to arrive (the relay's); True if both did."""
        to_b, to_a = ipv6_packet(a.address, b.address, payload), ipv6_packet(b.address, a.address, payload)
        before_b, before_a = len(net.delivered[eb]), len(net.delivered[ea])
        net.send(ea, to_b)
        net.send(eb, to_a)
        net.advance(STEP, step=STEP)
        return to_b in net.delivered[eb][before_b:] and to_a in net.delivered[ea][before_a:]

    sender, receiver = (b, a) if blocked_side == "b" else (a, b)  # sender's direct datagrams are dropped
    one_way = ea if blocked_side == "b" else eb  # where the sender's datagrams would never arrive
    used_one_way = []

    def watch() -> None:
        peer = sender.peer(receiver.address)
        if peer is not None and peer.route is not None and peer.route.endpoint == one_way:
            used_one_way.append(net.now)

    lost = 0
    for _ in range(int(3 * LATENCY_PROBE_INTERVAL / STEP)):
        lost += not exchanged(b"both ways")
        watch()
    settled = [exchanged(b"settled") for _ in range(20)]
    assert all(settled), f"paths {pair.paths()}, lost {lost}"
    assert not used_one_way, (
        f"the {blocked_side} side sent into the one-way path at {used_one_way[:3]} (fake time)"
    )
    assert pair.paths() == (PathKind.TUNNELLED, PathKind.TUNNELLED)
