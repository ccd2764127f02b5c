"""The TCP fallback to base servers: framing (core/basewire.py), the client's switching between UDP and TCP
(core/base_client.py, on a fake clock), TCP clients in the server's engine (server/registry.py), and on
loopback the server's TCP side (server/tcp.py, server/service.py) and the daemon's bridge
(daemon/base_tcp.py).

Socket tests use 127.0.0.1 only, wait with timeouts (never for a fixed time) and close what they open.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from fixed_identities import fixed_identity
from hypothesis import given, settings
from hypothesis import strategies as st

from husarnet_ros.core import basewire
from husarnet_ros.core.base_client import (
    DEFAULT_BASE_PORT,
    TCP_RETRY_S,
    UDP_RETRY_S,
    BaseClient,
    BaseLink,
    BaseState,
)
from husarnet_ros.core.basewire import FRAME_LENGTH_SIZE, MAX_FRAME, FrameDecoder, frame
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.peer import Endpoint
from husarnet_ros.daemon.base_tcp import TcpBridge
from husarnet_ros.server import service as service_module
from husarnet_ros.server import tcp
from husarnet_ros.server.registry import TCP_PORT_OFFSET, BaseServer, is_tcp
from husarnet_ros.server.service import BaseServerConfig, BaseServerService

ALICE = fixed_identity("base tcp alice")
BOB = fixed_identity("base tcp bob")
CAROL = fixed_identity("base tcp carol")
DAVE = fixed_identity("base tcp dave")

WAIT_S = 5.0  # the longest any socket test waits for something that should happen at once


def framed(message: bytes) -> bytes:
    """The TCP framing written out by hand (not with basewire.frame), so the tests check it too."""
    return len(message).to_bytes(2, "big") + message


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


# =========================================================================== 1. framing
def test_a_frame_is_a_big_endian_length_and_the_message() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(memoryview(b"x" * 300)) == b"\x01\x2c" + b"x" * 300
    assert frame(bytes(MAX_FRAME))[:FRAME_LENGTH_SIZE] == b"\xff\xff"


@pytest.mark.parametrize("size", [0, MAX_FRAME + 1, 100_000])
def test_frame_refuses_an_empty_or_too_large_message(size: int) -> None:
    with pytest.raises(ProtocolError):
        frame(bytes(size))


def test_frames_fed_byte_by_byte_come_out_whole_and_in_order() -> None:
    messages = [b"a", b"\x00" * 2, bytes(range(256)) * 3, b"\xff" * MAX_FRAME, b"last"]
    stream = b"".join(frame(m) for m in messages)
    decoder = FrameDecoder()
    out: list[bytes] = []
    view = memoryview(stream)
    for i in range(len(stream)):
        out += decoder.feed(view[i : i + 1])
        assert decoder.pending <= MAX_FRAME + 1
    assert out == messages
    assert decoder.pending == 0


@settings(max_examples=200)
@given(messages=st.lists(st.binary(min_size=1, max_size=700), max_size=12), data=st.data())
def test_frames_cut_anywhere_come_out_whole_and_in_order(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(m) for m in messages)
    ends = list(itertools.accumulate(len(m) + FRAME_LENGTH_SIZE for m in messages))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=24))))
    decoder = FrameDecoder()
    out: list[bytes] = []
    for start, end in itertools.pairwise([0, *cuts, len(stream)]):
        out += decoder.feed(stream[start:end])
        complete = sum(1 for e in ends if e <= end)
        # Exactly the frames complete so far came out, and only the rest of the stream is held.
        assert out == messages[:complete]
        assert decoder.pending == end - (ends[complete - 1] if complete else 0)
    assert decoder.pending == 0


def test_pending_holds_at_most_one_incomplete_frame() -> None:
    decoder = FrameDecoder()
    whole = frame(b"\x07" * MAX_FRAME)
    assert decoder.feed(frame(b"first") + whole[:-1]) == [b"first"]
    assert decoder.pending == MAX_FRAME + 1  # the largest incomplete frame there is
    assert decoder.feed(whole[-1:]) == [b"\x07" * MAX_FRAME]
    assert decoder.pending == 0


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\x00\x00"],
        [b"\x00", b"\x00"],
        [frame(b"ok") + b"\x00\x00"],
        [frame(b"ok"), b"\x00\x00rest"],
    ],
    ids=["alone", "split", "after-a-frame", "next-chunk"],
)
def test_a_zero_length_raises(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks[:-1]:
        decoder.feed(chunk)
    with pytest.raises(ProtocolError):
        decoder.feed(chunks[-1])


@settings(max_examples=100)
@given(chunks=st.lists(st.binary(max_size=3000), max_size=30))
def test_any_byte_stream_either_decodes_or_raises_and_holds_little(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert 0 < len(message) <= MAX_FRAME
            assert decoder.pending <= MAX_FRAME + 1
    except ProtocolError:
        pass


# =========================================================================== 2. client switching (fake clock)
BASE_NAME = f"198.18.1.1:{DEFAULT_BASE_PORT}"
BASE_UDP = ("198.18.1.1", DEFAULT_BASE_PORT)
ALICE_UDP = ("198.18.0.10", 40000)  # Alice's UDP endpoint as the base sees it
ALICE_TCP = ("198.18.0.10", 50000 + TCP_PORT_OFFSET)  # her TCP connection, as the base's engine names it
ALICE_LOCAL = ("192.168.5.10", 40000)
BRIDGE = ("127.0.0.1", 47001)  # the loopback end of the daemon's TCP bridge
T0 = 1024.0
STEP = 0.0625  # the daemon's round, and the one-way trip of every answer: binary fractions keep time exact
MAX_STEPS = 10_000


@dataclass
class TcpLab:
    """Alice's BaseClient and a real BaseServer joined by hand on a fake clock. UDP between them works unless
    ``udp_blocked``; after ``open_bridge`` what Alice sends to BRIDGE reaches the base from ALICE_TCP and the
    answers come back from BRIDGE (what daemon/base_tcp.py and the service do). Each step delivers the
    answers due, ticks the client and sends what it queued; an answer arrives one step after its request."""

    server: BaseServer = field(default_factory=BaseServer)
    client: BaseClient = field(default_factory=lambda: BaseClient(ALICE, lambda: [ALICE_LOCAL]))
    now: float = T0
    udp_blocked: bool = False
    bridge_open: bool = False
    sent: list[tuple[float, Endpoint, bytes]] = field(default_factory=list)  # (time, to, data)
    _arrivals: list[tuple[float, int, Endpoint, bytes]] = field(default_factory=list)  # (time, n, from, data)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.client.set_servers([(BASE_NAME, BASE_UDP)], self.now)

    @property
    def link(self) -> BaseLink:
        return self.client.links[0]

    def open_bridge(self) -> None:
        self.bridge_open = True
        self.client.use_tcp(self.link, BRIDGE, self.now)
        self.flush()

    def flush(self) -> None:
        while self.client.outbox:
            to, data = self.client.outbox.popleft()
            self.sent.append((self.now, to, data))
            if to == BASE_UDP and not self.udp_blocked:
                self._at_base(data, ALICE_UDP, answers_from=BASE_UDP)
            elif to == BRIDGE and self.bridge_open:
                self._at_base(data, ALICE_TCP, answers_from=BRIDGE)

    def _at_base(self, data: bytes, source: Endpoint, answers_from: Endpoint) -> None:
        for answer_to, answer in self.server.receive(data, source, self.now):
            assert answer_to == source
            heapq.heappush(self._arrivals, (self.now + STEP, next(self._order), answers_from, answer))

    def deliver(self) -> None:
        while self._arrivals and self._arrivals[0][0] <= self.now:
            _, _, source, data = heapq.heappop(self._arrivals)
            lost = self.udp_blocked if source == BASE_UDP else not self.bridge_open
            if not lost:
                self.client.receive(data, source, self.now)

    def step(self) -> None:
        self.now += STEP
        self.deliver()
        self.client.tick(self.now)
        self.flush()

    def run_for(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            self.step()

    def run_until(self, condition: Callable[[], bool], what: str) -> None:
        for _ in range(MAX_STEPS):
            if condition():
                return
            self.step()
        raise AssertionError(f"never {what}")

    def sent_to(self, to: Endpoint, kind: int, since: float = 0.0) -> list[float]:
        return [t for t, dst, data in self.sent if dst == to and data[0] == kind and t >= since]


def on_tcp() -> tuple[TcpLab, float]:
    """A lab where UDP to the base is blocked and Alice registered over TCP; and when she switched."""
    lab = TcpLab(udp_blocked=True)
    lab.run_until(lambda: lab.link.tcp_wanted, "wanted TCP")
    switched = lab.now
    lab.open_bridge()
    lab.run_until(lambda: lab.link.state is BaseState.REGISTERED, "registered over TCP")
    return lab, switched


def test_a_base_silent_over_udp_goes_down_and_then_wants_tcp() -> None:
    lab = TcpLab(udp_blocked=True)
    for _ in range(MAX_STEPS):
        if lab.link.state is BaseState.DOWN:
            break
        assert not lab.link.tcp_wanted, "TCP wanted before UDP was given up"
        lab.step()
    assert lab.link.state is BaseState.DOWN
    assert lab.link.tcp_wanted
    assert lab.link.transport == "udp"
    assert lab.client.endpoints() == {BASE_UDP}
    assert len(lab.sent_to(BASE_UDP, basewire.MSG_BASE_HELLO)) == 3  # DOWN_AFTER_UNANSWERED
    assert not lab.sent_to(BRIDGE, basewire.MSG_BASE_HELLO)


def test_a_base_that_answers_over_udp_never_wants_tcp() -> None:
    lab = TcpLab()
    lab.run_for(30.0)
    assert lab.link.state is BaseState.REGISTERED
    assert not lab.link.tcp_wanted
    assert lab.link.transport == "udp"


def test_over_tcp_the_messages_go_through_the_bridge_and_the_base_is_registered_and_home() -> None:
    lab = TcpLab(udp_blocked=True)
    lab.run_until(lambda: lab.link.tcp_wanted, "wanted TCP")
    switched = lab.now
    lab.open_bridge()
    link = lab.link
    assert (link.endpoint, link.transport, link.tcp_wanted) == (BRIDGE, "tcp", False)
    assert lab.sent[-1] == (switched, BRIDGE, basewire.encode_hello())  # a hello through the bridge at once
    assert lab.client.endpoints() == {BASE_UDP, BRIDGE}
    assert lab.client.is_base(BRIDGE)
    assert lab.client.is_base(BASE_UDP)
    lab.run_for(1.0)
    assert link.state is BaseState.REGISTERED
    assert link.registered_at == switched + 2 * STEP  # hello -> challenge, register -> welcome
    assert lab.client.home is link
    assert lab.client.counters["base_tcp_fallbacks"] == 1
    assert lab.sent_to(BRIDGE, basewire.MSG_BASE_REGISTER) == [switched + STEP]
    assert lab.server.clients[ALICE.address].endpoint == ALICE_TCP
    assert link.observed == ("198.18.0.10", 50000)  # the real TCP port, not the engine's name for it
    assert lab.client.status()[0]["transport"] == "tcp"
    assert lab.client.status()[0]["state"] == "registered"
    assert lab.client.status()[0]["home"] is True


def test_over_tcp_keepalives_use_the_bridge_and_udp_is_probed_every_udp_retry() -> None:
    lab, switched = on_tcp()
    lab.run_for(3 * UDP_RETRY_S + 1)
    assert lab.sent_to(BASE_UDP, basewire.MSG_BASE_HELLO, since=switched) == [
        switched + UDP_RETRY_S,
        switched + 2 * UDP_RETRY_S,
        switched + 3 * UDP_RETRY_S,
    ]
    # Nothing but those probes goes to the UDP endpoint; the keepalives (every 5 s) go through the bridge.
    assert all(
        data == basewire.encode_hello() for t, to, data in lab.sent if to == BASE_UDP and t >= switched
    )
    assert len(lab.sent_to(BRIDGE, basewire.MSG_BASE_HELLO)) >= (3 * UDP_RETRY_S) // 5.25
    assert lab.link.transport == "tcp"
    assert lab.link.state is BaseState.REGISTERED
    assert lab.client.counters["base_down"] == 1  # only the UDP loss before TCP


def test_a_challenge_answering_the_udp_probe_moves_the_link_back_to_udp() -> None:
    lab, switched = on_tcp()
    lab.udp_blocked = False
    probe = switched + UDP_RETRY_S
    for _ in range(MAX_STEPS):
        if lab.link.transport == "udp":
            break
        assert lab.client.home is lab.link
        lab.step()
    back = lab.now
    assert back == probe + STEP  # the probe's answer, at once
    assert lab.link.endpoint == BASE_UDP
    assert lab.client.counters["base_udp_again"] == 1
    assert lab.sent_to(BASE_UDP, basewire.MSG_BASE_REGISTER) == [back]  # the registration goes over UDP
    lab.run_for(20.0)
    assert lab.link.state is BaseState.REGISTERED
    assert lab.client.home is lab.link
    assert lab.link.observed == ALICE_UDP
    assert lab.server.clients[ALICE.address].endpoint == ALICE_UDP
    assert lab.client.endpoints() == {BASE_UDP}
    assert not [t for t, to, _ in lab.sent if to == BRIDGE and t >= back]
    assert lab.sent_to(BASE_UDP, basewire.MSG_BASE_HELLO, since=back + STEP)  # keepalives over UDP


def test_an_unsolicited_message_over_udp_while_on_tcp_is_ignored_and_counted() -> None:
    lab, _ = on_tcp()
    assert lab.link.hello_sent_at is None  # nothing of ours awaits an answer
    challenge = lab.server.receive(basewire.encode_hello(), ALICE_UDP, lab.now)[0][1]
    stale_welcome = basewire.Welcome(ALICE.address, 25, ALICE_UDP).encode()
    lab.client.receive(challenge, BASE_UDP, lab.now)
    lab.client.receive(stale_welcome, BASE_UDP, lab.now)
    assert lab.client.counters["drop_base_other_transport"] == 2
    assert not lab.client.outbox  # nothing signed, nothing sent
    assert (lab.link.transport, lab.link.endpoint) == ("tcp", BRIDGE)
    assert lab.link.observed == ("198.18.0.10", 50000)


def test_a_udp_challenge_while_a_tcp_hello_awaits_its_answer_is_not_a_probe_answer() -> None:
    lab, _ = on_tcp()
    lab.run_until(lambda: lab.link.hello_sent_at is not None, "sent a keepalive hello")
    assert lab.sent[-1][1] == BRIDGE
    challenge = lab.server.receive(basewire.encode_hello(), ALICE_UDP, lab.now)[0][1]
    lab.client.receive(challenge, BASE_UDP, lab.now)
    assert lab.client.counters["drop_base_other_transport"] == 1
    assert lab.link.transport == "tcp"


def test_the_probe_answer_counts_even_after_the_tcp_keepalive_answer() -> None:
    lab, switched = on_tcp()
    lab.udp_blocked = False
    # The daemon's round comes when both timers are due (its loop wakes for the keepalive, not the probe).
    lab.now = switched + UDP_RETRY_S
    lab.client.tick(lab.now)
    assert [to for to, data in lab.client.outbox if data == basewire.encode_hello()] == [BRIDGE, BASE_UDP]
    lab.flush()
    lab.step()  # the TCP challenge is delivered first, then the UDP one
    assert lab.link.transport == "udp"


def test_a_base_that_answers_over_udp_again_no_longer_wants_tcp() -> None:
    lab = TcpLab(udp_blocked=True)
    lab.run_until(lambda: lab.link.tcp_wanted, "wanted TCP")
    lab.udp_blocked = False  # UDP is back before the daemon's TCP connection is up
    lab.run_until(lambda: lab.link.state is BaseState.REGISTERED, "registered over UDP")
    assert lab.link.transport == "udp"
    assert not lab.link.tcp_wanted


def test_tcp_failing_puts_the_base_down_and_tcp_is_wanted_again_only_after_tcp_retry() -> None:
    lab, _ = on_tcp()
    downs = lab.client.counters["base_down"]
    failed = lab.now
    lab.bridge_open = False
    lab.client.tcp_failed(lab.link, failed)
    link = lab.link
    assert (link.state, link.transport, link.endpoint, link.tcp_wanted) == (
        BaseState.DOWN,
        "udp",
        BASE_UDP,
        False,
    )
    assert link.rtt_ms is None
    assert lab.client.home is None
    assert lab.client.counters["base_down"] == downs + 1
    assert lab.client.endpoints() == {BASE_UDP}
    lab.flush()
    lab.step()
    assert lab.sent_to(BASE_UDP, basewire.MSG_BASE_HELLO, since=failed) == [failed + STEP]  # UDP at once
    while lab.now < failed + TCP_RETRY_S:
        assert not link.tcp_wanted, f"TCP wanted again {lab.now - failed} s after it failed"
        lab.step()
    assert lab.now == failed + TCP_RETRY_S
    assert link.tcp_wanted


def test_a_bridge_that_never_connected_fails_without_a_second_down() -> None:
    lab = TcpLab(udp_blocked=True)
    lab.run_until(lambda: lab.link.tcp_wanted, "wanted TCP")
    failed = lab.now
    lab.client.tcp_failed(lab.link, failed)
    assert lab.link.state is BaseState.DOWN
    assert lab.client.counters["base_down"] == 1
    assert not lab.link.tcp_wanted
    lab.run_until(lambda: lab.link.tcp_wanted, "wanted TCP again")
    assert lab.now == failed + TCP_RETRY_S


def test_answers_from_a_bridge_no_longer_in_use_are_not_the_base() -> None:
    lab, _ = on_tcp()
    lab.udp_blocked = False
    lab.run_until(lambda: lab.link.transport == "udp", "back on UDP")
    assert not lab.client.is_base(BRIDGE)
    lab.client.receive(basewire.encode_unknown(), BRIDGE, lab.now)
    assert lab.client.counters["drop_base_not_configured"] == 1


# =========================================================================== 3. TCP clients in the engine
ENGINE_T0 = 6000.0  # the start of a cookie epoch
BOB_TCP = ("198.18.0.20", 51000 + TCP_PORT_OFFSET)
BOB_LAN = [("192.168.7.2", 40000), ("10.1.0.2", 40000)]


def register_in(server: BaseServer, identity: Identity, endpoint: Endpoint, lan: list[Endpoint]) -> Endpoint:
    """hello -> challenge -> signed registration -> welcome from ``endpoint``; the observed endpoint."""
    ((to, answer),) = server.receive(basewire.encode_hello(), endpoint, ENGINE_T0)
    challenge = basewire.decode_challenge(answer)
    register = basewire.Register(challenge.epoch, challenge.cookie, identity.public_key, lan)
    signature = identity.sign(basewire.REGISTER_CONTEXT + register.signed_part())
    ((to, answer),) = server.receive(register.signed_part() + signature, endpoint, ENGINE_T0)
    assert to == endpoint
    welcome = basewire.decode_welcome(answer)
    assert welcome.address == identity.address
    return welcome.observed


def test_tcp_endpoints_are_told_apart_from_udp_ones() -> None:
    assert is_tcp(BOB_TCP)
    assert is_tcp(tcp.tcp_endpoint(("198.18.0.20", 0)))
    assert not is_tcp(ALICE_UDP)
    assert not is_tcp(("198.18.0.20", 65535))
    assert tcp.tcp_endpoint(("198.18.0.20", 51000)) == BOB_TCP
    assert tcp.tcp_endpoint(("::1", 443, 0, 0)) == ("::1", 443 + TCP_PORT_OFFSET)


@pytest.mark.parametrize(
    ("seen_as", "observed"),
    [
        (BOB_TCP, ("198.18.0.20", 51000)),
        (("::ffff:198.18.0.20", 51000 + TCP_PORT_OFFSET), ("198.18.0.20", 51000)),
        (("fd00:98::20", 443 + TCP_PORT_OFFSET), ("fd00:98::20", 443)),
    ],
)
def test_a_client_over_tcp_is_welcomed_with_its_real_port(seen_as: Endpoint, observed: Endpoint) -> None:
    server = BaseServer()
    assert register_in(server, BOB, seen_as, BOB_LAN) == observed
    assert server.clients[BOB.address].endpoint == seen_as


def test_peers_get_a_tcp_clients_local_endpoints_but_never_its_tcp_endpoint() -> None:
    server = BaseServer()
    register_in(server, ALICE, ALICE_UDP, [ALICE_LOCAL])
    register_in(server, BOB, BOB_TCP, BOB_LAN)
    answers = dict(server.receive(basewire.encode_connect(BOB.address), ALICE_UDP, ENGINE_T0))
    assert set(answers) == {ALICE_UDP, BOB_TCP}  # Bob's half goes over his TCP connection
    to_alice = basewire.decode_peer(answers[ALICE_UDP])
    assert to_alice == basewire.PeerInfo(BOB.address, True, BOB_LAN)
    assert ("198.18.0.20", 51000) not in to_alice.candidates
    assert basewire.decode_peer(answers[BOB_TCP]) == basewire.PeerInfo(
        ALICE.address, True, [ALICE_UDP, ALICE_LOCAL]
    )


def test_a_tcp_client_without_local_endpoints_has_no_candidates() -> None:
    server = BaseServer()
    register_in(server, ALICE, ALICE_UDP, [])
    register_in(server, BOB, BOB_TCP, [])
    answers = dict(server.receive(basewire.encode_connect(BOB.address), ALICE_UDP, ENGINE_T0))
    assert basewire.decode_peer(answers[ALICE_UDP]) == basewire.PeerInfo(BOB.address, True, [])


def test_relays_between_udp_and_tcp_clients_go_to_the_endpoint_each_registered_from() -> None:
    server = BaseServer()
    register_in(server, ALICE, ALICE_UDP, [])
    register_in(server, BOB, BOB_TCP, [])
    to_bob = basewire.relay_header(basewire.MSG_BASE_RELAY, BOB.address) + b"sealed for bob"
    to_alice = basewire.relay_header(basewire.MSG_BASE_RELAY, ALICE.address) + b"sealed for alice"
    assert server.receive(to_bob, ALICE_UDP, ENGINE_T0) == [
        (BOB_TCP, basewire.relay_header(basewire.MSG_BASE_RELAYED, ALICE.address) + b"sealed for bob")
    ]
    assert server.receive(to_alice, BOB_TCP, ENGINE_T0) == [
        (ALICE_UDP, basewire.relay_header(basewire.MSG_BASE_RELAYED, BOB.address) + b"sealed for alice")
    ]
    batch = bytearray(to_bob * 3)
    assert server.relay_in_place(batch, len(batch), len(to_bob), ALICE_UDP) == BOB_TCP


def test_a_client_back_on_udp_is_a_candidate_again_and_its_tcp_endpoint_is_forgotten() -> None:
    server = BaseServer()
    register_in(server, ALICE, ALICE_UDP, [])
    register_in(server, BOB, BOB_TCP, BOB_LAN)
    bob_udp = ("198.18.0.20", 40001)
    register_in(server, BOB, bob_udp, BOB_LAN)
    answers = dict(server.receive(basewire.encode_connect(BOB.address), ALICE_UDP, ENGINE_T0))
    assert basewire.decode_peer(answers[ALICE_UDP]).candidates == [bob_udp, *BOB_LAN]
    relay = basewire.relay_header(basewire.MSG_BASE_RELAY, ALICE.address) + b"frame"
    assert server.receive(relay, BOB_TCP, ENGINE_T0) == [(BOB_TCP, basewire.encode_unknown())]


# =========================================================================== 4. the service on loopback
class FramedClient:
    """A base client over TCP, framing by hand."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=WAIT_S)
        self.port: int = self.sock.getsockname()[1]
        self._buffer = bytearray()

    def send(self, message: bytes) -> None:
        self.sock.sendall(framed(message))

    def receive(self) -> bytes:
        while True:
            if len(self._buffer) >= 2:
                size = int.from_bytes(self._buffer[:2], "big")
                if len(self._buffer) >= 2 + size:
                    message = bytes(self._buffer[2 : 2 + size])
                    del self._buffer[: 2 + size]
                    return message
            chunk = self.sock.recv(256 * 1024)  # times out after WAIT_S
            if not chunk:
                raise ConnectionError("the base server closed the connection")
            self._buffer += chunk

    def closed_by_server(self, timeout: float | None = None) -> bool:
        """Whether the server closed the connection (waiting for it at most ``timeout``, default WAIT_S);
        False when it is still open then."""
        previous = self.sock.gettimeout()
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(previous)

    def close(self) -> None:
        self.sock.close()


