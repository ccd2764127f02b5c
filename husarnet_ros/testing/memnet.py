"""An in-memory network of core Nodes, for tests of the protocol without sockets (like bindtest).

Each node gets a fake endpoint; ``run`` moves datagrams from outboxes to receivers until the
network is quiet, optionally through a ``tamper`` hook that can drop, duplicate or rewrite them.
A datagram reaches a node as it would in the daemon: through ``Node.receive`` (the receive thread),
then ``Node.process_posted`` (the control loop), so the hand-over between the two is exercised too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from husarnet_ros.core.constants import DEFAULT_UDP_PORT
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.node import InternalError, Node
from husarnet_ros.core.peer import Endpoint, Peer
from husarnet_ros.core.session import Session

Tamper = Callable[[Endpoint, Endpoint, bytes], list[bytes]]


@dataclass
class MemNet:
    now: float = 1000.0
    nodes: dict[Endpoint, Node] = field(default_factory=dict)
    delivered: dict[Endpoint, list[bytes]] = field(default_factory=dict)
    log: list[tuple[Endpoint, Endpoint, bytes]] = field(default_factory=list)
    allowed: dict[Endpoint, set[bytes]] = field(default_factory=dict)

    def add(
        self, identity: Identity | None = None, whitelist_all: bool = True, endpoint: Endpoint | None = None
    ) -> tuple[Node, Endpoint]:
        allowed: set[bytes] = set()
        node = Node(
            identity or Identity.generate(),
            (lambda _addr: True) if whitelist_all else allowed.__contains__,
            is_pinned=allowed.__contains__,
            wall_offset_ns=1_700_000_000 * 10**9,
        )
        endpoint = self.add_node(node, endpoint)
        self.allowed[endpoint] = allowed
        return node, endpoint

    def add_node(self, node: Node, endpoint: Endpoint | None = None) -> Endpoint:
        """Put a node made elsewhere (e.g. by a NodeController) on the network."""
        endpoint = endpoint or (f"198.18.0.{10 + len(self.nodes)}", DEFAULT_UDP_PORT)
        self.nodes[endpoint] = node
        self.delivered[endpoint] = []
        return endpoint

    def step(self, now: float, tamper: Tamper | None = None) -> None:
        """One round at ``now``: every node's posted events and timers, then all traffic."""
        self.now = max(self.now, now)
        for node in self.nodes.values():
            node.process_posted(self.now)
            node.tick(self.now)
            self.check(node)
        self.flush(tamper)

    def introduce(self, a: Endpoint, b: Endpoint) -> None:
        """Make a and b know each other's endpoint, as a LAN beacon would."""
        self.nodes[a].add_static_endpoint(self.nodes[b].address, b, self.now)
        self.nodes[b].add_static_endpoint(self.nodes[a].address, a, self.now)

    def deliver(self, src: Endpoint, dst: Endpoint, data: bytes) -> None:
        node = self.nodes.get(dst)
        self.log.append((src, dst, data))
        if node is None:
            return
        packet = node.receive(data, src, self.now)
        if packet is not None:
            self.delivered[dst].append(packet)
        node.process_posted(self.now)
        self.check(node)

    @staticmethod
    def check(node: Node) -> None:
        """A node reports bugs as events and goes on (the daemon logs them); in tests they fail at once."""
        for event in node.events:
            if isinstance(event, InternalError):
                raise AssertionError(f"node hit a bug in {event.where}") from event.error

    def flush(self, tamper: Tamper | None = None, max_rounds: int = 100) -> None:
        """Deliver everything queued, repeatedly, until no node has anything to send."""
        for _ in range(max_rounds):
            moved = False
            for src, node in list(self.nodes.items()):
                for queue in (node.replies, node.outbox):
                    while queue:
                        dst, data = queue.popleft()
                        moved = True
                        for out in tamper(src, dst, data) if tamper else [data]:
                            self.deliver(src, dst, out)
            if not moved:
                return
        raise AssertionError("network did not settle")

    def advance(self, seconds: float, step: float = 0.1, tamper: Tamper | None = None) -> None:
        """Let time pass, ticking every node and delivering traffic."""
        end = self.now + seconds
        while self.now < end:
            self.step(min(end, self.now + step), tamper)

    def send(self, src: Endpoint, packet: bytes, tamper: Tamper | None = None) -> None:
        node = self.nodes[src]
        out = node.send(packet, self.now)
        if out is not None:
            node.outbox.append(out)
        node.process_posted(self.now)
        self.flush(tamper)


@dataclass
class NodePair:
    """Two nodes on one network with their endpoints: what tests of a pair share (they add their own)."""

    net: MemNet
    a: Node
    ea: Endpoint
    b: Node
    eb: Endpoint

    def peer_of(self, node: Node) -> Peer:
        """What ``node`` knows of the other one."""
        other = self.b if node is self.a else self.a
        peer = node.peer(other.address)
        assert peer is not None
        return peer

    def session(self, node: Node) -> Session:
        """The session ``node`` uses towards the other one."""
        session = self.peer_of(node).current
        assert session is not None
        return session


def ipv6_packet(src: bytes, dst: bytes, payload: bytes, next_header: int = 17) -> bytes:
    """A minimal IPv6 packet (no checksum work: the overlay does not look inside)."""
    header = bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([next_header, 64])
    return header + src + dst + payload
