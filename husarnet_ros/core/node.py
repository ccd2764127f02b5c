"""The protocol engine of one node: every peer, session, handshake and path, fed with bytes and time.

Like aioquic's connection it does no I/O: the daemon gives it datagrams, packets read from the TUN,
beacons and the time; it answers with datagrams to send, packets to deliver and events. ``now`` is a
monotonic time in seconds chosen by the caller.

Who may call what (the daemon relies on it; see also core/peer.py and core/session.py):

- The **send thread** calls ``send``, ``stage_packet`` and ``send_large`` (packets read from the TUN ->
  datagrams, or None).
- The **receive thread** calls ``receive`` (a datagram from the socket -> a packet for the TUN, or None)
  and sends what it then finds in ``replies`` (pongs).
- Everything else is the **control loop**'s: ``process_posted``, ``tick``, ``learn_beacon``, the whitelist,
  ``ping``, ``network_changed``, and draining ``outbox`` and ``events``. It owns every table.

The two data-plane threads never change a shared collection: they look things up (single dict reads, atomic
under the GIL), write the few scalar fields that are theirs alone, and *post* what they learn (a handshake
datagram, an endpoint that authenticated, a pong, a packet that needs a session) to bounded queues that the
control loop drains in ``process_posted``. So no table is iterated by one thread while another resizes it.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass

from . import aead, handshake, offload, wire
from .address import is_overlay
from .beacon import Beacon
from .constants import (
    BEACON_CANDIDATE_TTL,
    FEATURES_ATTEMPTS,
    FEATURES_RETRY_INTERVAL,
    HANDSHAKE_RETRY_INTERVAL,
    HANDSHAKE_RETRY_MAX_INTERVAL,
    HANDSHAKE_TIMEOUT,
    LATENCY_PROBE_INTERVAL,
    MAX_CANDIDATES_PER_PEER,
    MAX_HEARD_BEACONS,
    MAX_INIT_TARGETS,
    MAX_PATH_DATAGRAM,
    MAX_PEERS,
    MAX_PENDING_RESPONSES,
    MAX_POSTED_EVENTS,
    MAX_POSTED_HANDSHAKES,
    MAX_PUNCH_PROBES,
    MAX_UPGRADE_PROBES,
    MIN_SIZE_PROBE,
    PATH_DEAD_AFTER,
    PATH_DEAD_PINGS,
    PATH_FAST_PROBING,
    PATH_HANDSHAKE_AFTER,
    PATH_PING_INTERVAL,
    PATH_PROBE_INTERVAL,
    PATH_PROBE_MAX_INTERVAL,
    PATH_QUIET_AFTER,
    PEER_FORGET_AFTER,
    PREVIOUS_SESSION_GRACE,
    PROBE_TIMEOUT,
    PUNCH_DURATION,
    PUNCH_INTERVAL,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    SESSION_IDLE_TIMEOUT,
    SIZE_PROBE_INTERVAL,
)
from .errors import AuthenticationError, ProtocolError, ReplayError
from .events import (
    DatagramSizeFound,
    EndpointSeen,
    Event,
    InternalError,
    NeedsSession,
    PathChanged,
    PathLost,
    PeerDown,
    PeerUp,
    PongReceived,
    PongSeen,
    Posted,
    SessionWorks,
)
from .handshake import ResponderState
from .identity import Identity
from .peer import (
    Candidate,
    CandidateSource,
    Endpoint,
    PathKind,
    Peer,
    Probe,
    ProbePurpose,
    Route,
    endpoint_rank,
    is_relay,
    relay_endpoint,
)
from .ratelimit import RateLimiter
from .session import Session

Datagram = tuple[Endpoint, bytes]
# Probes whose lack of answer says nothing about whether the route works: a candidate's (another endpoint),
# and a size probe's (a datagram larger than the path may carry, which is what it asks).
_NOT_LIVENESS = (ProbePurpose.CANDIDATE, ProbePurpose.DATAGRAM_SIZE)
# Datagrams for one endpoint back to back in one buffer, each of the given size (the last may be shorter).
Batch = tuple[Endpoint, memoryview, int]
# A packet turned into an inner frame in place, to be sealed later: (session, endpoint, where its datagram
# starts, the inner frame's size).
Staged = tuple[Session, Endpoint, int, int]
# Free bytes ``stage_packet`` needs in front of a packet: a data header and the inner type byte.
STAGE_HEADROOM = wire.DATA_HEADER_SIZE + 1


@dataclass(slots=True)
class _Pending:
    """A response we sent, waiting for its confirm."""

    state: ResponderState
    started: float


class _OnePacket:
    """The sink of ``receive_data``: keeps the one packet a datagram carries, whole."""

    __slots__ = ("packet",)

    def __init__(self) -> None:
        self.packet: bytes | None = None

    def add(self, packet: bytes) -> None:
        self.packet = packet

    def add_parts(
        self, ip8: offload.Buffer, src: bytes, dst: bytes, l4: offload.Buffer, partial: bool
    ) -> None:
        whole = b"".join((ip8, src, dst, l4))
        self.packet = offload.PartialChecksum(whole) if partial else whole

    def flush(self) -> None:
        pass


# A beacon, where it came from and when.
_Heard = tuple[Beacon, Endpoint, float]

_KEEPALIVE = bytes([wire.INNER_KEEPALIVE])


class Node:
    def __init__(
        self,
        identity: Identity,
        is_allowed: Callable[[bytes], bool],
        *,
        is_pinned: Callable[[bytes], bool] | None = None,
        wall_offset_ns: int = 0,
        timestamp_floor_ns: int = 0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``is_allowed(address)`` is the whitelist (read by every thread); ``is_pinned(address)``: peers the
        user configured, never expired or evicted (default: the allowed ones when the whitelist is on, which
        the caller knows; here: none). ``wall_offset_ns`` maps ``now`` to Unix time for the timestamps of
        inits and beacons, which peers accept only when they grow; ``timestamp_floor_ns`` (persisted by the
        daemon) keeps them growing across restarts when the wall clock went back."""
        self.identity = identity
        self.address = identity.address
        self.is_allowed = is_allowed
        self.is_pinned = is_pinned or (lambda _address: False)
        # The largest UDP payload the local interface lets a datagram to an endpoint have (0: unknown), asked
        # of the kernel by the daemon (control loop only). Only a size a probe shows to arrive is ever used.
        self.underlay_limit: Callable[[Endpoint], int] = lambda _endpoint: 0
        self.wall_offset_ns = wall_offset_ns
        self._random = random_bytes
        # --- control loop's
        self.peers: dict[bytes, Peer] = {}
        self._sessions: dict[int, Session] = {}  # local index -> session (current, next and previous of all)
        self._initiations: dict[int, Peer] = {}
        self._responders: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._responder_of: dict[bytes, int] = {}  # peer address -> index of its pending response
        self._rate = RateLimiter()
        self._last_timestamp_ns = timestamp_floor_ns
        self.outbox: collections.deque[Datagram] = collections.deque()
        self.events: collections.deque[Event] = collections.deque()
        self.control_counters: collections.Counter[str] = collections.Counter()
        # Beacons of peers not (yet) on the whitelist, newest last: when the user whitelists one of them the
        # handshake can start at once instead of after the next beacon. Bounded, so a flood costs nothing.
        self._heard: collections.OrderedDict[bytes, _Heard] = collections.OrderedDict()
        # --- channels from the data-plane threads (appended there, drained by the control loop)
        self._posted: collections.deque[Posted] = collections.deque()
        self._posted_handshakes: collections.deque[tuple[bytes, Endpoint, float]] = collections.deque()
        # --- the send thread's
        self.tx_counters: collections.Counter[str] = collections.Counter()
        self._tx_buffer = bytearray(0)  # send_large builds its datagrams here
        self._tx_base = aead.pointer(self._tx_buffer)
        # --- the receive thread's
        self.rx_counters: collections.Counter[str] = collections.Counter()
        self.replies: collections.deque[Datagram] = collections.deque()

    # ------------------------------------------------------------------ helpers
    @property
    def counters(self) -> collections.Counter[str]:
        """All counters (control loop, send and receive threads) added up; a copy."""
        total: collections.Counter[str] = collections.Counter()
        for part in (self.control_counters, self.tx_counters, self.rx_counters):
            total.update(dict(part))  # dict() copies in one step, whatever the owning thread does meanwhile
        return total

    def _drop(self, reason: str) -> None:
        self.control_counters["drop_" + reason] += 1

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._random(4), "big")
            if (
                index
                and index not in self._sessions
                and index not in self._initiations
                and (index not in self._responders)
            ):
                return index

    def _ephemeral(self) -> bytes:
        return self._random(32)

    def next_timestamp_ns(self, now: float) -> int:
        """A timestamp for an init or a beacon: Unix time in ns, but always above every one issued before
        (and above the floor given at start), whatever the wall clock does."""
        ts = max(int(now * 1e9) + self.wall_offset_ns, self._last_timestamp_ns + 1)
        self._last_timestamp_ns = ts
        return ts

    @property
    def last_timestamp_ns(self) -> int:
        return self._last_timestamp_ns

    def peer(self, address: bytes) -> Peer | None:
        return self.peers.get(address)

    def _pinned(self, peer: Peer) -> bool:
        return self.is_pinned(peer.address) or any(
            c.source is CandidateSource.STATIC for c in peer.candidates.values()
        )

    def _admit_peer(self, address: bytes, now: float) -> Peer | None:
        """The peer for ``address``, created if needed. When the table is full, the least useful unpinned
        peer makes room (one without a session first, then the longest inactive), so peers that remote input
        created can never lock a genuine new peer out; None only if every peer is pinned."""
        peer = self.peers.get(address)
        if peer is not None:
            return peer
        if address == self.address or not is_overlay(address):
            return None
        if len(self.peers) >= MAX_PEERS:
            victims = [p for p in self.peers.values() if not self._pinned(p)]
            if not victims:
                self._drop("too_many_peers")
                return None
            victim = min(victims, key=lambda p: (p.route is not None, p.last_activity))
            self.forget_peer(victim.address, reason="evicted (peer table full)")
            self.control_counters["peers_evicted"] += 1
        peer = Peer(address, last_activity=now)
        self.peers[address] = peer
        return peer

    # ------------------------------------------------------------------ hot path: send thread
    def send(self, packet: bytes | bytearray, now: float) -> Datagram | None:
        """Seal an IPv6 packet read from the TUN; None if it cannot go now (handed to the control loop)."""
        found = self._route_for(packet, now)
        if found is None:
            return None
        peer, route = found
        return self._seal_one(
            peer, route, wire.compress_ipv6(packet, self.address, peer.address), packet, now
        )

    def stage_packet(
        self,
        buffer: bytearray,
        at: int,
        length: int,
        flags: int,
        csum_start: int,
        csum_offset: int,
        now: float,
    ) -> Staged | None:
        """``send`` without a copy, for a batch sealed later (core/send_batch.py): the packet of ``length``
        bytes at ``buffer[at:]`` (``flags`` and the checksum fields from its virtio header) is turned in place
        into the inner frame, compressed when it can be. A partial checksum (``NEEDS_CSUM``) goes as it is to
        a peer that takes partial checksums, else it is completed here. Needs ``STAGE_HEADROOM`` free bytes in
        front and ``TAG_SIZE`` behind. Returns (session, endpoint, datagram start, inner size) for
        ``Session.seal_in_place``, or None if it cannot go now (handed to the control loop, as in
        ``send``)."""
        packet = memoryview(buffer)[at : at + length]
        needs_csum = flags & offload.VNET_F_NEEDS_CSUM

        def whole() -> bytearray:  # what waits for a session goes out later like any packet: complete
            copy = bytearray(packet)
            if needs_csum:
                offload.finish_checksum(copy, csum_start, csum_offset)
            return copy

        found = self._route_for(packet, now, whole)
        if found is None:
            return None
        peer, route = found
        session = route.session
        compressed = wire.can_compress(packet, self.address, peer.address)
        kind = wire.INNER_IPV6_COMPRESSED if compressed else wire.INNER_IPV6
        if needs_csum:
            if (
                compressed
                and session.peer_features & wire.FEATURE_PARTIAL_CHECKSUM
                and csum_start + csum_offset == offload.partial_checksum_offset(packet)
            ):
                kind = wire.INNER_IPV6_PARTIAL
            else:
                offload.finish_checksum(packet, csum_start, csum_offset)
        if compressed:  # the addresses go: the header's first 8 bytes move up against the payload
            buffer[at + 32 : at + 40] = buffer[at : at + 8]
            inner = at + 31
        else:
            inner = at - 1
        buffer[inner] = kind
        self._note_sent(peer, session, length, now)
        return session, route.endpoint, inner - wire.DATA_HEADER_SIZE, at + length - inner

    def send_large(self, packet: memoryview, l4_start: int, mss: int, now: float) -> Batch | None:
        """Cut a TSO packet (TCP over IPv6, up to 64 KB) into segments of ``mss`` bytes and seal each in its
        own datagram (its own nonce and counter): a lost datagram costs one segment. Checksums are left
        partial for a peer that takes them. None if they cannot go now; else the datagrams back to back in
        one buffer (valid until the next call), for a GSO send."""
        count = offload.tcp_segment_count(packet, l4_start, mss)  # ProtocolError if malformed
        found = self._route_for(packet, now, lambda: offload.tcp_segments(packet, l4_start, mss)[0])
        if found is None:
            return None
        peer, route = found
        session = route.session
        compressed = wire.can_compress(packet, self.address, peer.address)
        partial = bool(
            session.peer_features & wire.FEATURE_PARTIAL_CHECKSUM
            and compressed
            and l4_start == wire.IPV6_HEADER_SIZE
        )
        kind = (
            wire.INNER_IPV6_PARTIAL
            if partial
            else wire.INNER_IPV6_COMPRESSED
            if compressed
            else wire.INNER_IPV6
        )
        tcp_header = (packet[l4_start + 12] >> 4) * 4
        if partial and route.datagram_limit and session.peer_features & wire.FEATURE_LARGE_SEGMENTS:
            # The path was shown to carry larger datagrams than the overlay MTU makes: fewer, larger segments
            # (one AEAD call each), still one segment per datagram; the receiver's TCP takes any size. Whole
            # multiples of the kernel's segment size, so that what the receiver acknowledges selectively
            # (SACK) falls on the sender's segment boundaries: cut anywhere else, a link that reorders made
            # the sender retransmit hundreds of segments that had arrived (test_dataplane_paths).
            larger = (route.datagram_limit - wire.SEGMENT_OVERHEAD - tcp_header) // mss * mss
            if larger > mss:
                mss = larger
                count = offload.tcp_segment_count(packet, l4_start, mss)
                self.tx_counters["tso_path_sized"] += 1
        # Room per datagram: data header, kind byte, the IPv6 header (without its addresses when compressed)
        # and extension headers, the TCP header, a segment, the tag.
        ip_room = l4_start - 32 if compressed else l4_start
        stride = wire.DATA_HEADER_SIZE + 1 + ip_room + tcp_header + mss + wire.TAG_SIZE
        if len(self._tx_buffer) < count * stride:
            self._tx_buffer = bytearray(count * stride)
            self._tx_base = aead.pointer(self._tx_buffer)
        out, base = self._tx_buffer, self._tx_base
        try:
            if partial:  # between our own nodes: every header built once, then copied
                count, _, last = offload.write_partial_segments(
                    out, wire.DATA_HEADER_SIZE, stride, kind, packet, mss
                )
                total = session.seal_run(out, base, 0, count, stride, last)
            else:
                total = self._seal_segments(
                    session, out, base, kind, compressed, packet, l4_start, mss, count
                )
        except ProtocolError:  # the counter ran out (as in send): never in practice, rekeyed long before
            self._post(
                NeedsSession(peer, bytes(offload.tcp_segments(packet, l4_start, mss)[0])), self.tx_counters
            )
            return None
        self._note_sent(peer, session, len(packet), now)
        self.tx_counters["tso_segments"] += count
        return route.endpoint, memoryview(out)[:total], min(stride, total)

    @staticmethod
    def _seal_segments(
        session: Session,
        out: bytearray,
        base: aead.Pointer,
        kind: int,
        compressed: bool,
        packet: memoryview,
        l4_start: int,
        mss: int,
        count: int,
    ) -> int:
        """``send_large`` for a peer without partial checksums (or a packet with extension headers or other
        addresses): segments with full checksums, one after the other into ``out``; their total length."""
        nonces = memoryview(os.urandom(wire.NONCE_SIZE * count))
        seal, pos = session.seal_in_place, 0
        for number, (headers, chunk) in enumerate(offload.tcp_segment_parts(packet, l4_start, mss)):
            inner = pos + wire.DATA_HEADER_SIZE
            out[inner] = kind
            head = headers[:8] + headers[40:] if compressed else headers
            body = inner + 1 + len(head)
            out[inner + 1 : body] = head
            end = body + len(chunk)
            out[body:end] = chunk
            nonce = nonces[number * wire.NONCE_SIZE : (number + 1) * wire.NONCE_SIZE]
            pos += seal(out, base, pos, end - inner, nonce)
        return pos

    def _seal_one(
        self, peer: Peer, route: Route, inner: bytes, packet: bytes | bytearray, now: float
    ) -> Datagram | None:
        try:
            datagram = route.session.seal(inner)
        except ProtocolError:  # counter exhausted (never in practice: the session is rekeyed long before)
            self._post(NeedsSession(peer, bytes(packet)), self.tx_counters)
            return None
        self._note_sent(peer, route.session, len(packet), now)
        return route.endpoint, datagram

    def _route_for(
        self,
        packet: bytes | bytearray | memoryview,
        now: float,
        queued: Callable[[], bytes | bytearray | memoryview] | None = None,
    ) -> tuple[Peer, Route] | None:
        """The peer and route for a packet read from the TUN, or None (counted). A missing session is asked of
        the control loop, with a packet to send once it exists: ``packet`` itself, or what ``queued`` makes of
        it (a whole packet, where ``packet`` is a partial or a large one)."""
        if len(packet) < wire.IPV6_HEADER_SIZE or packet[0] >> 4 != 6:
            self.tx_counters["drop_not_ipv6"] += 1
            return None
        dst = bytes(packet[24:40])
        peer = self.peers.get(dst)
        if peer is None:
            self.tx_counters["drop_no_peer"] += 1
            return None
        if not self.is_allowed(dst):
            self.tx_counters["drop_whitelist"] += 1
            return None
        route = peer.route
        if route is None or now - route.session.created_at >= REJECT_AFTER_TIME:
            first = queued() if queued is not None else packet
            self._post(NeedsSession(peer, bytes(first)), self.tx_counters)
            return None
        return peer, route

    @staticmethod
    def _note_sent(peer: Peer, session: Session, size: int, now: float) -> None:
        if session.first_unanswered_send <= session.last_received:
            session.first_unanswered_send = now
        peer.tx_bytes += size

    def _post(self, event: Posted, counters: collections.Counter[str]) -> None:
        # The length check races only with the control loop shortening the queue: the bound holds.
        if len(self._posted) < MAX_POSTED_EVENTS:
            self._posted.append(event)
        else:
            counters["drop_posted_overflow"] += 1

    # ------------------------------------------------------------------ hot path: receive thread
    def receive(self, datagram: bytes, endpoint: Endpoint, now: float) -> bytes | None:
        """A datagram from the socket: a data frame is opened here (the packet to deliver, or None);
        anything else is handed to the control loop (``process_posted``)."""
        if datagram and datagram[0] == wire.MSG_DATA:
            return self.receive_data(datagram, endpoint, now)
        if len(self._posted_handshakes) < MAX_POSTED_HANDSHAKES:
            self._posted_handshakes.append((datagram, endpoint, now))
        else:
            self.rx_counters["drop_handshake_queue_full"] += 1
        return None

    def receive_data(self, datagram: bytes, endpoint: Endpoint, now: float) -> bytes | None:
        """Open a data frame; returns an IPv6 packet to deliver, or None. Never raises."""
        if not datagram or datagram[0] != wire.MSG_DATA:
            self.rx_counters["drop_malformed"] += 1
            return None
        buffer = bytearray(datagram)
        one = _OnePacket()
        self.receive_batch(buffer, aead.pointer(buffer), len(buffer), len(buffer), endpoint, now, one)
        return one.packet

    def receive_batch(
        self,
        buffer: bytearray,
        base: aead.Pointer,
        size: int,
        segment: int,
        endpoint: Endpoint,
        now: float,
        sink: offload.PacketSink,
    ) -> None:
        """Datagrams lying back to back in ``buffer[:size]`` (one GRO receive), each ``segment`` bytes but the
        last: data frames are opened in place and their packets handed to ``sink`` in order (views into
        ``buffer``, valid until it is reused); anything else is posted as by ``receive``. ``base`` is
        ``aead.pointer(buffer)``. Never raises.

        The datagrams of one receive nearly always belong to one session: its lookups (session, peer,
        whitelist) and what the frames prove (``_note_authenticated``) are done once per session and batch,
        and IPv6 frames with implied addresses go to the sink straight from the buffer."""
        counters, view = self.rx_counters, memoryview(buffer)
        unpack, first_word, min_size = wire.DATA_WORDS.unpack_from, wire.DATA_FIRST_WORD, wire.DATA_MIN_SIZE
        compressed, partial_kind = wire.INNER_IPV6_COMPRESSED, wire.INNER_IPV6_PARTIAL
        add_parts, me = sink.add_parts, self.address
        known_index, session, peer, noted = -1, None, None, False
        if size <= 0 or segment <= 0:
            counters["drop_malformed"] += 1
            return
        for start in range(0, size, segment):
            length = min(segment, size - start)
            if buffer[start] != wire.MSG_DATA:
                self.receive(bytes(view[start : start + length]), endpoint, now)
                continue
            if length < min_size:
                counters["drop_malformed"] += 1
                continue
            word, index, counter = unpack(buffer, start)
            if word != first_word:  # the type, then three reserved zero bytes
                counters["drop_malformed"] += 1
                continue
            if index != known_index or session is None or peer is None:
                session = self._sessions.get(index)
                if session is None:
                    counters["drop_unknown_session"] += 1
                    continue
                peer = self.peers.get(session.peer_address)
                if peer is None or not self.is_allowed(peer.address):
                    counters["drop_whitelist"] += 1
                    continue
                known_index, noted = index, False
            try:
                inner_size = session.open_in_place(buffer, base, start, length, counter)
            except ReplayError:
                counters["drop_replay"] += 1
                continue
            except AuthenticationError:
                counters["drop_auth"] += 1
                continue
            except ProtocolError:
                counters["drop_malformed"] += 1
                continue
            at = start + wire.DATA_HEADER_SIZE
            kind = buffer[at]
            if kind in (compressed, partial_kind):
                if not noted:
                    session.last_received = now
                    peer.last_seen = now
                    self._note_authenticated(peer, session, endpoint, kind, now)
                    noted = True
                # Addresses implied (peer -> us): the pieces go to the sink as they lie in the buffer.
                ip8, l4 = view[at + 1 : at + 9], view[at + 9 : at + inner_size]
                partial = kind == partial_kind
                if inner_size < 9 or (partial and not offload.can_be_partial(ip8[6], len(l4))):
                    counters["drop_malformed"] += 1
                    continue
                peer.rx_bytes += wire.IPV6_HEADER_SIZE + len(l4)
                add_parts(ip8, peer.address, me, l4, partial)
                continue
            session.last_received = now
            peer.last_seen = now
            self._note_authenticated(peer, session, endpoint, kind, now)
            self._act(peer, session, bytes(view[at : at + inner_size]), endpoint, now, sink)

    def _act(
        self,
        peer: Peer,
        session: Session,
        inner: bytes,
        endpoint: Endpoint,
        now: float,
        sink: offload.PacketSink,
    ) -> None:
        """What an authenticated inner frame other than an IPv6 packet with implied addresses asks for."""
        counters = self.rx_counters
        kind, size = inner[0], len(inner)
        if kind == wire.INNER_IPV6:
            packet = inner[1:]
            # A peer may only speak for its own address: no spoofed sources into our stack.
            if len(packet) < wire.IPV6_HEADER_SIZE or packet[8:24] != peer.address:
                counters["drop_spoofed"] += 1
                return
            # ... and only to us: nothing for other hosts or multicast groups enters through hnet0.
            if packet[24:40] != self.address:
                counters["drop_wrong_destination"] += 1
                return
            peer.rx_bytes += len(packet)
            sink.add(packet)
            return
        if (kind in (wire.INNER_PING, wire.INNER_PROBE) and size == 1 + wire.PROBE_ID_SIZE) or (
            kind == wire.INNER_SIZE_PROBE and size >= 1 + wire.PROBE_ID_SIZE
        ):
            # Answered on the same session, to where it came from: that is the path being tested. A size
            # probe's padding is not echoed: only the way here had to carry the size.
            pong = bytes([wire.INNER_PONG]) + inner[1 : 1 + wire.PROBE_ID_SIZE]
            self.replies.append((endpoint, session.seal(pong)))
            return
        if kind == wire.INNER_PONG and size == 1 + wire.PROBE_ID_SIZE:
            self._post(PongSeen(peer, session, inner[1:], endpoint, now), counters)
            return
        if kind == wire.INNER_KEEPALIVE and size == 1:
            return
        if kind == wire.INNER_FEATURES:
            try:
                features, reply_wanted = wire.decode_features(inner)
            except ProtocolError:
                counters["drop_malformed"] += 1
                return
            session.peer_features = features
            if reply_wanted:
                answer = wire.encode_features(wire.LOCAL_FEATURES, reply_wanted=False)
                self.replies.append((endpoint, session.seal(answer)))
            return
        counters["drop_malformed"] += 1

    def _note_authenticated(
        self, peer: Peer, session: Session, endpoint: Endpoint, kind: int, now: float
    ) -> None:
        """Tell the control loop what an authenticated frame proves, once per fact (receive thread)."""
        route = peer.route
        current = route is not None and session is route.session
        # The first frame on a session this node initiated (first contact, or a rekey's next session).
        probe = kind == wire.INNER_PROBE or kind == wire.INNER_SIZE_PROBE
        if not session.confirmed and not session.confirm_posted and (current or session is peer.next):
            session.confirm_posted = True
            self._post(SessionWorks(peer, session, endpoint, now, probe), self.rx_counters)
        if route is not None and endpoint == route.endpoint and not probe:
            # Liveness is judged by what comes from the route's own endpoint: frames that arrive another way
            # (over the relay while the direct path is dead) must not make a dead route look answered. Nor
            # do the peer's candidate probes: they show that the peer reaches us there, not that our frames
            # reach the peer (a firewall may pass one direction only).
            peer.route_heard_at = now
        if route is None or not current or kind == wire.INNER_PONG:
            return  # pongs report their endpoint themselves (PongSeen)
        if endpoint != route.endpoint or not peer.path_alive:
            seen = (peer.path_epoch, endpoint)
            if peer.roam_posted != seen:
                peer.roam_posted = seen
                self._post(
                    EndpointSeen(peer, session, endpoint, probe, now), self.rx_counters
                )

    # ------------------------------------------------------------------ control loop: posted events
    def process_posted(self, now: float) -> None:
        """Apply what the data-plane threads posted (a bug in one event skips that event only)."""
        handshakes, posted = self._posted_handshakes, self._posted
        while handshakes:
            datagram, endpoint, at = handshakes.popleft()
            self.receive_control(datagram, endpoint, at)
        while posted:
            event = posted.popleft()
            try:
                if isinstance(event, NeedsSession):
                    self._on_needs_session(event.peer, event.packet, now)
                elif isinstance(event, EndpointSeen):
                    self._on_endpoint_seen(event)
                elif isinstance(event, PongSeen):
                    self._on_pong(event)
                else:
                    self._on_session_works(event)
            except Exception as exc:  # a bug: count it, report it, go on with the next event
                self._internal_error(type(event).__name__, exc)

    def _internal_error(self, where: str, exc: Exception) -> None:
        self.control_counters["internal_errors"] += 1
        self.events.append(InternalError(where, exc))

    def has_posted(self) -> bool:
        return bool(self._posted or self._posted_handshakes)

    def _on_needs_session(self, peer: Peer, packet: bytes, now: float) -> None:
        if self.peers.get(peer.address) is not peer or not self.is_allowed(peer.address):
            self._drop("no_peer")
            return
        route = peer.route
        if route is not None and now - route.session.created_at < REJECT_AFTER_TIME:
            # The session came up between the send thread's look and now: send it on.
            self._send_queued(peer, route, packet)
            return
        peer.pending.append(packet)
        peer.wants_session = True

    def _on_endpoint_seen(self, event: EndpointSeen) -> None:
        peer, endpoint = event.peer, event.endpoint
        route = peer.route
        if self.peers.get(peer.address) is not peer or route is None or event.session is not route.session:
            return
        self._learn(peer, endpoint, CandidateSource.LEARNED, event.now, verified=True)
        if endpoint == route.endpoint:
            if not peer.path_alive:
                self._set_route(peer, endpoint, event.now, "answered again")
        elif is_relay(endpoint) and peer.path_alive and not is_relay(route.endpoint):
            pass  # relayed frames still in flight after the move to a direct path: not a roam
        elif not event.probe:
            self._set_route(peer, endpoint, event.now, "roamed")  # traffic comes from there now: follow it
        # A probe from elsewhere only teaches the candidate (above): it shows that the peer reaches us from
        # there, not that we reach it. Our own probes find out, and a pong moves the route (_on_pong).

    def _on_pong(self, event: PongSeen) -> None:
        peer, endpoint = event.peer, event.endpoint
        probe = peer.probes.pop(event.probe_id, None)
        if probe is None or self.peers.get(peer.address) is not peer:
            return
        if probe.purpose is ProbePurpose.DATAGRAM_SIZE:
            self._on_size_shown(peer, probe, event)
            return
        rtt_ms = max(0.0, (event.now - probe.sent_at) * 1000.0)
        self.events.append(PongReceived(peer.address, event.probe_id, rtt_ms, endpoint))
        self._learn(peer, endpoint, CandidateSource.LEARNED, event.now, verified=True)
        route = peer.route
        if route is None or event.session is not route.session:
            return
        if endpoint == route.endpoint:
            peer.rtt_ms = rtt_ms
            if not peer.path_alive:
                self._set_route(peer, endpoint, event.now, "answered again")
        elif not peer.path_alive:
            peer.rtt_ms = rtt_ms
            self._set_route(peer, endpoint, event.now, "found by a probe")
        elif endpoint_rank(endpoint) < endpoint_rank(route.endpoint):
            peer.rtt_ms = rtt_ms
            self._set_route(peer, endpoint, event.now, "preferred endpoint answers")

    def _on_size_shown(self, peer: Peer, probe: Probe, event: PongSeen) -> None:
        """A size probe's pong: datagrams that large reach the peer at the probe's endpoint."""
        route = peer.route
        if (
            route is None
            or route.endpoint != probe.endpoint
            or event.endpoint != probe.endpoint
            or probe.size < route.datagram_limit
        ):
            return  # the route moved meanwhile (its own probe follows), or a larger size was shown already
        peer.size_shown_at = max(peer.size_shown_at, probe.sent_at)
        if probe.size > route.datagram_limit:
            peer.route = Route(route.session, route.endpoint, probe.size)
            self.events.append(DatagramSizeFound(peer.address, route.endpoint, probe.size))

    def _size_unanswered(self, peer: Peer, probe: Probe) -> None:
        """A size probe got no pong: if the route's segments are that large, the path may no longer carry them
        (while smaller frames pass, so nothing else would notice): back to the overlay's segment size until a
        probe is answered again. A TCP transfer stalls at most until then, not for good."""
        route = peer.route
        if (
            route is None
            or route.endpoint != probe.endpoint
            or not 0 < route.datagram_limit <= probe.size
            or probe.sent_at <= peer.size_shown_at  # a later probe came back: this one was merely lost
        ):
            return
        peer.route = Route(route.session, route.endpoint)
        self.events.append(DatagramSizeFound(peer.address, route.endpoint, 0))

    def _on_session_works(self, event: SessionWorks) -> None:
        peer, session = event.peer, event.session
        if self.peers.get(peer.address) is not peer:
            return
        if session is peer.next:
            # Rekey done: the responder has the new keys, so traffic moves to them now (never before).
            route = peer.route
            endpoint = route.endpoint if route is not None and peer.path_alive else event.endpoint
            if endpoint == event.endpoint and event.probe and peer.confirm_endpoint is not None:
                # A probe came first (it may outrun the relay); it proves only the peer -> us direction.
                # The confirm went where the response came from: that way works both ways.
                endpoint = peer.confirm_endpoint
            peer.next = None
            session.confirmed = True
            peer.confirm_bytes = None
            self._install(peer, session, endpoint, event.now)
        elif session is peer.current and not session.confirmed:
            before = peer.path
            session.confirmed = True
            peer.confirm_bytes = None
            peer.path_alive = True
            peer.path_epoch += 1
            peer.next_probe_at = event.now
            self._announce(peer, before)

    # ------------------------------------------------------------------ control loop: handshakes
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
        except AuthenticationError:
            self._drop("auth")
        except ProtocolError:
            self._drop("handshake")
        except Exception as exc:  # a bug: this datagram is lost, the node goes on
            self._internal_error(f"handshake message type {kind:#04x}", exc)

    def _rate_ok(self, endpoint: Endpoint, now: float) -> bool:
        return self._rate.allow(endpoint[0], now)

    def _on_init(self, datagram: bytes, endpoint: Endpoint, now: float) -> None:
        # Cheapest checks first; nothing changes until the init is known to be genuine and fresh.
        if not self._rate_ok(endpoint, now):
            self._drop("rate_limited")
            return
        init = wire.decode_init(datagram)
        if init.responder_address != self.address:
            self._drop("not_for_us")
            return
        handshake.check_init_addresses(self.identity, init)
        address = init.initiator_address
        if not self.is_allowed(address):
            self._drop("whitelist")
            return
        if not handshake.init_key_matches(init):
            self._drop("auth")
            return
        peer = self.peers.get(address)
        pending = self._pending_of(address)
        if pending is not None and pending.state.init_bytes == datagram:
            self.outbox.append((endpoint, pending.state.response_bytes))  # retransmitted init: same answer
            return
        floor = max(peer.last_init_timestamp if peer else -1, pending.state.timestamp_ns if pending else -1)
        if init.timestamp_ns <= floor:
            self._drop("stale_init")
            return
        if not handshake.init_signature_valid(init):
            self._drop("auth")
            return
        # Authenticated and fresh: the peer really sent this, just now.
        if peer is not None:
            peer.last_init_timestamp = init.timestamp_ns
            peer.last_activity = now
            if peer.initiation is not None and self.address < address:
                # Simultaneous open: the lower address keeps its own initiation and the higher one answers
                # it. The peer evidently sends from here, so our init goes here too (without forgetting
                # where it already goes).
                self._drop("simultaneous_open")
                self._learn(peer, endpoint, CandidateSource.LEARNED, now, verified=True)
                if endpoint not in peer.initiation_endpoints:
                    peer.initiation_endpoints.append(endpoint)
                    self.outbox.append((endpoint, peer.initiation.init_bytes))
                return
        # (The higher address keeps its own initiation too: it is dropped when a session is installed.)
        response, state = handshake.respond_verified(
            self.identity, init, datagram, self._new_index(), self._ephemeral()
        )
        self._forget_pending(address)
        if len(self._responders) >= MAX_PENDING_RESPONSES:
            _, oldest = self._responders.popitem(last=False)
            self._responder_of.pop(oldest.state.peer_address, None)
            self.control_counters["pending_responses_evicted"] += 1
        self._responders[state.local_index] = _Pending(state, now)
        self._responder_of[address] = state.local_index
        self.outbox.append((endpoint, response))

    def _pending_of(self, address: bytes) -> _Pending | None:
        index = self._responder_of.get(address)
        return None if index is None else self._responders.get(index)

    def _forget_pending(self, address: bytes) -> None:
        index = self._responder_of.pop(address, None)
        if index is not None:
            self._responders.pop(index, None)

    def _on_response(self, datagram: bytes, endpoint: Endpoint, now: float) -> None:
        receiver = int.from_bytes(datagram[8:12], "big") if len(datagram) >= 12 else -1
        peer = self._initiations.get(receiver)
        if peer is None or peer.initiation is None or peer.initiation.local_index != receiver:
            self._drop("unexpected_response")
            return
        confirm, keys = handshake.finish_initiator(self.identity, peer.initiation, datagram)
        # Authenticated from here on.
        self._abandon_initiation(peer)
        if self.peers.get(peer.address) is not peer or not self.is_allowed(peer.address):
            self._drop("whitelist")  # removed from the whitelist while the handshake ran: no session
            return
        peer.public_key = keys.peer_public_key
        peer.last_handshake = peer.last_activity = now
        session = Session(keys, now)
        # The confirm must leave before any data sealed under the new keys: the responder learns the
        # session index only from the confirm and drops data for an unknown index.
        self.outbox.append((endpoint, confirm))
        peer.confirm_bytes, peer.confirm_endpoint, peer.confirm_sent = confirm, endpoint, now
        self._learn(peer, endpoint, CandidateSource.LEARNED, now, verified=True)
        # Traffic moves to the new keys only when the responder shows it has them (its first frame on them:
        # SessionWorks), on a rekey and on first contact alike. Sooner, a frame could overtake the confirm
        # inside the responder (its receive thread opens data while its control loop has yet to install
        # the session) and be dropped there: on first contact those are the packets that started the
        # handshake. A rekey's traffic stays on the current session meanwhile; on first contact the queued
        # packets wait one round trip more. Either way a lost confirm costs a retransmission, not packets.
        if peer.next is not None:
            self._sessions.pop(peer.next.local_index, None)
        peer.next = session
        self._sessions[session.local_index] = session

    def _on_confirm(self, datagram: bytes, endpoint: Endpoint, now: float) -> None:
        receiver = int.from_bytes(datagram[4:8], "big") if len(datagram) >= 8 else -1
        pending = self._responders.get(receiver)
        if pending is None:
            session = self._sessions.get(receiver)
            # Only an answerable confirm spends a handshake token: junk must not drain the bucket.
            if (
                session is not None
                and not session.is_initiator
                and len(datagram) == wire.CONFIRM_SIZE
                and self._rate_ok(endpoint, now)
            ):
                # Our keepalive answering the first confirm was lost: answer the retransmit (rate-limited:
                # the confirm is not authenticated here, so it must not become a reflector). Nothing moves.
                self.outbox.append((endpoint, session.seal(_KEEPALIVE)))
            else:
                self._drop("unexpected_confirm")
            return
        state = pending.state
        keys = handshake.finish_responder(state, datagram)
        # Authenticated from here on.
        address = state.peer_address
        self._forget_pending(address)
        if not self.is_allowed(address):
            self._drop("whitelist")  # removed from the whitelist while the handshake ran: no session
            return
        peer = self._admit_peer(address, now)
        if peer is None:
            return
        peer.last_init_timestamp = max(peer.last_init_timestamp, state.timestamp_ns)
        peer.public_key = keys.peer_public_key
        peer.last_handshake = peer.last_activity = now
        session = Session(keys, now)
        self._abandon_initiation(peer)  # a session exists now: our own (crossing) initiation is moot
        if peer.next is not None:
            self._sessions.pop(peer.next.local_index, None)
            peer.next = None
        self._install(peer, session, endpoint, now)
        # Tell the initiator we have the keys, so its session becomes confirmed at once.
        self.outbox.append((endpoint, session.seal(_KEEPALIVE)))

    def _install(self, peer: Peer, session: Session, endpoint: Endpoint, now: float) -> None:
        """Make ``session`` the one traffic uses; the old one stays as *previous* for frames in flight."""
        before = peer.path
        old = peer.current
        if peer.previous is not None:
            self._sessions.pop(peer.previous.local_index, None)
            peer.previous = None
        if old is not None and old is not session:
            peer.previous = old
            peer.previous_expires = now + PREVIOUS_SESSION_GRACE
        self._sessions[session.local_index] = session
        # A rekey keeps what the path was shown to carry; another endpoint starts over.
        old_route = peer.route
        if old_route is not None and old_route.endpoint == endpoint:
            peer.route = Route(session, endpoint, old_route.datagram_limit)
        else:
            peer.route = Route(session, endpoint)
            peer.next_size_probe_at = now
        peer.route_heard_at = max(peer.route_heard_at, now)
        peer.path_alive = session.confirmed
        peer.path_epoch += 1
        peer.path_lost_at = None
        peer.liveness_pings = 0
        peer.last_handshake = peer.last_activity = now
        peer.handshake_backoff = 0.0
        peer.wants_session = False
        peer.next_probe_at = now  # measure the latency of the new path (and look for a better one) at once
        self._learn(peer, endpoint, CandidateSource.LEARNED, now, verified=True)
        route = peer.route
        while peer.pending:
            self._send_queued(peer, route, peer.pending.popleft())
        self._offer_features(session, endpoint, now)
        self._announce(peer, before)

    def _offer_features(self, session: Session, endpoint: Endpoint, now: float) -> None:
        """Tell the peer what we understand and ask what it does; repeated (``tick``) until it answers, at
        most FEATURES_ATTEMPTS times: a peer that never answers is one without these features."""
        session.features_sent += 1
        session.features_next_at = now + FEATURES_RETRY_INTERVAL
        frame = wire.encode_features(wire.LOCAL_FEATURES, session.peer_features == 0)
        self.outbox.append((endpoint, session.seal(frame)))

    def _send_queued(self, peer: Peer, route: Route, packet: bytes) -> None:
        datagram = route.session.seal(wire.compress_ipv6(packet, self.address, peer.address))
        self.outbox.append((route.endpoint, datagram))
        peer.tx_bytes_queued += len(packet)

    def _announce(self, peer: Peer, before: PathKind) -> None:
        after = peer.path
        if before is PathKind.NONE and after is not PathKind.NONE and peer.endpoint is not None:
            self.events.append(PeerUp(peer.address, peer.endpoint))

    def _abandon_initiation(self, peer: Peer) -> None:
        if peer.initiation is not None:
            self._initiations.pop(peer.initiation.local_index, None)
        peer.initiation = None
        peer.initiation_endpoints = []

    def _drop_route(self, peer: Peer, reason: str) -> None:
        session = peer.current
        if session is not None:
            self._sessions.pop(session.local_index, None)
        had_path = peer.path is PathKind.DIRECT
        peer.route = None
        peer.path_alive = False
        peer.path_epoch += 1
        peer.rtt_ms = None
        peer.confirm_bytes = None
        peer.probes.clear()
        if had_path or (session is not None and session.confirmed):
            self.events.append(PeerDown(peer.address, reason))

    # ------------------------------------------------------------------ control loop: paths
    def _learn(
        self, peer: Peer, endpoint: Endpoint, source: CandidateSource, now: float, verified: bool = False
    ) -> None:
        candidate = peer.candidates.get(endpoint)
        if candidate is None:
            if len(peer.candidates) >= MAX_CANDIDATES_PER_PEER and not self._evict_candidate(peer):
                self._drop("candidate_table_full")
                return
            candidate = peer.candidates[endpoint] = Candidate(endpoint, source, now)
        else:
            candidate.last_seen = max(candidate.last_seen, now)
            if candidate.source is not CandidateSource.STATIC and source is not CandidateSource.LEARNED:
                candidate.source = source
        if verified:
            candidate.verified_at = now

    def _evict_candidate(self, peer: Peer) -> bool:
        """Make room for one candidate: never the endpoint in use, one being tried, or a static one; the
        unverified before the verified, the oldest first."""
        keep = {peer.endpoint, peer.confirm_endpoint, *peer.initiation_endpoints}
        victims = [
            c
            for c in peer.candidates.values()
            if c.endpoint not in keep and c.source is not CandidateSource.STATIC
        ]
        if not victims:
            return False
        victim = min(victims, key=lambda c: (c.verified_at is not None, c.last_seen))
        del peer.candidates[victim.endpoint]
        return True

    def _set_route(self, peer: Peer, endpoint: Endpoint, now: float, reason: str) -> None:
        """Send the current session's traffic to ``endpoint``, which authenticated frames show to work."""
        route = peer.route
        if route is None:
            return
        recovering = not peer.path_alive
        lost_at = peer.path_lost_at
        if endpoint != route.endpoint:
            peer.route = Route(route.session, endpoint)  # what the old path carried says nothing of this one
            peer.next_size_probe_at = now
        peer.route_heard_at = max(peer.route_heard_at, now)  # an authenticated frame came from it just now
        peer.path_alive = True
        peer.path_epoch += 1
        peer.path_lost_at = None
        peer.liveness_pings = 0
        if endpoint != route.endpoint or recovering:
            peer.next_probe_at = now
            if lost_at is not None:
                reason = f"{reason} after {now - lost_at:.2f} s without a path"
            self.events.append(PathChanged(peer.address, endpoint, reason))

    def _path_lost(self, peer: Peer, now: float) -> None:
        route = peer.route
        if route is None:
            return
        peer.path_alive = False
        peer.path_epoch += 1
        peer.path_lost_at = now
        peer.next_path_probe_at = now
        peer.path_probe_interval = PATH_PROBE_INTERVAL
        self.events.append(PathLost(peer.address, route.endpoint))

    def _probe(
        self, peer: Peer, endpoint: Endpoint, purpose: ProbePurpose, now: float, size: int = 0
    ) -> bytes | None:
        """Send a probe; ``size``: a DATAGRAM_SIZE probe's datagram size (padded to it)."""
        route = peer.route
        if route is None:
            return None
        probe_id = self._random(wire.PROBE_ID_SIZE)
        peer.probes[probe_id] = Probe(now, endpoint, purpose, size)
        if purpose is ProbePurpose.DATAGRAM_SIZE:
            padding = size - wire.DATA_HEADER_SIZE - wire.TAG_SIZE - 1 - wire.PROBE_ID_SIZE
            inner = bytes([wire.INNER_SIZE_PROBE]) + probe_id + bytes(max(0, padding))
        else:
            kind = wire.INNER_PROBE if purpose is ProbePurpose.CANDIDATE else wire.INNER_PING
            inner = bytes([kind]) + probe_id
        self.outbox.append((endpoint, route.session.seal(inner)))
        return probe_id

    def _probe_datagram_size(self, peer: Peer, route: Route, now: float) -> None:
        """Ask the kernel how large a datagram the route's interface takes, and send a probe that size: its
        pong raises ``Route.datagram_limit`` (``_on_size_shown``). A size already shown is probed again too,
        since a path can stop carrying it without the kernel learning of it (a switch replaced): unanswered,
        the limit goes (``_size_unanswered``). Direct paths to peers with FEATURE_LARGE_SEGMENTS only (a relay
        has its own limits)."""
        features = route.session.peer_features
        if is_relay(route.endpoint) or not features & wire.FEATURE_LARGE_SEGMENTS:
            # Features are exchanged when a session starts: look again soon while they may still come.
            peer.next_size_probe_at = now + (SIZE_PROBE_INTERVAL if features else FEATURES_RETRY_INTERVAL)
            return
        peer.next_size_probe_at = now + SIZE_PROBE_INTERVAL
        size = min(self.underlay_limit(route.endpoint), MAX_PATH_DATAGRAM)
        if size < route.datagram_limit:  # the interface shrank: what was shown may no longer pass
            peer.route = route = Route(route.session, route.endpoint)
        if size >= route.datagram_limit and size >= MIN_SIZE_PROBE:
            self._probe(peer, route.endpoint, ProbePurpose.DATAGRAM_SIZE, now, size)

    def _probe_better(self, peer: Peer, route: Route, most: int, now: float) -> None:
        """Probe up to ``most`` candidates that rank better than the route's endpoint (best first): the
        first to answer becomes the path (``_on_pong``)."""
        rank = endpoint_rank(route.endpoint)
        better = [e for e in peer.ordered_candidates() if endpoint_rank(e) < rank]
        for endpoint in better[:most]:
            self._probe(peer, endpoint, ProbePurpose.CANDIDATE, now)

    def _unanswered_since(self, peer: Peer, route: Route) -> float | None:
        """Since when traffic on the route has gone unanswered (data or pings sent after the last
        authenticated frame received), or None."""
        session = route.session
        heard = peer.route_heard_at
        oldest = session.first_unanswered_send if session.first_unanswered_send > heard else None
        for probe in peer.probes.values():
            if (
                probe.endpoint == route.endpoint
                and probe.purpose not in _NOT_LIVENESS
                and probe.sent_at > heard
                and (oldest is None or probe.sent_at < oldest)
            ):
                oldest = probe.sent_at
        return oldest

    def _tick_path(self, peer: Peer, route: Route, now: float) -> None:
        """Liveness of a confirmed route: find out quickly when it stops answering, then find another."""
        if peer.path_alive:
            since = self._unanswered_since(peer, route)
            if since is None:
                peer.liveness_pings = 0
            else:
                rtt_s = (peer.rtt_ms or 0.0) / 1000.0
                dead_after = max(PATH_DEAD_AFTER, PATH_QUIET_AFTER + 3 * rtt_s)
                if now - since >= dead_after and peer.liveness_pings >= PATH_DEAD_PINGS:
                    self._path_lost(peer, now)
                elif now - since >= PATH_QUIET_AFTER and now >= peer.next_liveness_ping_at:
                    self._probe(peer, route.endpoint, ProbePurpose.LIVENESS, now)
                    peer.liveness_pings += 1
                    peer.next_liveness_ping_at = now + PATH_PING_INTERVAL
        if peer.path_alive and now < peer.punch_until and now >= peer.next_punch_at:
            # A base server just named candidates, and the peer got ours at the same moment: both probe
            # each other's now and again for a few seconds, which opens both NATs (hole punching).
            self._probe_better(peer, route, MAX_PUNCH_PROBES, now)
            peer.next_punch_at = now + PUNCH_INTERVAL
        if peer.path_alive:
            if now >= peer.next_probe_at:
                self._probe(peer, route.endpoint, ProbePurpose.LATENCY, now)
                self._probe_better(peer, route, MAX_UPGRADE_PROBES, now)
                peer.next_probe_at = now + LATENCY_PROBE_INTERVAL
            if now >= peer.next_size_probe_at:
                self._probe_datagram_size(peer, route, now)
            return
        if now >= peer.next_path_probe_at:
            # No path answers: try the route's endpoint and every other candidate with the session's keys
            # (no handshake needed); the first authenticated answer becomes the route.
            self._probe(peer, route.endpoint, ProbePurpose.LIVENESS, now)
            for endpoint in peer.ordered_candidates():
                if endpoint != route.endpoint:
                    self._probe(peer, endpoint, ProbePurpose.CANDIDATE, now)
            lost_for = now - (peer.path_lost_at or now)
            if lost_for >= PATH_FAST_PROBING:
                peer.path_probe_interval = min(peer.path_probe_interval * 2, PATH_PROBE_MAX_INTERVAL)
            peer.next_path_probe_at = now + peer.path_probe_interval

    # ------------------------------------------------------------------ control loop: inputs from the daemon
    def learn_beacon(self, beacon: Beacon, endpoint: Endpoint, now: float) -> None:
        """A verified beacon arrived from ``endpoint``: remember it as a way to reach the peer.

        Beacons are signed but can be recorded and replayed: one is believed only if its timestamp is newer
        than the last one believed from that peer, and what it proposes is an unverified candidate, which
        never displaces the endpoint in use nor one that answered before."""
        address = beacon.address
        if address == self.address:
            return
        peer = self.peers.get(address)
        if not self.is_allowed(address):
            self._drop("beacon_not_whitelisted")
            heard = self._heard.pop(address, None)
            if heard is not None and beacon.timestamp_ns <= heard[0].timestamp_ns:
                self._heard[address] = heard  # keep the newer one
                self._drop("stale_beacon")
                return
            self._heard[address] = (beacon, endpoint, now)
            if len(self._heard) > MAX_HEARD_BEACONS:
                self._heard.popitem(last=False)
            return
        if peer is not None and beacon.timestamp_ns <= peer.last_beacon_timestamp:
            self._drop("stale_beacon")
            return
        self._heard.pop(address, None)
        peer = peer or self._admit_peer(address, now)
        if peer is None:
            return
        peer.last_beacon_timestamp = beacon.timestamp_ns
        peer.hostname = beacon.hostname or peer.hostname
        peer.public_key = beacon.public_key
        peer.last_activity = now
        source = CandidateSource.LINK_LOCAL if "%" in endpoint[0] else CandidateSource.LAN
        self._learn(peer, endpoint, source, now)

    def whitelist_changed(self, now: float) -> None:
        """The whitelist changed: peers no longer allowed are forgotten at once (their sessions, handshakes
        and candidates); peers heard recently that are now allowed are handshaken right away."""
        for address in [a for a in self.peers if not self.is_allowed(a)]:
            self.forget_peer(address, reason="not whitelisted")
        for address in [a for a in self._responder_of if not self.is_allowed(a)]:
            self._forget_pending(address)
        for address in [a for a in self._heard if self.is_allowed(a)]:
            beacon, endpoint, seen = self._heard.pop(address)
            if now - seen > BEACON_CANDIDATE_TTL:
                continue
            self.learn_beacon(beacon, endpoint, seen)
            peer = self.peers.get(address)
            if peer is not None:
                peer.next_handshake_at = now

    def add_static_endpoint(self, address: bytes, endpoint: Endpoint, now: float) -> None:
        peer = self._admit_peer(address, now)
        if peer is not None:
            self._learn(peer, endpoint, CandidateSource.STATIC, now)
            candidate = peer.candidates.get(endpoint)
            if candidate is not None:
                candidate.source = CandidateSource.STATIC
                candidate.last_seen = float("inf")  # static endpoints never expire

    def remove_static_endpoint(self, address: bytes, endpoint: Endpoint, now: float) -> None:
        """The user no longer gives ``endpoint`` for the peer: it stops being a pinned, never-expiring
        candidate. One in use (the route, a confirmation or a handshake under way) stays as a learned
        endpoint, which lives on while it answers and expires like any other once it does not."""
        peer = self.peers.get(address)
        candidate = peer.candidates.get(endpoint) if peer is not None else None
        if peer is None or candidate is None or candidate.source is not CandidateSource.STATIC:
            return
        if endpoint in {peer.endpoint, peer.confirm_endpoint, *peer.initiation_endpoints}:
            candidate.source = CandidateSource.LEARNED
            candidate.last_seen = now
        else:
            del peer.candidates[endpoint]

    def learn_from_base(self, address: bytes, endpoints: list[Endpoint], relay: bool, now: float) -> None:
        """A base server named ``endpoints`` for a whitelisted peer (and, with ``relay``, relays to it):
        remember them as candidates and start hole punching. Only probed: nothing moves until an
        authenticated answer comes back on one."""
        if not self.is_allowed(address):
            self._drop("base_peer_not_allowed")
            return
        peer = self._admit_peer(address, now)
        if peer is None:
            return
        for endpoint in endpoints:
            if not is_relay(endpoint):
                self._learn(peer, endpoint, CandidateSource.BASE, now)
        if relay:
            self._learn(peer, relay_endpoint(address), CandidateSource.RELAY, now)
        peer.last_activity = now
        peer.punch_until = now + PUNCH_DURATION
        peer.next_punch_at = now

    def offer_relay(self, address: bytes, now: float) -> None:
        """The home base server relays: a whitelisted peer can be reached through it (the worst-ranked
        candidate, used only while no direct one answers)."""
        if not self.is_allowed(address):
            return
        peer = self._admit_peer(address, now)
        if peer is not None:
            self._learn(peer, relay_endpoint(address), CandidateSource.RELAY, now)

    def withdraw_relay(self) -> None:
        """No base server relays any more: forget the relay candidates not in use (a relayed route in use
        stays until it stops answering, like any path)."""
        for peer in self.peers.values():
            relay = relay_endpoint(peer.address)
            if relay in peer.candidates and relay != peer.endpoint and relay not in peer.initiation_endpoints:
                del peer.candidates[relay]

    def forget_peer(self, address: bytes, reason: str = "forgotten") -> None:
        """Drop all state of a peer (e.g. removed from the whitelist); its queued traffic is discarded."""
        self._forget_pending(address)
        self._heard.pop(address, None)
        peer = self.peers.pop(address, None)
        if peer is None:
            return
        had_session = peer.route is not None
        for session in peer.sessions():
            self._sessions.pop(session.local_index, None)
        self._abandon_initiation(peer)
        peer.route = peer.next = peer.previous = None
        peer.path_alive = False
        peer.pending.clear()
        if had_session:
            self.events.append(PeerDown(address, reason))

    def ping(self, address: bytes, now: float) -> bytes | None:
        """Send an on-demand probe; returns its id, or None when there is no session."""
        peer = self.peers.get(address)
        if peer is None or peer.route is None:
            if peer is not None and self.is_allowed(address):
                peer.wants_session = True
            return None
        return self._probe(peer, peer.route.endpoint, ProbePurpose.ON_DEMAND, now)

    def network_changed(self, now: float) -> None:
        """This host's addresses or links changed: tell every peer where we are now (an authenticated
        keepalive from our new source moves its endpoint), and re-check every path at once."""
        for peer in self.peers.values():
            route = peer.route
            if route is None or not route.session.confirmed:
                continue
            self.outbox.append((route.endpoint, route.session.seal(_KEEPALIVE)))
            if peer.path_alive:
                peer.next_probe_at = now
            else:
                peer.path_lost_at = now  # probe fast again, as right after the loss
                peer.path_probe_interval = PATH_PROBE_INTERVAL
                peer.next_path_probe_at = now

    # ------------------------------------------------------------------ control loop: timers
    def tick(self, now: float) -> None:
        """Run every timer that is due: retries, rekeys, probes, expiry. Call often (≤ 0.25 s apart)."""
        for peer in list(self.peers.values()):
            try:
                self._tick_peer(peer, now)
            except Exception as exc:  # a bug: this peer's timers wait for the next tick, the others run
                self._internal_error("timers of one peer", exc)
        for index, pending in list(self._responders.items()):
            if now - pending.started > HANDSHAKE_TIMEOUT:
                del self._responders[index]
                if self._responder_of.get(pending.state.peer_address) == index:
                    del self._responder_of[pending.state.peer_address]

    def _tick_peer(self, peer: Peer, now: float) -> None:
        if peer.previous is not None and now >= peer.previous_expires:
            self._sessions.pop(peer.previous.local_index, None)
            peer.previous = None
        keep = {peer.endpoint, *peer.initiation_endpoints}
        for endpoint, candidate in list(peer.candidates.items()):
            if now - candidate.last_seen > BEACON_CANDIDATE_TTL and endpoint not in keep:
                del peer.candidates[endpoint]
        for probe_id, probe in list(peer.probes.items()):
            if now - probe.sent_at > PROBE_TIMEOUT:
                del peer.probes[probe_id]
                if probe.purpose is ProbePurpose.DATAGRAM_SIZE:
                    self._size_unanswered(peer, probe)

        if not self.is_allowed(peer.address):
            # The whitelist changed without whitelist_changed() (the callable is live): same outcome.
            self.forget_peer(peer.address, reason="not whitelisted")
            return

        self._expire_sessions(peer, now)
        route = peer.route
        if route is not None and route.session.confirmed:
            session = route.session
            if (
                session.peer_features == 0
                and session.features_sent < FEATURES_ATTEMPTS
                and now >= session.features_next_at
            ):
                self._offer_features(session, route.endpoint, now)
            self._tick_path(peer, route, now)
            self._tick_rekey(peer, route, now)
            return
        # No usable session: handshake when someone wants traffic or the peer is a known fleet member.
        if peer.initiation is not None:
            self._continue_initiation(peer, now)
        elif route is None and peer.candidates and now >= peer.next_handshake_at:
            self._initiate(peer, now)
        elif route is None and not self._pinned(peer) and now - peer.last_activity > PEER_FORGET_AFTER:
            self.forget_peer(peer.address, reason="forgotten (nothing heard)")
            self.control_counters["peers_expired"] += 1

    def _expire_sessions(self, peer: Peer, now: float) -> None:
        route = peer.route
        if route is not None:
            session = route.session
            idle = now - session.last_received
            if now - session.created_at >= REJECT_AFTER_TIME or idle >= SESSION_IDLE_TIMEOUT:
                self._drop_route(peer, "idle" if idle >= SESSION_IDLE_TIMEOUT else "expired")
            elif not session.confirmed and now - session.created_at > HANDSHAKE_TIMEOUT:
                self._drop_route(peer, "handshake not confirmed")
        if peer.next is not None and now - peer.next.created_at > HANDSHAKE_TIMEOUT:
            self._sessions.pop(peer.next.local_index, None)
            peer.next = None
            peer.confirm_bytes = None
            self._back_off(peer, now)
        if (
            peer.confirm_bytes is not None
            and peer.confirm_endpoint is not None
            and now - peer.confirm_sent >= HANDSHAKE_RETRY_INTERVAL
        ):
            self.outbox.append((peer.confirm_endpoint, peer.confirm_bytes))
            peer.confirm_sent = now

    def _tick_rekey(self, peer: Peer, route: Route, now: float) -> None:
        session = route.session
        if peer.initiation is not None:
            # A rekey init can be lost too: retransmit it, or give up and retry later.
            self._continue_initiation(peer, now)
            return
        if peer.next is not None:
            return  # a new session waits for the responder's first frame
        rekey_at = REKEY_AFTER_TIME if session.is_initiator else REKEY_AFTER_TIME + 2 * HANDSHAKE_TIMEOUT
        # The session's probes get no answer anywhere: the peer may have restarted and lost the keys.
        lost_for = now - peer.path_lost_at if peer.path_lost_at is not None else 0.0
        if (
            now - session.created_at >= rekey_at
            or session.sent_messages >= REKEY_AFTER_MESSAGES
            or (lost_for >= PATH_HANDSHAKE_AFTER and now >= peer.next_handshake_at)
        ):
            self._initiate(peer, now)

    def _back_off(self, peer: Peer, now: float) -> None:
        peer.handshake_backoff = min(
            max(peer.handshake_backoff * 2, HANDSHAKE_RETRY_INTERVAL), HANDSHAKE_RETRY_MAX_INTERVAL
        )
        peer.next_handshake_at = now + peer.handshake_backoff

    def _continue_initiation(self, peer: Peer, now: float) -> None:
        """Retransmit a pending init, or abandon it after HANDSHAKE_TIMEOUT and back off."""
        assert peer.initiation is not None
        if now - peer.initiation_started > HANDSHAKE_TIMEOUT:
            self._abandon_initiation(peer)
            self._back_off(peer, now)
        elif now - peer.initiation_sent >= HANDSHAKE_RETRY_INTERVAL:
            for endpoint in peer.initiation_endpoints:
                self.outbox.append((endpoint, peer.initiation.init_bytes))
            peer.initiation_sent = now

    def _initiate(self, peer: Peer, now: float) -> None:
        """Start a handshake over the peer's best candidates at once (the first answer wins)."""
        targets = peer.ordered_candidates()
        route = peer.route
        if route is not None and peer.path_alive:
            targets = [route.endpoint] + [e for e in targets if e != route.endpoint]
        relay = relay_endpoint(peer.address)
        targets = targets[:MAX_INIT_TARGETS]
        if relay in peer.candidates and relay not in targets:
            # The relay is the one path that works through any NAT: never crowded out by direct guesses.
            targets[-1:] = [relay]
        if not targets:
            return
        data, state = handshake.start(
            self.identity, peer.address, self._new_index(), self.next_timestamp_ns(now), self._ephemeral()
        )
        peer.initiation = state
        peer.initiation_endpoints = targets
        peer.initiation_started = peer.initiation_sent = now
        peer.next_handshake_at = now + HANDSHAKE_TIMEOUT
        self._initiations[state.local_index] = peer
        for endpoint in targets:
            self.outbox.append((endpoint, data))

    def next_timer(self, now: float) -> float:
        """Latest time by which ``tick`` should run again (also when the data plane posted nothing: the
        dead-path check reads timestamps the send thread writes)."""
        if self.has_posted():
            return now
        for peer in self.peers.values():
            route = peer.route
            if (
                peer.initiation is not None
                or peer.wants_session
                or peer.next is not None
                or (route is not None and (not route.session.confirmed or not peer.path_alive))
            ):
                return now + 0.05
        return now + 0.1

    # ------------------------------------------------------------------ status
    def path_of(self, address: bytes) -> PathKind:
        peer = self.peers.get(address)
        return PathKind.NONE if peer is None else peer.path