class DatagramClient:
    """A base client over UDP."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.base = (host, port, 0, 0) if family == socket.AF_INET6 else (host, port)
        self.sock.settimeout(WAIT_S)
        self.port: int = self.sock.getsockname()[1]

    def send(self, message: bytes) -> None:
        self.sock.sendto(message, self.base)

    def receive(self) -> bytes:
        data, source = self.sock.recvfrom(65535)
        assert source[:2] == self.base[:2]
        return data

    def close(self) -> None:
        self.sock.close()


def register_with(client: FramedClient | DatagramClient, identity: Identity, lan: list[Endpoint]) -> Endpoint:
    """hello -> challenge -> signed registration -> welcome, as BaseClient does; the observed endpoint."""
    client.send(basewire.encode_hello())
    challenge = basewire.decode_challenge(client.receive())
    register = basewire.Register(challenge.epoch, challenge.cookie, identity.public_key, lan)
    client.send(register.signed_part() + identity.sign(basewire.REGISTER_CONTEXT + register.signed_part()))
    welcome = basewire.decode_welcome(client.receive())
    assert welcome.address == identity.address
    return welcome.observed


def relay_to(destination: Identity, payload: bytes) -> bytes:
    return basewire.relay_header(basewire.MSG_BASE_RELAY, destination.address) + payload


def relayed_from(source: Identity, payload: bytes) -> bytes:
    return basewire.relay_header(basewire.MSG_BASE_RELAYED, source.address) + payload


@contextlib.contextmanager
def running(config: BaseServerConfig) -> Iterator[BaseServerService]:
    service = BaseServerService(config)
    thread = threading.Thread(target=service.run, name="test base server", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(timeout=WAIT_S)
    assert not thread.is_alive(), "the base server did not stop"


@pytest.fixture
def service() -> Iterator[BaseServerService]:
    with running(BaseServerConfig("127.0.0.1", 0, 0, status_interval=60)) as service:
        yield service


@pytest.fixture
def clients() -> Iterator[list[FramedClient | DatagramClient]]:
    """Every client a test opens, closed after it."""
    opened: list[FramedClient | DatagramClient] = []
    yield opened
    for client in opened:
        client.close()


def test_status_names_the_tcp_port_and_counts_connections(
    service: BaseServerService, clients: list[FramedClient | DatagramClient]
) -> None:
    status = service.status()
    assert status["tcp_port"] == service.tcp_port
    assert isinstance(service.tcp_port, int)
    assert service.tcp_port > 0
    assert status["tcp_connections"] == 0
    clients.append(FramedClient(service.tcp_port))
    wait_until(lambda: service.status()["tcp_connections"] == 1, "the connection is counted")
    clients.append(FramedClient(service.tcp_port))
    wait_until(lambda: service.status()["tcp_connections"] == 2, "both connections are counted")


def test_without_tcp_there_is_no_listener() -> None:
    with running(BaseServerConfig("127.0.0.1", 0, None, status_interval=60)) as service:
        assert service.listener is None
        assert service.status()["tcp_port"] is None
        assert service.status()["tcp_connections"] == 0


def test_tcp_and_udp_clients_register_meet_and_relay_to_each_other(
    service: BaseServerService, clients: list[FramedClient | DatagramClient]
) -> None:
    assert service.tcp_port is not None
    bob = FramedClient(service.tcp_port)
    alice = DatagramClient(service.port)
    clients += [bob, alice]
    assert register_with(bob, BOB, BOB_LAN) == ("127.0.0.1", bob.port)
    assert register_with(alice, ALICE, [ALICE_LOCAL]) == ("127.0.0.1", alice.port)

    alice.send(basewire.encode_connect(BOB.address))
    assert basewire.decode_peer(alice.receive()) == basewire.PeerInfo(BOB.address, True, BOB_LAN)
    assert basewire.decode_peer(bob.receive()) == basewire.PeerInfo(
        ALICE.address, True, [("127.0.0.1", alice.port), ALICE_LOCAL]
    )

    payloads = [bytes([n]) * size for n, size in enumerate([1, 100, 1400, 9000, 60_000])]
    for payload in payloads:
        alice.send(relay_to(BOB, payload))
        assert bob.receive() == relayed_from(ALICE, payload)
    for payload in payloads:
        bob.send(relay_to(ALICE, payload))
        assert alice.receive() == relayed_from(BOB, payload)
    burst = [n.to_bytes(2, "big") * 300 for n in range(50)]
    for payload in burst:
        bob.send(relay_to(ALICE, payload))  # back to back: they leave in frames cut anywhere by TCP
    assert [alice.receive() for _ in burst] == [relayed_from(BOB, p) for p in burst]


def test_a_zero_length_frame_closes_that_connection_only(
    service: BaseServerService, clients: list[FramedClient | DatagramClient]
) -> None:
    assert service.tcp_port is not None
    bob, carol = FramedClient(service.tcp_port), FramedClient(service.tcp_port)
    alice = DatagramClient(service.port)
    clients += [bob, carol, alice]
    for client, identity in ((bob, BOB), (carol, CAROL), (alice, ALICE)):
        register_with(client, identity, [])
    assert service.status()["tcp_connections"] == 2

    carol.sock.sendall(b"\x00\x00")
    assert carol.closed_by_server()
    wait_until(lambda: service.status()["tcp_connections"] == 1, "the connection is dropped")

    alice.send(relay_to(CAROL, b"for carol"))  # still registered, but her connection is gone
    alice.send(relay_to(BOB, b"for bob"))
    assert bob.receive() == relayed_from(ALICE, b"for bob")
    bob.send(relay_to(ALICE, b"for alice"))
    assert alice.receive() == relayed_from(BOB, b"for alice")
    bob.send(basewire.encode_hello())
    assert basewire.decode_challenge(bob.receive())
    status = service.status()
    assert status["tcp_connections"] == 1
    assert isinstance(status["counters"], dict)
    assert status["counters"]["drop_tcp_send"] == 1


def test_a_frame_split_across_writes_is_one_message(
    service: BaseServerService, clients: list[FramedClient | DatagramClient]
) -> None:
    assert service.tcp_port is not None
    bob = FramedClient(service.tcp_port)
    clients.append(bob)
    data = framed(basewire.encode_hello())
    bob.sock.sendall(data[:1])
    wait_until(lambda: service.status()["tcp_connections"] == 1, "the connection is accepted")
    bob.sock.sendall(data[1:20])
    bob.sock.sendall(data[20:])
    assert len(basewire.decode_challenge(bob.receive()).cookie) == basewire.COOKIE_SIZE


# --------------------------------------------------------------------------- the server's Connection
@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of non-blocking stream sockets with small buffers: (server side, client side)."""
    server_side, client_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (server_side, client_side):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.setblocking(False)
    yield server_side, client_side
    server_side.close()
    client_side.close()


