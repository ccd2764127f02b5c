"""The base server's protocol engine, sans-IO: datagrams and the time in, datagrams out.

It keeps only soft state: for each registered client its public key, the endpoint it registers from (the
public side of its NAT) and the local endpoints it advertises. A restarted base server has none of it and
answers anything but a hello or a registration with ``MSG_BASE_UNKNOWN``, which makes the client register
again at once: nothing is lost that clients cannot re-send.

Nothing is stored for a datagram that is not a valid registration: a hello is answered with a cookie that
is a keyed hash of the source endpoint (no state), and a registration must carry a current cookie for the
endpoint it comes from and be signed by a key whose hash is the address it claims. Hellos, registrations
and connect requests are rate limited per source host; the client table has a cap.
"""

from __future__ import annotations

import collections
import hashlib
import os
from dataclasses import dataclass, field

from ..core import basewire
from ..core.errors import ProtocolError
from ..core.identity import derive_address, verify_signature
from ..core.peer import Endpoint
from ..core.ratelimit import RateLimiter

DEFAULT_MAX_CLIENTS = 10_000
REFRESH_S = 25  # clients register again this often (it also keeps their NAT mapping open)
EXPIRE_AFTER_S = 3 * REFRESH_S + 15  # a client that missed three refreshes is gone
COOKIE_EPOCH_S = 60  # the cookie key changes this often; the current and the previous epoch are accepted

Datagram = tuple[Endpoint, bytes]
# A client connected over TCP is known by (address, TCP port + this): never equal to a UDP endpoint, so the
# I/O layer knows which way an answer goes. Its TCP endpoint is no candidate for peers (they speak UDP).
TCP_PORT_OFFSET = 1 << 16


def is_tcp(endpoint: Endpoint) -> bool:
    return endpoint[1] >= TCP_PORT_OFFSET


@dataclass
class Client:
    address: bytes
    public_key: bytes
    endpoint: Endpoint
    local_endpoints: list[Endpoint]
    registered_at: float
    last_seen: float
    relayed_bytes: int = 0

    def candidates(self) -> list[Endpoint]:
        """Where a peer may reach this client: the NAT-observed endpoint first, then its own addresses."""
        if is_tcp(self.endpoint):
            return self.local_endpoints[: basewire.MAX_ENDPOINTS]
        observed = _plain(self.endpoint)
        return [observed, *(e for e in self.local_endpoints if e != observed)][: basewire.MAX_ENDPOINTS]


def _plain(endpoint: Endpoint) -> Endpoint:
    """An IPv4 client seen through a dual-stack socket as ::ffff:a.b.c.d, named as IPv4; a TCP one with its
    real port."""
    host, port = endpoint
    port %= TCP_PORT_OFFSET
    return (host[7:], port) if host.startswith("::ffff:") and "." in host else (host, port)


