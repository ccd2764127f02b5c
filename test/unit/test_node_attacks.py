"""An off-path attacker against the node, through the in-memory network.

The attacker knows what is public: both overlay addresses, both public keys, one UDP endpoint, and the
datagrams it can record on a LAN (beacons). It cannot sign with a node's key. Each scenario below was
found working against an earlier version of the protocol (an unsigned init, beacons without freshness,
peers created by unauthenticated input); each test asserts the property that now holds:

* nothing a genuine handshake or session depends on changes because of an unauthenticated datagram;
* an endpoint moves only on an authenticated frame;
* recorded beacons cannot crowd out or replace the endpoint in use;
* unauthenticated input creates no peer, so it cannot lock genuine peers out;
* a peer removed from the whitelist is forgotten at once, and a handshake finishing later installs nothing.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest
from fixed_identities import failing_seed, fixed_identity
from nacl.signing import SigningKey

from husarnet_ros.core import beacon, wire
from husarnet_ros.core import beacon as beacon_module
from husarnet_ros.core import node as node_module
from husarnet_ros.core.constants import (
    HANDSHAKE_TIMEOUT,
    PEER_FORGET_AFTER,
    REKEY_AFTER_TIME,
    SESSION_IDLE_TIMEOUT,
)
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.node import Node
from husarnet_ros.core.peer import Endpoint, PathKind
from husarnet_ros.testing.memnet import MemNet, Tamper, ipv6_packet

ATTACKER: Endpoint = ("198.18.0.66", 5582)
WALL_OFFSET_NS = 1_700_000_000 * 10**9


def forged_init(claimed: Identity, responder: bytes, timestamp_ns: int, sender_index: int = 7) -> bytes:
    """An init claiming ``claimed``'s address (and showing its public key), which the attacker cannot sign."""
    return wire.HandshakeInit(
        sender_index,
        timestamp_ns,
        claimed.address,
        responder,
        os.urandom(32),
        claimed.public_key,
        os.urandom(64),
    ).encode()


def drop_replies_to_attacker(node: Node) -> None:
    """What a node answers the attacker is lost to the attacker's network, not to the test."""
    kept = [(dst, data) for dst, data in node.outbox if dst != ATTACKER]
    node.outbox.clear()
    node.outbox.extend(kept)


def fresh_timestamp(net: MemNet, ahead_s: float = 1.0) -> int:
    """A timestamp newer than any the nodes used so far (the attacker's clock runs ahead)."""
    return int((net.now + ahead_s) * 1e9) + WALL_OFFSET_NS


def pair(labels: tuple[str, str] = ("node a", "node b")) -> tuple[MemNet, Node, Endpoint, Node, Endpoint]:
    net = MemNet()
    a, ea = net.add(fixed_identity(labels[0]))
    b, eb = net.add(fixed_identity(labels[1]))
    return net, a, ea, b, eb


def is_direct(x: Node, y: Node) -> bool:
    return x.path_of(y.address) is PathKind.DIRECT and y.path_of(x.address) is PathKind.DIRECT


def established() -> tuple[MemNet, Node, Endpoint, Node, Endpoint]:
    net, a, ea, b, eb = pair()
    net.introduce(ea, eb)
    net.advance(0.5)
    assert is_direct(a, b)
    return net, a, ea, b, eb


def send_one(net: MemNet, a: Node, b: Node, eb: Endpoint, i: int, tamper: Tamper) -> bool:
    """Packet number ``i`` from a to b, as the daemon would send it; True if b delivered it."""
    before = len(net.delivered[eb])
    out = a.send(ipv6_packet(a.address, b.address, i.to_bytes(4, "big")), net.now)
    if out is not None:
        a.outbox.append(out)
    a.process_posted(net.now)
    net.flush(tamper=tamper)
    return len(net.delivered[eb]) > before


def initiator_of(a: Node, b: Node) -> tuple[Node, Node]:
    peer = a.peer(b.address)
    assert peer is not None
    assert peer.current is not None
    return (a, b) if peer.current.is_initiator else (b, a)


