"""The protocol engine of one node: every peer, session and handshake, fed with bytes and time.

Like aioquic's connection it does no I/O: the daemon gives it datagrams (``receive_data`` /
``receive_control``), packets from the TUN (``send``), beacons (``learn_beacon``) and the time
(``tick``); it answers with datagrams to send (return values and ``outbox``), packets to deliver
and events. ``now`` is a monotonic time in seconds chosen by the caller.

Concurrency contract (the daemon relies on it): ``send`` and ``receive_data`` form the hot path
and may run concurrently in two threads without a lock; every other method mutates control
state and must be called under one lock by the caller. The hot path only reads control state
and does single assignments or deque appends, which are atomic under the GIL.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass

from . import handshake, wire
from .beacon import Beacon
from .constants import (
    BEACON_CANDIDATE_TTL,
    HANDSHAKE_INIT_BURST,
    HANDSHAKE_INITS_PER_SECOND,
    HANDSHAKE_RETRY_INTERVAL,
    HANDSHAKE_RETRY_MAX_INTERVAL,
    HANDSHAKE_TIMEOUT,
    LATENCY_PROBE_INTERVAL,
    MAX_HEARD_BEACONS,
    MAX_PEERS,
    PATH_DEAD_AFTER,
    PREVIOUS_SESSION_GRACE,
    PROBE_TIMEOUT,
    RATE_LIMIT_TABLE_SIZE,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    SESSION_IDLE_TIMEOUT,
)
from .errors import ProtocolError
from .identity import Identity
from .peer import Candidate, CandidateSource, Endpoint, PathKind, Peer
from .session import Session

Datagram = tuple[Endpoint, bytes]


@dataclass(frozen=True, slots=True)
class PeerUp:
    address: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class PeerDown:
    address: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class PongReceived:
    address: bytes
    probe_id: bytes
    rtt_ms: float
    endpoint: Endpoint


Event = PeerUp | PeerDown | PongReceived


class _TokenBucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, now: float) -> None:
        self.tokens = HANDSHAKE_INIT_BURST
        self.updated = now

    def take(self, now: float) -> bool:
        refill = (now - self.updated) * HANDSHAKE_INITS_PER_SECOND
        self.tokens = min(HANDSHAKE_INIT_BURST, self.tokens + refill)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


# A beacon, where it came from and when.
_Heard = tuple[Beacon, Endpoint, float]


class Node:
    def __init__(
        self,
        identity: Identity,
        is_allowed: Callable[[bytes], bool],
        *,
        wall_offset_ns: int = 0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``is_allowed(address)`` is the whitelist; ``wall_offset_ns`` maps ``now`` to Unix time
        (used only for initiation timestamps, which must grow across restarts)."""
        self.identity = identity
        self.address = identity.address
        self.is_allowed = is_allowed
        self.wall_offset_ns = wall_offset_ns
        self._random = random_bytes
        self.peers: dict[bytes, Peer] = {}
        self._sessions: dict[int, Session] = {}
        self._initiations: dict[int, Peer] = {}
        self._responders: dict[int, Peer] = {}
        self._rate: dict[str, _TokenBucket] = {}
        self._last_timestamp_ns = 0
        self.outbox: collections.deque[Datagram] = collections.deque()
        self.events: collections.deque[Event] = collections.deque()
        self.counters: collections.Counter[str] = collections.Counter()
        # Beacons of peers not (yet) on the whitelist, newest last: when the user whitelists one of them the
        # handshake can start at once instead of after the next beacon. Bounded, so a flood costs nothing.
        self._heard: collections.OrderedDict[bytes, _Heard] = collections.OrderedDict()

    # ------------------------------------------------------------------ helpers
    def _drop(self, reason: str) -> None:
        self.counters["drop_" + reason] += 1

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._random(4), "big")
            if index and index not in self._sessions and index not in self._initiations and (
                index not in self._responders
            ):
                return index

    def _ephemeral(self) -> bytes:
        return self._random(32)

    def _timestamp_ns(self, now: float) -> int:
        ts = max(int(now * 1e9) + self.wall_offset_ns, self._last_timestamp_ns + 1)
        self._last_timestamp_ns = ts
        return ts

    def peer(self, address: bytes) -> Peer | None:
        return self.peers.get(address)

    def ensure_peer(self, address: bytes) -> Peer | None:
        """The peer for ``address``, created if there is room (bounded against floods)."""
        peer = self.peers.get(address)
        if peer is None:
            if len(self.peers) >= MAX_PEERS or address == self.address:
                return None
            peer = Peer(address)
            self.peers[address] = peer
        return peer

    # ------------------------------------------------------------------ hot path
    def send(self, packet: bytes, now: float) -> Datagram | None:
        """Seal an IPv6 packet read from the TUN; None if it cannot go now (queued or dropped)."""
        if len(packet) < wire.IPV6_HEADER_SIZE or packet[0] >> 4 != 6:
            self._drop("not_ipv6")
            return None
        dst = packet[24:40]
        peer = self.peers.get(dst)
        if peer is None or not self.is_allowed(dst):
            self._drop("no_peer" if peer is None else "whitelist")
            return None
        session = peer.current
        endpoint = peer.endpoint
        if session is None or endpoint is None or now - session.created_at >= REJECT_AFTER_TIME:
            peer.pending.append(packet)
            peer.wants_session = True
            return None
        datagram = session.seal(wire.compress_ipv6(packet, self.address, dst))
        session.last_sent = now
        peer.tx_bytes += len(packet)
        return endpoint, datagram

    def receive_data(self, datagram: bytes, endpoint: Endpoint, now: float) -> bytes | None:
        """Open a data frame; returns an IPv6 packet to deliver, or None. Never raises."""
        try:
            index, _ = wire.decode_data_header(datagram)
        except ProtocolError:
            self._drop("malformed")
            return None
        session = self._sessions.get(index)
        if session is None:
            self._drop("unknown_session")
            return None
        try:
            inner = session.open_(datagram)
        except ProtocolError as exc:
            self._drop("replay" if "replay" in str(exc) else "auth")
            return None
        peer = self.peers.get(session.peer_address)
        if peer is None or not self.is_allowed(peer.address):
            self._drop("whitelist")
            return None
        session.last_received = now
        peer.last_seen = now
        if not session.confirmed:
            session.confirmed = True
            peer.confirm_bytes = None
            self.events.append(PeerUp(peer.address, endpoint))
        if session is peer.current and peer.endpoint != endpoint:
            peer.endpoint = endpoint  # the peer roamed: follow authenticated traffic
            self._learn(peer, endpoint, CandidateSource.LEARNED, now)
        kind = inner[0]
        if kind == wire.INNER_IPV6_COMPRESSED:
            try:
                packet = wire.decompress_ipv6(inner[1:], peer.address, self.address)
            except ProtocolError:
                self._drop("malformed")
                return None
            peer.rx_bytes += len(packet)
            return packet
        if kind == wire.INNER_IPV6:
            packet = inner[1:]
            # A peer may only speak for its own address: no spoofed sources into our stack.
            if len(packet) < wire.IPV6_HEADER_SIZE or packet[8:24] != peer.address:
                self._drop("spoofed")
                return None
            # ... and only to us: nothing for other hosts or multicast groups enters through hnet0.
            if packet[24:40] != self.address:
                self._drop("wrong_destination")
                return None
            peer.rx_bytes += len(packet)
            return packet
        if kind == wire.INNER_PING and len(inner) == 1 + wire.PROBE_ID_SIZE:
            self.outbox.append((endpoint, session.seal(bytes([wire.INNER_PONG]) + inner[1:])))
            return None
        if kind == wire.INNER_PONG and len(inner) == 1 + wire.PROBE_ID_SIZE:
            probe = peer.probes.pop(inner[1:], None)
            if probe is not None:
                rtt_ms = (now - probe[0]) * 1000.0
                peer.rtt_ms = rtt_ms
                self.events.append(PongReceived(peer.address, inner[1:], rtt_ms, endpoint))
            return None
        if kind == wire.INNER_KEEPALIVE and len(inner) == 1:
            return None
        self._drop("malformed")
        return None

    # ------------------------------------------------------------------ control path
    def receive_control(self, datagram: bytes, endpoint: Endpoint, now: float) -> None:
        """Handle a handshake datagram (replies go to ``outbox``). Never raises."""
        if not datagram:
            self._drop("malformed")
            return
        kind = datagram[0]
        try:
            if kind == wire.MSG_HANDSHAKE_INIT:
                self._on_init(datagram, endpoint, now)
            elif kind == wire.MSG_HANDSHAKE_RESPONSE:
                self._on_response(datagram, endpoint, now)
            elif kind == wire.MSG_HANDSHAKE_CONFIRM:
                self._on_confirm(datagram, endpoint, now)
            elif kind == wire.MSG_DATA:
                self._drop("misrouted")
            else:
                self._drop("unknown_type")
        except ProtocolError:
            self._drop("handshake")

    def _rate_ok(self, endpoint: Endpoint, now: float) -> bool:
        bucket = self._rate.get(endpoint[0])
        if bucket is None:
            if len(self._rate) >= RATE_LIMIT_TABLE_SIZE:
                self._rate.clear()  # crude but bounded; legitimate peers refill at once
            bucket = self._rate[endpoint[0]] = _TokenBucket(now)
        return bucket.take(now)

    def _on_init(self, datagram: bytes, endpoint: Endpoint, now: float) -> None:
        if not self._rate_ok(endpoint, now):
            self._drop("rate_limited")
            return
        init = wire.decode_init(datagram)
        if init.responder_address != self.address:
            self._drop("not_for_us")
            return
        if not self.is_allowed(init.initiator_address):
            self._drop("whitelist")
            return
        peer = self.ensure_peer(init.initiator_address)
        if peer is None:
            self._drop("too_many_peers")
            return
        if init.timestamp_ns <= peer.last_init_timestamp:
            self._drop("stale_init")
            return
        pending = peer.responder
        if pending is not None and pending.timestamp_ns == init.timestamp_ns and pending.remote_index == (
            init.sender_index
        ):
            self.outbox.append((endpoint, pending.response_bytes))  # retransmitted init: same answer
            return
        if peer.initiation is not None:
            # Simultaneous open: the lower address keeps its initiation, the higher one answers.
            if self.address < peer.address:
                self._drop("simultaneous_open")
                if endpoint != peer.initiation_endpoint:
                    # Their init came from elsewhere than where ours went (a stale endpoint, a restarted peer
                    # on a new port): the peer is reachable there, so send our init there too.
                    peer.initiation_endpoint = endpoint
                    self.outbox.append((endpoint, peer.initiation.init_bytes))
                return
            self._abandon_initiation(peer)
        response, state = handshake.respond(self.identity, datagram, self._new_index(), self._ephemeral())
        if peer.responder is not None:
            self._responders.pop(peer.responder.local_index, None)
        peer.responder = state
        peer.responder_started = now
        self._responders[state.local_index] = peer
        self.outbox.append((endpoint, response))

    def _on_response(self, datagram: bytes, endpoint: Endpoint, now: float) -> None:
        receiver = int.from_bytes(datagram[8:12], "big") if len(datagram) >= 12 else -1
        peer = self._initiations.get(receiver)
        if peer is None or peer.initiation is None:
            self._drop("unexpected_response")
            return
        confirm, keys = handshake.finish_initiator(self.identity, peer.initiation, datagram)
        self._initiations.pop(receiver, None)
        peer.initiation = None
        peer.public_key = keys.peer_public_key
        # The confirm must leave before the queued packets _install seals: the responder knows the
        # session index only once the confirm arrives, and drops data for an unknown index.
        self.outbox.append((endpoint, confirm))
        self._install(peer, Session(keys, now), endpoint, now)
        peer.confirm_bytes = confirm
        peer.initiation_sent = now
        peer.initiation_started = now

    def _on_confirm(self, datagram: bytes, endpoint: Endpoint, now: float) -> None:
        receiver = int.from_bytes(datagram[4:8], "big") if len(datagram) >= 8 else -1
        peer = self._responders.get(receiver)
        if peer is None or peer.responder is None:
            session = self._sessions.get(receiver)
            # Only an answerable confirm spends a handshake token (last test): junk must not drain the bucket.
            if (
                session is not None
                and not session.is_initiator
                and len(datagram) == wire.CONFIRM_SIZE
                and self._rate_ok(endpoint, now)
            ):
                # Our keepalive answering the first confirm was lost: answer the retransmit (rate-limited:
                # the confirm is not authenticated here, so it must not become a reflector).
                self.outbox.append((endpoint, session.seal(bytes([wire.INNER_KEEPALIVE]))))
            else:
                self._drop("unexpected_confirm")
            return
        state = peer.responder
        keys = handshake.finish_responder(state, datagram)
        if state.timestamp_ns <= peer.last_init_timestamp:
            self._drop("stale_init")
            return
        peer.last_init_timestamp = state.timestamp_ns
        self._responders.pop(receiver, None)
        peer.responder = None
        peer.public_key = keys.peer_public_key
        session = Session(keys, now)
        self._install(peer, session, endpoint, now)
        self.events.append(PeerUp(peer.address, endpoint))
        # Tell the initiator we have the keys, so its session becomes confirmed at once.
        self.outbox.append((endpoint, session.seal(bytes([wire.INNER_KEEPALIVE]))))

    def _install(self, peer: Peer, session: Session, endpoint: Endpoint, now: float) -> None:
        if peer.previous is not None:
            self._sessions.pop(peer.previous.local_index, None)
        peer.previous = peer.current
        peer.previous_expires = now + PREVIOUS_SESSION_GRACE
        self._sessions[session.local_index] = session
        # Order matters for the lock-free data path: endpoint first, then the session.
        peer.endpoint = endpoint
        peer.current = session
        peer.last_handshake = now
        peer.last_seen = now
        peer.handshake_backoff = 0.0
        peer.wants_session = False
        peer.next_probe_at = now  # measure latency of the new path right away
        self._learn(peer, endpoint, CandidateSource.LEARNED, now)
        while peer.pending:
            packet = peer.pending.popleft()
            if peer.current is session:
                self.outbox.append(
                    (endpoint, session.seal(wire.compress_ipv6(packet, self.address, peer.address)))
                )
                peer.tx_bytes += len(packet)

    def _abandon_initiation(self, peer: Peer) -> None:
        if peer.initiation is not None:
            self._initiations.pop(peer.initiation.local_index, None)
        peer.initiation = None

    def _learn(self, peer: Peer, endpoint: Endpoint, source: CandidateSource, now: float) -> None:
        candidate = peer.candidates.get(endpoint)
        if candidate is None:
            if len(peer.candidates) >= 16:
                oldest = min(peer.candidates.values(), key=lambda c: c.last_seen)
                del peer.candidates[oldest.endpoint]
            peer.candidates[endpoint] = Candidate(endpoint, source, now)
        else:
            candidate.last_seen = now
            if source is not CandidateSource.LEARNED:
                candidate.source = source

    # ------------------------------------------------------------------ inputs from the daemon
    def learn_beacon(self, beacon: Beacon, endpoint: Endpoint, now: float) -> None:
        """A verified beacon arrived from ``endpoint``: remember it as a way to reach the peer."""
        if beacon.address == self.address:
            return
        if not self.is_allowed(beacon.address) and beacon.address not in self.peers:
            self._drop("beacon_not_whitelisted")
            self._heard.pop(beacon.address, None)
            self._heard[beacon.address] = (beacon, endpoint, now)
            if len(self._heard) > MAX_HEARD_BEACONS:
                self._heard.popitem(last=False)
            return
        self._heard.pop(beacon.address, None)
        peer = self.ensure_peer(beacon.address)
        if peer is None:
            return
        peer.hostname = beacon.hostname or peer.hostname
        peer.public_key = beacon.public_key
        source = CandidateSource.LINK_LOCAL if "%" in endpoint[0] else CandidateSource.LAN
        self._learn(peer, endpoint, source, now)

    def whitelist_changed(self, now: float) -> None:
        """The whitelist changed: peers heard recently that are now allowed are handshaken right away."""
        for address in [a for a in self._heard if self.is_allowed(a)]:
            beacon, endpoint, seen = self._heard.pop(address)
            if now - seen > BEACON_CANDIDATE_TTL:
                continue
            self.learn_beacon(beacon, endpoint, seen)
            peer = self.peers.get(address)
            if peer is not None:
                peer.next_handshake_at = now

    def add_static_endpoint(self, address: bytes, endpoint: Endpoint, now: float) -> None:
        peer = self.ensure_peer(address)
        if peer is not None:
            self._learn(peer, endpoint, CandidateSource.STATIC, now)
            # Static endpoints never expire: keep them fresh.
            peer.candidates[endpoint].last_seen = float("inf")

    def forget_peer(self, address: bytes) -> None:
        """Drop all state of a peer (e.g. removed from the whitelist)."""
        peer = self.peers.pop(address, None)
        if peer is None:
            return
        for session in (peer.current, peer.previous):
            if session is not None:
                self._sessions.pop(session.local_index, None)
        self._abandon_initiation(peer)
        if peer.responder is not None:
            self._responders.pop(peer.responder.local_index, None)
        peer.current = peer.previous = None
        self.events.append(PeerDown(address, "forgotten"))

    def ping(self, address: bytes, now: float) -> bytes | None:
        """Send an on-demand probe; returns its id, or None when there is no session."""
        peer = self.peers.get(address)
        if peer is None or peer.current is None or peer.endpoint is None:
            if peer is not None and self.is_allowed(address):
                peer.wants_session = True
            return None
        return self._probe(peer, now, on_demand=True)

    def _probe(self, peer: Peer, now: float, on_demand: bool = False) -> bytes | None:
        session, endpoint = peer.current, peer.endpoint
        if session is None or endpoint is None:
            return None
        probe_id = self._random(wire.PROBE_ID_SIZE)
        peer.probes[probe_id] = (now, on_demand)
        self.outbox.append((endpoint, session.seal(bytes([wire.INNER_PING]) + probe_id)))
        return probe_id

    # ------------------------------------------------------------------ timers
    def tick(self, now: float) -> None:
        """Run every timer that is due: retries, rekeys, probes, expiry. Call often (≤ 0.25 s apart)."""
        for peer in list(self.peers.values()):
            self._tick_peer(peer, now)

    def _tick_peer(self, peer: Peer, now: float) -> None:
        allowed = self.is_allowed(peer.address)
        if peer.previous is not None and now >= peer.previous_expires:
            self._sessions.pop(peer.previous.local_index, None)
            peer.previous = None
        for endpoint, candidate in list(peer.candidates.items()):
            if now - candidate.last_seen > BEACON_CANDIDATE_TTL and endpoint != peer.endpoint:
                del peer.candidates[endpoint]
        for probe_id, (sent, _) in list(peer.probes.items()):
            if now - sent > PROBE_TIMEOUT:
                del peer.probes[probe_id]
        if peer.responder is not None and now - peer.responder_started > HANDSHAKE_TIMEOUT:
            self._responders.pop(peer.responder.local_index, None)
            peer.responder = None

        session = peer.current
        if session is not None:
            age = now - session.created_at
            idle = now - session.last_received
            if not allowed or age >= REJECT_AFTER_TIME or idle >= SESSION_IDLE_TIMEOUT:
                if not allowed:
                    reason = "not whitelisted"
                else:
                    reason = "expired" if idle < SESSION_IDLE_TIMEOUT else "idle"
                self._sessions.pop(session.local_index, None)
                peer.current = None
                peer.endpoint = None
                peer.rtt_ms = None
                self.events.append(PeerDown(peer.address, reason))
                session = None
            elif not session.confirmed:
                if now - peer.initiation_started > HANDSHAKE_TIMEOUT:
                    self._sessions.pop(session.local_index, None)
                    peer.current = None
                    peer.confirm_bytes = None
                    session = None
                elif peer.confirm_bytes and now - peer.initiation_sent >= HANDSHAKE_RETRY_INTERVAL:
                    assert peer.endpoint is not None
                    self.outbox.append((peer.endpoint, peer.confirm_bytes))
                    peer.initiation_sent = now

        if not allowed:
            self._abandon_initiation(peer)
            peer.pending.clear()
            return

        if session is not None and session.confirmed:
            if now >= peer.next_probe_at:
                self._probe(peer, now)
                peer.next_probe_at = now + LATENCY_PROBE_INTERVAL
            rekey_at = REKEY_AFTER_TIME if session.is_initiator else REKEY_AFTER_TIME + 2 * HANDSHAKE_TIMEOUT
            stale_path = now - session.last_received >= PATH_DEAD_AFTER
            if peer.initiation is not None:
                # A rekey (or path probe) init can be lost too: retransmit it, or give up and retry later.
                self._continue_initiation(peer, now)
            elif (
                now - session.created_at >= rekey_at
                or session.sent_messages >= REKEY_AFTER_MESSAGES
                or (stale_path and now >= peer.next_handshake_at)
            ):
                self._initiate(peer, now, rotate=stale_path)
            return

        # No usable session: handshake when someone wants traffic or the peer is a known fleet member.
        if peer.initiation is not None:
            self._continue_initiation(peer, now)
            return
        if peer.candidates and now >= peer.next_handshake_at and session is None:
            self._initiate(peer, now, rotate=True)

    def _continue_initiation(self, peer: Peer, now: float) -> None:
        """Retransmit a pending init, or abandon it after HANDSHAKE_TIMEOUT and back off."""
        assert peer.initiation is not None
        if now - peer.initiation_started > HANDSHAKE_TIMEOUT:
            self._abandon_initiation(peer)
            peer.handshake_backoff = min(
                max(peer.handshake_backoff * 2, HANDSHAKE_RETRY_INTERVAL), HANDSHAKE_RETRY_MAX_INTERVAL
            )
            peer.next_handshake_at = now + peer.handshake_backoff
        elif now - peer.initiation_sent >= HANDSHAKE_RETRY_INTERVAL:
            assert peer.initiation_endpoint is not None
            self.outbox.append((peer.initiation_endpoint, peer.initiation.init_bytes))
            peer.initiation_sent = now

    def _initiate(self, peer: Peer, now: float, rotate: bool) -> None:
        endpoints = peer.ordered_candidates()
        if not endpoints:
            return
        if rotate:
            endpoint = endpoints[peer.candidate_cursor % len(endpoints)]
            peer.candidate_cursor += 1
        else:
            endpoint = peer.endpoint if peer.endpoint in peer.candidates else endpoints[0]
        assert endpoint is not None
        data, state = handshake.start(
            self.identity, peer.address, self._new_index(), self._timestamp_ns(now), self._ephemeral()
        )
        peer.initiation = state
        peer.initiation_endpoint = endpoint
        peer.initiation_started = now
        peer.initiation_sent = now
        peer.next_handshake_at = now + HANDSHAKE_TIMEOUT
        self._initiations[state.local_index] = peer
        self.outbox.append((endpoint, data))

    def next_timer(self, now: float) -> float:
        """Latest time by which ``tick`` should run again."""
        deadline = now + 1.0
        for peer in self.peers.values():
            if peer.wants_session or peer.initiation is not None or (
                peer.current is not None and not peer.current.confirmed
            ):
                deadline = min(deadline, now + 0.05)
        return deadline

    # ------------------------------------------------------------------ status
    def path_of(self, address: bytes) -> PathKind:
        peer = self.peers.get(address)
        return PathKind.NONE if peer is None else peer.path