@dataclass
class BaseServer:
    master_key: bytes = field(default_factory=lambda: os.urandom(32))
    max_clients: int = DEFAULT_MAX_CLIENTS
    clients: dict[bytes, Client] = field(default_factory=dict)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._by_endpoint: dict[Endpoint, bytes] = {}
        self._limiter = RateLimiter()
        self._epoch_keys: dict[int, bytes] = {}

    # ------------------------------------------------------------------ cookies
    def _epoch_key(self, epoch: int) -> bytes:
        key = self._epoch_keys.get(epoch)
        if key is None:
            key = hashlib.blake2b(epoch.to_bytes(4, "big"), key=self.master_key, digest_size=32).digest()
            self._epoch_keys = {e: k for e, k in self._epoch_keys.items() if e >= epoch - 1}
            self._epoch_keys[epoch] = key
        return key

    def cookie(self, endpoint: Endpoint, epoch: int) -> bytes:
        host, port = endpoint
        message = f"{host}|{port}".encode()
        return hashlib.blake2b(message, key=self._epoch_key(epoch), digest_size=basewire.COOKIE_SIZE).digest()

    @staticmethod
    def epoch(now: float) -> int:
        return int(now // COOKIE_EPOCH_S) & 0xFFFFFFFF

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes, endpoint: Endpoint, now: float) -> list[Datagram]:
        """Handle one datagram; returns what to send. Bad input is counted and dropped, never raised."""
        if not data or data[0] not in basewire.BASE_TYPES:
            self.counters["drop_unknown_type"] += 1
            return []
        try:
            kind = data[0]
            if kind == basewire.MSG_BASE_RELAY:
                return self._relay(data, endpoint)
            if not self._limiter.allow(endpoint[0], now):
                self.counters["drop_rate_limited"] += 1
                return []
            if kind == basewire.MSG_BASE_HELLO:
                basewire.decode_hello(data)
                challenge = basewire.Challenge(self.epoch(now), self.cookie(endpoint, self.epoch(now)))
                self.counters["challenges"] += 1
                return [(endpoint, challenge.encode())]
            if kind == basewire.MSG_BASE_REGISTER:
                return self._register(data, endpoint, now)
            if kind == basewire.MSG_BASE_CONNECT:
                return self._connect(data, endpoint, now)
            self.counters["drop_unexpected_type"] += 1
        except ProtocolError:
            self.counters["drop_malformed"] += 1
        return []

    def _register(self, data: bytes, endpoint: Endpoint, now: float) -> list[Datagram]:
        message = basewire.decode_register(data)
        current = self.epoch(now)
        if message.epoch not in (current, (current - 1) & 0xFFFFFFFF) or message.cookie != self.cookie(
            endpoint, message.epoch
        ):
            self.counters["drop_bad_cookie"] += 1
            return []
        address = derive_address(message.public_key)
        if address is None:
            self.counters["drop_bad_key"] += 1
            return []
        # Over the bytes received, not a re-encoding: what was signed is exactly what came.
        signed = bytes(data[: len(data) - len(message.signature)])
        if not verify_signature(message.public_key, basewire.REGISTER_CONTEXT + signed, message.signature):
            self.counters["drop_bad_signature"] += 1
            return []
        client = self.clients.get(address)
        if client is None:
            if len(self.clients) >= self.max_clients:
                self.counters["drop_too_many_clients"] += 1
                return []
            client = self.clients[address] = Client(
                address, message.public_key, endpoint, message.local_endpoints, now, now
            )
            self.counters["registrations"] += 1
        else:
            if client.endpoint != endpoint:
                # The old endpoint may be someone else's by now (a NAT reuses mappings): only ours goes.
                if self._by_endpoint.get(client.endpoint) == address:
                    del self._by_endpoint[client.endpoint]
                client.endpoint = endpoint
            client.local_endpoints = message.local_endpoints
            client.last_seen = now
            self.counters["refreshes"] += 1
        self._by_endpoint[endpoint] = address
        welcome = basewire.Welcome(address, REFRESH_S, _plain(endpoint))
        return [(endpoint, welcome.encode())]

    def _sender(self, endpoint: Endpoint) -> Client | None:
        address = self._by_endpoint.get(endpoint)
        return None if address is None else self.clients.get(address)

    def _connect(self, data: bytes, endpoint: Endpoint, now: float) -> list[Datagram]:
        target_address = basewire.decode_connect(data)
        requester = self._sender(endpoint)
        if requester is None:
            self.counters["drop_unregistered"] += 1
            return [(endpoint, basewire.encode_unknown())]
        target = self.clients.get(target_address)
        if target is None or target is requester:
            self.counters["connect_unknown_peer"] += 1
            return [(endpoint, basewire.PeerInfo(target_address, False, []).encode())]
        self.counters["connects"] += 1
        # Both at once: each starts probing the other's candidates at about the same moment, which is what
        # opens both NATs (hole punching).
        return [
            (endpoint, basewire.PeerInfo(target.address, True, target.candidates()).encode()),
            (target.endpoint, basewire.PeerInfo(requester.address, True, requester.candidates()).encode()),
        ]

    def _relay(self, data: bytes, endpoint: Endpoint) -> list[Datagram]:
        destination, frame = basewire.decode_relay(data)
        sender = self._sender(endpoint)
        if sender is None:
            self.counters["drop_relay_unregistered"] += 1
            return [(endpoint, basewire.encode_unknown())]
        target = self.clients.get(destination)
        if target is None:
            self.counters["drop_relay_no_destination"] += 1
            return []
        relayed = basewire.relay_header(basewire.MSG_BASE_RELAYED, sender.address) + frame
        sender.relayed_bytes += len(frame)
        self.counters["relayed_frames"] += 1
        self.counters["relayed_bytes"] += len(frame)
        return [(target.endpoint, relayed)]

    def relay_in_place(
        self, buffer: bytearray, size: int, segment: int, endpoint: Endpoint
    ) -> Endpoint | None:
        """The fast path for a batch of relay messages from one sender (``size`` bytes of ``segment``-sized
        datagrams, the last maybe shorter, as UDP GRO hands them over): when every one is a well-formed relay
        message to the same registered destination, rewrite each header in place into a relayed one (same
        length: type and address only) and return where the whole batch goes, to be sent as it lies. None: not
        such a batch, nothing changed; the caller hands each datagram to ``receive``."""
        sender = self._sender(endpoint)
        if sender is None or segment <= basewire.RELAY_HEADER_SIZE:
            return None
        view = memoryview(buffer)
        destination = bytes(view[basewire.HEADER_SIZE : basewire.RELAY_HEADER_SIZE])
        target = self.clients.get(destination)
        if target is None:
            return None
        expected = basewire.header(basewire.MSG_BASE_RELAY) + destination
        starts = range(0, size, segment)
        for start in starts:
            if (
                size - start <= basewire.RELAY_HEADER_SIZE
                or view[start : start + basewire.RELAY_HEADER_SIZE] != expected
            ):
                return None
        relayed = basewire.relay_header(basewire.MSG_BASE_RELAYED, sender.address)
        for start in starts:
            view[start : start + basewire.RELAY_HEADER_SIZE] = relayed
        frames = len(starts)
        payload = size - frames * basewire.RELAY_HEADER_SIZE
        sender.relayed_bytes += payload
        self.counters["relayed_frames"] += frames
        self.counters["relayed_bytes"] += payload
        return target.endpoint

    # ------------------------------------------------------------------ timers and status
    def expire(self, now: float) -> int:
        """Forget clients that stopped refreshing; returns how many."""
        gone = [c for c in self.clients.values() if now - c.last_seen > EXPIRE_AFTER_S]
        for client in gone:
            del self.clients[client.address]
            if self._by_endpoint.get(client.endpoint) == client.address:
                del self._by_endpoint[client.endpoint]
        self.counters["expired"] += len(gone)
        return len(gone)

    def status(self) -> dict[str, object]:
        return {
            "clients": len(self.clients),
            "max_clients": self.max_clients,
            "relayed_frames": self.counters["relayed_frames"],
            "relayed_bytes": self.counters["relayed_bytes"],
            "counters": dict(sorted(self.counters.items())),
        }