# --------------------------------------------------------------------------- forged inits
def test_a_forged_init_does_not_displace_the_pending_response() -> None:
    """The responder has answered a genuine init; a forged init for the same peer arrives before the
    confirm. The genuine handshake still completes, in one round trip."""
    net, a, ea, b, eb = pair()
    a.add_static_endpoint(b.address, eb, net.now)  # a initiates, b only answers
    a.tick(net.now)
    ((dst, init),) = list(a.outbox)
    a.outbox.clear()
    assert dst == eb
    net.deliver(ea, eb, init)  # b answers a's genuine init
    response = [data for _, data in b.outbox]
    b.outbox.clear()
    net.deliver(ATTACKER, eb, forged_init(a.identity, b.address, fresh_timestamp(net)))
    drop_replies_to_attacker(b)
    for data in response:
        net.deliver(eb, ea, data)  # a gets the genuine response and confirms
    net.flush()
    assert is_direct(a, b)
    assert b.counters["drop_unexpected_confirm"] == 0


def test_a_forged_init_after_every_genuine_one_cannot_prevent_the_session() -> None:
    net, a, ea, b, eb = pair()
    a.add_static_endpoint(b.address, eb, net.now)

    def inject(src: Endpoint, dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_HANDSHAKE_INIT and src == ea:
            net.deliver(src, dst, data)
            net.deliver(ATTACKER, dst, forged_init(a.identity, b.address, fresh_timestamp(net)))
            drop_replies_to_attacker(b)
            return []
        return [data]

    for _ in range(300):  # at most 30 s
        net.advance(0.1, tamper=inject)
        if is_direct(a, b):
            break
    assert is_direct(a, b)
    assert net.now < 1000.0 + 2.0  # at the first attempt, not after retries


def test_forged_inits_at_every_rekey_cost_no_packets() -> None:
    """On an established link the attacker injects a forged init whenever a rekey init passes. Every
    packet sent across the rekeys arrives (there is no loss in this network otherwise)."""
    net, a, ea, b, eb = established()
    injected = []

    def inject(src: Endpoint, dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_HANDSHAKE_INIT:
            claimed = a if src == ea else b
            net.deliver(src, dst, data)
            net.deliver(
                ATTACKER, dst, forged_init(claimed.identity, net.nodes[dst].address, fresh_timestamp(net))
            )
            injected.append(dst)
            return []
        return [data]

    sent = delivered = longest_gap = gap = 0
    step = 0.2
    for i in range(3001):  # 600 s: five rekeys
        arrived = send_one(net, a, b, eb, i, inject)
        sent += 1
        delivered += arrived
        gap = 0 if arrived else gap + 1
        longest_gap = max(longest_gap, gap)
        net.advance(step, tamper=inject)
    print(
        f"forged inits at rekeys: delivered {delivered} of {sent}, longest outage {longest_gap * step:.1f} s"
    )
    assert len(injected) >= 4  # the rekeys happened and each was attacked
    assert delivered == sent
    assert is_direct(a, b)


@pytest.mark.parametrize("labels", [("node a", "node b"), ("node b", "node a"), ("sim 1", "sim 2")])
def test_forged_crossing_inits_never_make_the_attacker_the_endpoint(labels: tuple[str, str]) -> None:
    """During a simultaneous open the attacker sends each side an init claiming the other, from its own
    endpoint, and relays to the other side whatever reaches it (so it would sit in the middle of any
    session that took its endpoint). Both sides end with each other's genuine endpoint, and nothing of
    the handshake or the session ever goes to the attacker."""
    net, a, ea, b, eb = pair(labels)
    relayed: list[bytes] = []

    def relay(src: Endpoint, dst: Endpoint, data: bytes) -> list[bytes]:
        if dst == ATTACKER:
            relayed.append(data)
            net.deliver(ATTACKER, eb if src == ea else ea, data)
            return []
        return [data]

    net.introduce(ea, eb)
    for node_ in (a, b):
        node_.tick(net.now)  # both initiate: the inits cross
    ts = fresh_timestamp(net)
    net.deliver(ATTACKER, ea, forged_init(b.identity, a.address, ts))
    net.deliver(ATTACKER, eb, forged_init(a.identity, b.address, ts))
    net.flush(tamper=relay)
    net.advance(3, tamper=relay)
    assert is_direct(a, b)
    peer_b, peer_a = a.peer(b.address), b.peer(a.address)
    assert peer_b is not None
    assert peer_a is not None
    assert (peer_b.endpoint, peer_a.endpoint) == (eb, ea)
    assert not relayed
    assert a.counters["drop_auth"] == b.counters["drop_auth"] == 1


def test_a_replayed_genuine_init_changes_nothing() -> None:
    """A recorded (validly signed) init, replayed from elsewhere after the session: stale, no answer."""
    net, a, ea, b, eb = established()
    initiator, responder = initiator_of(a, b)
    src = ea if initiator is a else eb
    dst = eb if initiator is a else ea
    init = next(data for s, _, data in net.log if s == src and data[0] == wire.MSG_HANDSHAKE_INIT)
    session = responder.peer(initiator.address).current  # type: ignore[union-attr]
    responder.outbox.clear()
    net.deliver(ATTACKER, dst, init)
    assert responder.counters["drop_stale_init"] == 1
    assert not responder.outbox
    assert responder.peer(initiator.address).current is session  # type: ignore[union-attr]


# --------------------------------------------------------------------------- rekeys
def test_a_lost_confirm_at_rekey_costs_no_packets() -> None:
    """The initiator keeps sending on the old session until the responder answers on the new one."""
    net, a, ea, b, eb = established()
    initiator, responder = initiator_of(a, b)
    er = eb if initiator is a else ea
    old = initiator.peer(responder.address).current  # type: ignore[union-attr]
    assert old is not None
    dropped: list[bytes] = []

    def drop_first_confirm(src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        if data[0] == wire.MSG_HANDSHAKE_CONFIRM and not dropped:
            dropped.append(data)
            return []
        return [data]

    net.advance(old.created_at + REKEY_AFTER_TIME - 1 - net.now)
    sent = 0
    for i in range(80):  # 4 s across the rekey, a packet every 50 ms
        packet = ipv6_packet(initiator.address, responder.address, i.to_bytes(4, "big"))
        out = initiator.send(packet, net.now)
        if out is not None:
            initiator.outbox.append(out)
        initiator.process_posted(net.now)
        sent += 1
        net.advance(0.05, step=0.05, tamper=drop_first_confirm)
    assert dropped  # the case under test did happen
    assert len(net.delivered[er]) == sent
    assert initiator.peer(responder.address).current is not old  # type: ignore[union-attr]


def delivered_fraction(rekeying: bool, loss: float, packets: int, seed: int = 7) -> float:
    """Packets a -> b, one every 0.2 s, through a network losing ``loss`` of all datagrams."""
    rng = random.Random(seed)
    net, a, _ea, b, eb = established()
    if not rekeying:
        for node_ in (a, b):
            peer = node_.peer((b if node_ is a else a).address)
            assert peer is not None
            assert peer.current is not None
            peer.current.created_at = 1e12  # never due

    def lossy(_src: Endpoint, _dst: Endpoint, data: bytes) -> list[bytes]:
        return [] if rng.random() < loss else [data]

    delivered = 0
    for i in range(packets):
        delivered += send_one(net, a, b, eb, i, lossy)
        net.advance(0.2, tamper=lossy)
    return delivered / packets


def test_rekeys_under_5_percent_loss_deliver_like_no_rekey() -> None:
    """Throughput across rekeys with 5% loss, against the same traffic on a link that does not rekey
    (measured in the same run): the rekeys cost nothing measurable."""
    with_rekeys = delivered_fraction(rekeying=True, loss=0.05, packets=3000)  # 600 s: five rekeys
    without = delivered_fraction(rekeying=False, loss=0.05, packets=3000)
    print(f"5% loss: delivered {with_rekeys:.3f} with rekeys, {without:.3f} without")
    assert with_rekeys >= without - 0.01


# --------------------------------------------------------------------------- beacons
def beacon_from(identity: Identity, timestamp_ns: int, port: int = 5582) -> beacon.Beacon:
    return beacon.decode(beacon.encode(identity, "peer", port, timestamp_ns))


def test_replayed_beacons_from_many_sources_cannot_crowd_out_the_endpoint_in_use() -> None:
    net, a, _ea, b, eb = established()
    latest = beacon_from(b.identity, 5_000)
    a.learn_beacon(latest, eb, net.now)  # the genuine one
    for i in range(40):  # the attacker replays it (and an older one) from many LAN addresses
        a.learn_beacon(latest, (f"198.18.1.{i}", 5582), net.now + 0.01 * i)
        a.learn_beacon(beacon_from(b.identity, 4_000), (f"198.18.2.{i}", 5582), net.now + 0.01 * i)
    peer = a.peer(b.address)
    assert peer is not None
    assert a.counters["drop_stale_beacon"] == 80
    assert peer.endpoint == eb
    assert eb in peer.candidates
    assert peer.ordered_candidates()[0] == eb
    assert len(peer.candidates) == 1


def test_fresh_beacons_from_an_attacker_never_evict_the_endpoint_in_use() -> None:
    """Even beacons the attacker wins the race with (one per beacon interval) only add unverified
    candidates, tried after the endpoints that answered, and the one in use is never evicted."""
    net, a, _ea, b, eb = established()
    for i in range(100):
        a.learn_beacon(beacon_from(b.identity, 10_000 + i), (f"198.18.1.{i}", 5582), net.now)
    peer = a.peer(b.address)
    assert peer is not None
    assert peer.endpoint == eb
    assert peer.ordered_candidates()[0] == eb
    net.advance(1)
    assert is_direct(a, b)
    assert peer.endpoint == eb


def test_the_proof_of_work_is_checked_before_the_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    key = SigningKey(failing_seed("beacon"))
    body_signer = Identity(key, bytes(key.verify_key), bytes(16))
    data = beacon.encode(body_signer, "junk", 5582, 1)
    verified = []

    def counting_verify(*args: object) -> bool:
        verified.append(args)
        return True

    monkeypatch.setattr(beacon_module, "verify_signature", counting_verify)
    with pytest.raises(ProtocolError, match="proof of work"):
        beacon.decode(data)
    assert not verified


# --------------------------------------------------------------------------- the peer table
def test_unauthenticated_inits_create_no_peers_and_lock_nobody_out() -> None:
    """With the whitelist off, thousands of inits from addresses the attacker cannot sign for (each from
    its own source, past the rate limit) leave no peer behind; a genuine new peer then connects."""
    net, a, ea, b, _eb = pair()
    for i in range(node_module.MAX_PEERS + 500):
        claimed = Identity(SigningKey(bytes(32)), os.urandom(32), b"\xfc\x94" + os.urandom(14))
        source = (f"198.18.{(i >> 8) & 0xFF}.{i & 0xFF}", 40000 + (i % 1000))
        net.deliver(source, ea, forged_init(claimed, a.address, fresh_timestamp(net)))
    a.outbox.clear()
    assert len(a.peers) == 0
    assert not a._responders
    b.add_static_endpoint(a.address, ea, net.now)
    net.advance(1)
    assert is_direct(a, b)


def test_signed_inits_from_many_identities_keep_bounded_pending_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attacker with many valid identities (whitelist off) can make the node answer, but each answer
    is a bounded pending state that expires, never a peer."""
    monkeypatch.setattr(node_module, "MAX_PENDING_RESPONSES", 8)
    net, a, ea, _b, _eb = pair()
    for i in range(20):
        sybil = Node(fixed_identity(f"sybil {i}"), lambda _a: True, wall_offset_ns=WALL_OFFSET_NS)
        sybil.add_static_endpoint(a.address, ea, net.now)
        sybil.tick(net.now)
        for _, data in sybil.outbox:
            net.deliver((f"198.18.3.{i}", 5582), ea, data)
    assert len(a._responders) == 8
    assert len(a.peers) == 0
    net.advance(HANDSHAKE_TIMEOUT + 0.5)
    assert not a._responders


def test_a_full_peer_table_makes_room_for_a_genuine_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "MAX_PEERS", 3)
    net = MemNet()
    a, ea = net.add(fixed_identity("node a"))
    strangers = [net.add(fixed_identity(f"stranger {i}")) for i in range(3)]
    for node_, _endpoint in strangers:
        node_.add_static_endpoint(a.address, ea, net.now)  # they call a; a never configured them
    net.advance(1)
    assert len(a.peers) == 3
    b, _eb = net.add(fixed_identity("node b"))
    b.add_static_endpoint(a.address, ea, net.now)
    net.advance(1)
    assert b.path_of(a.address) is PathKind.DIRECT
    assert a.path_of(b.address) is PathKind.DIRECT
    assert len(a.peers) == 3
    assert a.counters["peers_evicted"] >= 1


def test_peers_that_only_remote_input_created_expire() -> None:
    net = MemNet()
    a, ea = net.add(fixed_identity("node a"))
    stranger, es = net.add(fixed_identity("stranger 0"))
    stranger.add_static_endpoint(a.address, ea, net.now)
    net.advance(1)
    assert a.peer(stranger.address) is not None
    net.nodes.pop(es)  # it goes away for good
    net.advance(SESSION_IDLE_TIMEOUT + PEER_FORGET_AFTER + 10, step=1.0)
    assert a.peer(stranger.address) is None
    assert a.counters["peers_expired"] == 1


# --------------------------------------------------------------------------- whitelist removal
def whitelisted_pair() -> tuple[MemNet, Node, Endpoint, Node, Endpoint]:
    net = MemNet()
    a, ea = net.add(fixed_identity("node a"), whitelist_all=False)
    b, eb = net.add(fixed_identity("node b"), whitelist_all=False)
    net.allowed[ea].add(b.address)
    net.allowed[eb].add(a.address)
    return net, a, ea, b, eb


def test_removal_from_the_whitelist_forgets_the_peer_at_once_and_its_beacons_do_not_bring_it_back() -> None:
    net, a, ea, b, eb = whitelisted_pair()
    net.introduce(ea, eb)
    net.advance(0.5)
    assert is_direct(a, b)
    net.allowed[ea].discard(b.address)
    a.whitelist_changed(net.now)
    assert a.peer(b.address) is None
    assert not a._sessions
    a.learn_beacon(beacon_from(b.identity, 99_999), eb, net.now)
    assert a.peer(b.address) is None
    assert a.counters["drop_beacon_not_whitelisted"] == 1


@pytest.mark.parametrize("side", ["responder", "initiator"])
def test_a_handshake_finishing_after_the_removal_installs_no_session(side: str) -> None:
    net, a, ea, b, eb = whitelisted_pair()
    a.add_static_endpoint(b.address, eb, net.now)  # a initiates
    a.tick(net.now)
    ((_, init),) = list(a.outbox)
    a.outbox.clear()
    net.deliver(ea, eb, init)
    ((_, response),) = list(b.outbox)
    b.outbox.clear()
    if side == "initiator":
        net.allowed[ea].discard(b.address)  # a removes b while b's response is on its way
        net.deliver(eb, ea, response)
        assert a.peer(b.address) is None or a.peer(b.address).current is None  # type: ignore[union-attr]
        assert not a._sessions
        return
    net.deliver(eb, ea, response)
    ((_, confirm),) = [(d, x) for d, x in a.outbox if x[0] == wire.MSG_HANDSHAKE_CONFIRM]
    a.outbox.clear()
    net.allowed[eb].discard(a.address)  # b removes a while a's confirm is on its way
    b.whitelist_changed(net.now)
    net.deliver(ea, eb, confirm)
    assert b.peer(a.address) is None
    assert not b._sessions
    assert b.counters["drop_whitelist"] >= 1 or b.counters["drop_unexpected_confirm"] >= 1


def test_counters_stay_bounded_in_kind() -> None:
    """Sanity: all the above produce a handful of counter names, never one per attacker."""
    net, a, ea, b, _eb = established()
    for i in itertools.islice(itertools.count(), 200):
        net.deliver(
            (f"198.18.9.{i % 250}", 1000 + i), ea, forged_init(b.identity, a.address, fresh_timestamp(net))
        )
    assert len(a.counters) < 20