def drain(sock: socket.socket) -> bytes:
    received = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def test_a_connection_writes_what_the_socket_takes_and_the_rest_later(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, client_side = socket_pair
    connection = tcp.Connection(server_side, ("127.0.0.1", 40000 + TCP_PORT_OFFSET))
    messages = [bytes([n]) * 20_000 for n in range(20)]
    for message in messages:
        assert connection.enqueue(message)
    assert connection.queued_bytes == sum(len(framed(m)) for m in messages)
    received = bytearray()
    rounds = 0
    while connection.queue and rounds < 1000:
        rounds += 1
        assert connection.write()
        received += drain(client_side)
    assert rounds > 1  # the socket took part of the queue at a time, frames cut anywhere
    assert bytes(received) == b"".join(framed(m) for m in messages)
    assert connection.queued_bytes == 0


def test_a_connection_queue_is_bounded(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    server_side, _ = socket_pair
    connection = tcp.Connection(server_side, ("127.0.0.1", 40000 + TCP_PORT_OFFSET))
    message = bytes(MAX_FRAME)
    accepted = 0
    while connection.enqueue(message):
        accepted += 1
        assert accepted * len(framed(message)) <= tcp.MAX_QUEUED_BYTES
    assert accepted == tcp.MAX_QUEUED_BYTES // len(framed(message))
    assert connection.queued_bytes <= tcp.MAX_QUEUED_BYTES
    assert not connection.enqueue(b"x" * (tcp.MAX_QUEUED_BYTES - connection.queued_bytes - 1))
    assert connection.enqueue(b"x" * (tcp.MAX_QUEUED_BYTES - connection.queued_bytes - FRAME_LENGTH_SIZE))
    assert connection.queued_bytes == tcp.MAX_QUEUED_BYTES


def test_a_connection_reads_messages_and_ends_on_close_or_a_bad_frame(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, client_side = socket_pair
    connection = tcp.Connection(server_side, ("127.0.0.1", 40000 + TCP_PORT_OFFSET))
    assert connection.read() == []  # nothing yet
    client_side.sendall(framed(b"one") + framed(b"two")[:3])
    assert connection.read() == [b"one"]
    client_side.sendall(framed(b"two")[3:])
    assert connection.read() == [b"two"]
    client_side.sendall(b"\x00\x00")
    assert connection.read() is None


def test_a_connection_read_ends_when_the_client_closes(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, client_side = socket_pair
    connection = tcp.Connection(server_side, ("127.0.0.1", 40000 + TCP_PORT_OFFSET))
    client_side.shutdown(socket.SHUT_WR)
    assert connection.read() is None


# =========================================================================== 5. the daemon's TCP bridge
class FrameServer:
    """A TCP server on loopback that accepts one connection, records the frames it receives and sends what
    the test asks it to."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.received: queue.Queue[bytes] = queue.Queue()
        self.accepted = threading.Event()
        self.ended = threading.Event()  # the connection ended (closed by the peer, or a bad frame)
        self.connection: socket.socket | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="test frame server", daemon=True)
        self._thread.start()

    def _accept(self) -> socket.socket | None:
        while not self._stopping:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return None
            connection.settimeout(None)
            return connection
        return None

    def _serve(self) -> None:
        connection = self._accept()
        if connection is None:
            return
        self.connection = connection
        self.accepted.set()
        decoder = FrameDecoder()
        try:
            while True:
                data = connection.recv(256 * 1024)
                if not data:
                    break
                for message in decoder.feed(data):
                    self.received.put(message)
        except (OSError, ProtocolError):
            pass
        self.ended.set()

    def send(self, data: bytes) -> None:
        assert self.accepted.wait(WAIT_S), "the bridge never connected"
        assert self.connection is not None
        self.connection.sendall(data)

    def close_connection(self) -> None:
        assert self.accepted.wait(WAIT_S), "the bridge never connected"
        assert self.connection is not None
        self.connection.shutdown(socket.SHUT_RDWR)  # wakes our own reader too

    def stop(self) -> None:
        self._stopping = True
        if self.connection is not None:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=WAIT_S)
        if self.connection is not None:
            self.connection.close()
        self.listener.close()
        assert not self._thread.is_alive()


@pytest.fixture
def frame_server() -> Iterator[FrameServer]:
    server = FrameServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemon_socket() -> Iterator[socket.socket]:
    """The daemon's UDP socket, as the bridge knows it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT_S)
    yield sock
    sock.close()


@pytest.fixture
def bridges() -> Iterator[list[TcpBridge]]:
    """Every bridge a test opens, closed after it."""
    opened: list[TcpBridge] = []
    yield opened
    for bridge in opened:
        bridge.close()


def open_bridge(bridges: list[TcpBridge], name: str, port: int, daemon: socket.socket) -> TcpBridge:
    bridge = TcpBridge(name, ("127.0.0.1", port), daemon.getsockname()[1])
    bridges.append(bridge)
    return bridge


def bridge_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"base-tcp {name}"]


def test_the_bridge_carries_datagrams_both_ways(
    frame_server: FrameServer, daemon_socket: socket.socket, bridges: list[TcpBridge]
) -> None:
    bridge = open_bridge(bridges, "carry", frame_server.port, daemon_socket)
    assert bridge.endpoint[0] == "127.0.0.1"
    wait_until(lambda: bridge.state == "connected", "the bridge is connected")
    messages = [basewire.encode_hello(), b"\x16" + bytes(range(200)), b"x" * 60_000, b"y"]
    for message in messages:
        daemon_socket.sendto(message, bridge.endpoint)
    assert [frame_server.received.get(timeout=WAIT_S) for _ in messages] == messages

    answers = [b"a" * 40, b"b" * 1400, b"c" * 60_000]
    stream = b"".join(framed(m) for m in answers)
    frame_server.send(stream[:1])  # frames cut anywhere: the bridge sends whole messages only
    frame_server.send(stream[1:1500])
    frame_server.send(stream[1500:])
    for answer in answers:
        assert daemon_socket.recvfrom(65535) == (answer, bridge.endpoint)
    assert bridge.state == "connected"


def test_the_bridge_forwards_only_the_daemons_datagrams(
    frame_server: FrameServer, daemon_socket: socket.socket, bridges: list[TcpBridge]
) -> None:
    bridge = open_bridge(bridges, "only-daemon", frame_server.port, daemon_socket)
    wait_until(lambda: bridge.state == "connected", "the bridge is connected")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        intruder.bind(("127.0.0.1", 0))
        intruder.sendto(b"from someone else", bridge.endpoint)
        daemon_socket.sendto(b"", bridge.endpoint)  # no message is empty: not framed, and no harm done
        daemon_socket.sendto(b"from the daemon", bridge.endpoint)
        # Sent before, so forwarded before, had they been forwarded at all.
        assert frame_server.received.get(timeout=WAIT_S) == b"from the daemon"
        daemon_socket.sendto(b"again", bridge.endpoint)
        assert frame_server.received.get(timeout=WAIT_S) == b"again"
    assert bridge.state == "connected"


def test_a_bridge_to_a_closed_port_fails(daemon_socket: socket.socket, bridges: list[TcpBridge]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # the port is ours but nobody listens: connections are refused
        bridge = open_bridge(bridges, "refused", closed.getsockname()[1], daemon_socket)
        wait_until(lambda: bridge.state == "failed", "the bridge failed")
    wait_until(lambda: not bridge_threads("refused"), "the bridge thread ended")
    bridge.close()
    assert bridge.state == "failed"


def test_a_bridge_fails_when_the_base_closes_the_connection(
    frame_server: FrameServer, daemon_socket: socket.socket, bridges: list[TcpBridge]
) -> None:
    bridge = open_bridge(bridges, "closed-by-base", frame_server.port, daemon_socket)
    wait_until(lambda: bridge.state == "connected", "the bridge is connected")
    frame_server.close_connection()
    wait_until(lambda: bridge.state == "failed", "the bridge failed")
    wait_until(lambda: not bridge_threads("closed-by-base"), "the bridge thread ended")


def test_a_bridge_fails_on_a_zero_length_frame_from_the_base(
    frame_server: FrameServer, daemon_socket: socket.socket, bridges: list[TcpBridge]
) -> None:
    bridge = open_bridge(bridges, "bad-frame", frame_server.port, daemon_socket)
    wait_until(lambda: bridge.state == "connected", "the bridge is connected")
    frame_server.send(b"\x00\x00")
    wait_until(lambda: bridge.state == "failed", "the bridge failed")
    assert frame_server.ended.wait(WAIT_S)  # and its end of the connection is closed


def test_closing_a_bridge_ends_its_thread_and_its_connection(
    frame_server: FrameServer, daemon_socket: socket.socket, bridges: list[TcpBridge]
) -> None:
    bridge = open_bridge(bridges, "close", frame_server.port, daemon_socket)
    wait_until(lambda: bridge.state == "connected", "the bridge is connected")
    assert bridge_threads("close")
    bridge.close()
    assert bridge.state == "closed"
    assert not bridge_threads("close")
    assert bridge.udp.fileno() == -1
    assert frame_server.ended.wait(WAIT_S)


# --------------------------------------------------------------------------- idle and crowded TCP connections
def test_a_bad_frame_is_counted_when_the_connection_is_closed(
    service: BaseServerService, clients: list[FramedClient | DatagramClient]
) -> None:
    assert service.tcp_port is not None
    mallory = FramedClient(service.tcp_port)
    clients.append(mallory)
    mallory.sock.sendall(b"\x00\x00")
    assert mallory.closed_by_server()
    wait_until(lambda: counters(service).get("tcp_closed_bad_frame") == 1, "the bad frame is counted")


def counters(service: BaseServerService) -> dict[str, int]:
    found = service.status()["counters"]
    assert isinstance(found, dict)
    return found


def test_silent_and_idle_connections_are_closed(
    monkeypatch: pytest.MonkeyPatch, clients: list[FramedClient | DatagramClient]
) -> None:
    # A connection that never sends a whole frame, and one that stops sending, must not hold a slot forever.
    monkeypatch.setattr(tcp, "FIRST_FRAME_WITHIN_S", 0.3)
    monkeypatch.setattr(tcp, "IDLE_CLOSE_AFTER_S", 1.5)
    monkeypatch.setattr(service_module, "_EXPIRE_EVERY_S", 0.05)
    with running(BaseServerConfig("127.0.0.1", 0, 0, status_interval=60)) as service:
        assert service.tcp_port is not None
        silent, talker = FramedClient(service.tcp_port), FramedClient(service.tcp_port)
        clients += [silent, talker]
        silent.sock.sendall(b"\x00")  # half a length: never a frame
        talker.send(basewire.encode_hello())
        assert basewire.decode_challenge(talker.receive())
        assert silent.closed_by_server()
        assert counters(service)["tcp_closed_idle"] >= 1
        assert not talker.closed_by_server(timeout=0.1)  # it spoke recently
        assert talker.closed_by_server()  # and then went quiet for longer than the idle limit
        wait_until(lambda: service.status()["tcp_connections"] == 0, "both closed")


def test_one_host_cannot_take_every_connection(
    monkeypatch: pytest.MonkeyPatch, clients: list[FramedClient | DatagramClient]
) -> None:
    monkeypatch.setattr(tcp, "MAX_CONNECTIONS_PER_HOST", 2)
    with running(BaseServerConfig("127.0.0.1", 0, 0, status_interval=60)) as service:
        assert service.tcp_port is not None
        first, second, third = (FramedClient(service.tcp_port) for _ in range(3))
        clients += [first, second, third]
        assert third.closed_by_server()
        assert counters(service)["drop_tcp_too_many"] == 1
        first.send(basewire.encode_hello())
        assert basewire.decode_challenge(first.receive())


def test_one_base_server_serves_ipv4_and_ipv6_clients_over_udp_and_tcp(
    clients: list[FramedClient | DatagramClient],
) -> None:
    # Listening on "::" (the default) takes both families on both transports; a relay crosses families.
    with running(BaseServerConfig("::", 0, 0, status_interval=60)) as service:
        assert service.tcp_port is not None
        alice = DatagramClient(service.port, "::1")
        bob = FramedClient(service.tcp_port, "::1")
        carol = DatagramClient(service.port, "127.0.0.1")
        dave = FramedClient(service.tcp_port, "127.0.0.1")
        clients += [alice, bob, carol, dave]
        assert register_with(alice, ALICE, []) == ("::1", alice.port)
        assert register_with(bob, BOB, []) == ("::1", bob.port)
        assert register_with(carol, CAROL, []) == ("127.0.0.1", carol.port)  # not ::ffff:127.0.0.1
        assert register_with(dave, DAVE, [])[0] == "127.0.0.1"
        alice.send(relay_to(CAROL, b"v6 to v4"))
        assert carol.receive() == relayed_from(ALICE, b"v6 to v4")
        dave.send(relay_to(BOB, b"v4 tcp to v6 tcp"))
        assert bob.receive() == relayed_from(DAVE, b"v4 tcp to v6 tcp")
