"""A node's side of the base servers (core/base_client.py), driven against real BaseServers in memory.

``BaseLab`` carries datagrams between clients and servers by hand on a fake clock: a server answers at once
and its answer reaches the client one round trip after the request was sent, so a base's RTT is whatever
the test sets. Times are binary fractions so that the clock arithmetic is exact.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from fixed_identities import fixed_identity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from husarnet_ros.core import basewire
from husarnet_ros.core.base_client import (
    ANSWER_TIMEOUT_S,
    CONNECT_INTERVAL_S,
    DEFAULT_BASE_PORT,
    DOWN_AFTER_UNANSWERED,
    HOME_SWITCH_MIN_GAIN_MS,
    HOME_SWITCH_MIN_SAMPLES,
    HOME_SWITCH_RATIO,
    KEEPALIVE_S,
    RETRY_MAX_S,
    BaseClient,
    BaseState,
    parse_base_server,
)
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.peer import Endpoint
from husarnet_ros.server.registry import BaseServer

ALICE = fixed_identity("base client alice")
BOB = fixed_identity("base client bob")

ALICE_AT = ("198.18.0.10", 40000)
BOB_AT = ("198.18.0.20", 40000)
BASE_A = ("198.18.1.1", DEFAULT_BASE_PORT)
BASE_B = ("198.18.1.2", DEFAULT_BASE_PORT)
BASE_C = ("198.18.1.3", DEFAULT_BASE_PORT)
STRANGER = ("198.18.9.9", DEFAULT_BASE_PORT)
T0 = 1024.0
MAX_STEPS = 100_000


def named(endpoint: Endpoint) -> tuple[str, Endpoint]:
    return f"{endpoint[0]}:{endpoint[1]}", endpoint


@dataclass
class BaseLab:
    """Clients and base servers joined by hand; ``rtt`` per base, ``silent`` bases drop everything."""

    clients: dict[Endpoint, BaseClient] = field(default_factory=dict)
    servers: dict[Endpoint, BaseServer] = field(default_factory=dict)
    rtt: dict[Endpoint, float] = field(default_factory=dict)
    silent: set[Endpoint] = field(default_factory=set)
    now: float = T0
    sent: list[tuple[float, Endpoint, Endpoint, bytes]] = field(
        default_factory=list
    )  # (time, from, to, data)
    _in_flight: list[tuple[float, int, Endpoint, Endpoint, bytes]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def add_client(
        self,
        identity: Identity,
        at: Endpoint,
        bases: list[Endpoint],
        local_endpoints: Callable[[], list[Endpoint]] = list,
    ) -> BaseClient:
        client = BaseClient(identity, local_endpoints)
        client.set_servers([named(base) for base in bases], self.now)
        self.clients[at] = client
        return client

    def add_server(self, at: Endpoint, rtt: float) -> BaseServer:
        server = self.servers[at] = BaseServer()
        self.rtt[at] = rtt
        return server

    def _flush(self) -> None:
        for source, client in self.clients.items():
            while client.outbox:
                to, data = client.outbox.popleft()
                self.sent.append((self.now, source, to, data))
                server = self.servers.get(to)
                if server is None or to in self.silent:
                    continue
                for answer_to, answer in server.receive(data, source, self.now):
                    arrival = self.now + self.rtt[to]
                    heapq.heappush(self._in_flight, (arrival, next(self._order), to, answer_to, answer))

    def run_until(self, end: float) -> None:
        for _ in range(MAX_STEPS):
            self._flush()
            due = min(client.next_timer(self.now) for client in self.clients.values())
            if self._in_flight:
                due = min(due, self._in_flight[0][0])
            if due > end:
                self.now = end
                return
            self.now = due
            while self._in_flight and self._in_flight[0][0] <= self.now:
                _, _, source, to, data = heapq.heappop(self._in_flight)
                if to in self.clients and source not in self.silent:
                    self.clients[to].receive(data, source, self.now)
            for client in self.clients.values():
                client.tick(self.now)
            for server in self.servers.values():
                server.expire(self.now)
        raise AssertionError("the simulation did not reach its end time")

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def hellos(self, source: Endpoint, to: Endpoint, since: float = 0.0) -> list[float]:
        return [
            time
            for time, src, dst, data in self.sent
            if src == source and dst == to and data[0] == basewire.MSG_BASE_HELLO and time >= since
        ]


def state(client: BaseClient, endpoint: Endpoint) -> BaseState:
    return next(link.state for link in client.links if link.endpoint == endpoint)


def rtt_ms(client: BaseClient, endpoint: Endpoint) -> float:
    value = next(link.rtt_ms for link in client.links if link.endpoint == endpoint)
    assert value is not None, f"no RTT measured for {endpoint}"
    return value


def home_endpoint(client: BaseClient) -> Endpoint | None:
    return None if client.home is None else client.home.endpoint


# --------------------------------------------------------------------------- registration and keepalive
def test_registers_with_the_base() -> None:
    lab = BaseLab()
    server = lab.add_server(BASE_A, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A], local_endpoints=lambda: [("192.168.1.5", 40000)])
    assert state(client, BASE_A) is BaseState.CONNECTING
    assert client.home is None
    lab.run_for(1.0)
    link = client.links[0]
    assert link.state is BaseState.REGISTERED
    assert link.observed == ALICE_AT
    assert link.rtt_ms == pytest.approx(62.5)
    assert link.registered_at == T0 + 2 * 0.0625  # hello -> challenge, register -> welcome
    assert client.home is link
    assert server.clients[ALICE.address].local_endpoints == [("192.168.1.5", 40000)]
    assert client.status() == [
        {
            "address": f"{BASE_A[0]}:{BASE_A[1]}",
            "transport": "udp",
            "state": "registered",
            "home": True,
            "rtt_ms": 62.5,
            "observed_endpoint": f"{ALICE_AT[0]}:{ALICE_AT[1]}",
        }
    ]


def test_sends_a_hello_every_keepalive_and_stays_registered() -> None:
    lab = BaseLab()
    rtt = 0.0625
    server = lab.add_server(BASE_A, rtt=rtt)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(120.0)
    hellos = lab.hellos(ALICE_AT, BASE_A)
    gaps = [later - earlier for earlier, later in itertools.pairwise(hellos)]
    assert len(hellos) >= 120 / (KEEPALIVE_S + 2 * rtt) - 1
    assert all(KEEPALIVE_S <= gap <= KEEPALIVE_S + 2 * rtt for gap in gaps)
    assert state(client, BASE_A) is BaseState.REGISTERED
    assert ALICE.address in server.clients  # refreshed, so never expired
    assert client.counters["base_down"] == 0


def test_a_silent_base_is_down_after_the_configured_unanswered_hellos_and_home_moves() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.03125)
    lab.add_server(BASE_B, rtt=0.125)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A, BASE_B])
    lab.run_for(2.0)
    assert home_endpoint(client) == BASE_A
    assert state(client, BASE_B) is BaseState.REGISTERED
    lab.silent.add(BASE_A)
    silenced_at = lab.now
    # step through time: it is still registered after fewer unanswered hellos, down right after the last one
    while state(client, BASE_A) is not BaseState.DOWN:
        assert len(lab.hellos(ALICE_AT, BASE_A, since=silenced_at)) <= DOWN_AFTER_UNANSWERED
        assert home_endpoint(client) == BASE_A
        assert lab.now < silenced_at + 60, "never went down"
        lab.run_for(0.0625)
    assert len(lab.hellos(ALICE_AT, BASE_A, since=silenced_at)) == DOWN_AFTER_UNANSWERED
    assert home_endpoint(client) == BASE_B
    assert client.links[0].rtt_ms is None
    assert client.counters["base_down"] == 1
    # it keeps being retried while down, and the other base stays registered
    lab.run_for(30.0)
    assert len(lab.hellos(ALICE_AT, BASE_A, since=silenced_at)) > DOWN_AFTER_UNANSWERED + 3
    assert state(client, BASE_A) is BaseState.DOWN
    assert state(client, BASE_B) is BaseState.REGISTERED
    assert home_endpoint(client) == BASE_B


def test_a_base_that_answers_again_is_registered_again_and_can_be_home_again() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.03125)
    lab.add_server(BASE_B, rtt=0.125)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A, BASE_B])
    lab.silent.add(BASE_A)
    lab.run_for(20.0)
    assert state(client, BASE_A) is BaseState.DOWN
    assert home_endpoint(client) == BASE_B
    lab.silent.clear()
    lab.run_for(RETRY_MAX_S + ANSWER_TIMEOUT_S + 1)
    assert state(client, BASE_A) is BaseState.REGISTERED
    lab.run_for(HOME_SWITCH_MIN_SAMPLES * KEEPALIVE_S)  # home moves only on settled RTTs
    assert home_endpoint(client) == BASE_A  # a quarter of B's RTT: well past the switch ratio


def test_with_every_base_down_there_is_no_home() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(2.0)
    lab.silent.add(BASE_A)
    lab.run_for(30.0)
    assert state(client, BASE_A) is BaseState.DOWN
    assert client.home is None
    assert client.connect(BOB.address, lab.now) is False


def test_a_down_base_is_retried_at_least_every_retry_max() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.silent.add(BASE_A)
    lab.run_for(10.0)
    assert state(client, BASE_A) is BaseState.DOWN
    since = lab.now
    lab.run_for(60.0)
    hellos = lab.hellos(ALICE_AT, BASE_A, since=since)
    gaps = [later - earlier for earlier, later in itertools.pairwise(hellos)]
    assert gaps
    assert max(gaps) <= RETRY_MAX_S, gaps


# --------------------------------------------------------------------------- home choice
def test_home_moves_to_a_clearly_faster_base() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.25)
    lab.add_server(BASE_B, rtt=0.03125)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(2.0)
    assert home_endpoint(client) == BASE_A
    client.set_servers([named(BASE_A), named(BASE_B)], lab.now)
    lab.run_for(2.0)
    assert state(client, BASE_B) is BaseState.REGISTERED
    assert rtt_ms(client, BASE_B) == pytest.approx(31.25)
    assert home_endpoint(client) == BASE_A  # one sample of B is not enough to move every relayed path
    lab.run_for(HOME_SWITCH_MIN_SAMPLES * KEEPALIVE_S)
    assert home_endpoint(client) == BASE_B
    lab.run_for(60.0)
    assert home_endpoint(client) == BASE_B
    assert client.home_changes == 2  # none -> A -> B, and no flapping after


@pytest.mark.parametrize("share", [0.75, 0.5625, HOME_SWITCH_RATIO + 0.03125])
def test_home_does_not_move_for_a_small_difference(share: float) -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.25)
    lab.add_server(BASE_B, rtt=0.25 * share)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(2.0)
    client.set_servers([named(BASE_A), named(BASE_B)], lab.now)
    lab.run_for(60.0)
    assert state(client, BASE_B) is BaseState.REGISTERED
    assert rtt_ms(client, BASE_B) < rtt_ms(client, BASE_A)
    assert home_endpoint(client) == BASE_A
    assert client.home_changes == 1


def test_home_does_not_move_for_a_gain_below_the_minimum() -> None:
    """Below the ratio but only a few milliseconds faster: noise, and a switch moves every relayed path."""
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=2**-8)  # 3.9 ms
    lab.add_server(BASE_B, rtt=2**-10)  # 1 ms: a quarter, but under 3 ms better
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(2.0)
    client.set_servers([named(BASE_A), named(BASE_B)], lab.now)
    lab.run_for(30.0)
    assert rtt_ms(client, BASE_B) < HOME_SWITCH_RATIO * rtt_ms(client, BASE_A)
    assert rtt_ms(client, BASE_A) - rtt_ms(client, BASE_B) < HOME_SWITCH_MIN_GAIN_MS
    assert home_endpoint(client) == BASE_A


def test_with_both_configured_at_once_the_faster_is_home() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.25)
    lab.add_server(BASE_B, rtt=0.03125)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A, BASE_B])  # the slow one first in the user's order
    lab.run_for(30.0)
    assert home_endpoint(client) == BASE_B


def test_a_network_change_registers_again_at_once_with_the_new_endpoints() -> None:
    lab = BaseLab()
    server_a = lab.add_server(BASE_A, rtt=0.0625)
    server_b = lab.add_server(BASE_B, rtt=0.125)
    addresses = [("192.168.1.5", 40000)]
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A, BASE_B], local_endpoints=lambda: list(addresses))
    lab.run_for(1.0)
    addresses[:] = [("192.168.7.7", 40000), ("fd00:98::7", 40000)]
    client.network_changed(lab.now)
    assert {to for to, data in client.outbox if data == basewire.encode_hello()} == {BASE_A, BASE_B}
    lab.run_for(0.5)  # well before the next keepalive
    for server in (server_a, server_b):
        assert server.clients[ALICE.address].local_endpoints == addresses


# --------------------------------------------------------------------------- base forgets us / bad answers
def test_unknown_triggers_an_immediate_hello() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(1.0)
    client.outbox.clear()
    client.receive(basewire.encode_unknown(), BASE_A, lab.now)
    assert list(client.outbox) == [(BASE_A, basewire.encode_hello())]
    assert client.counters["base_forgot_us"] == 1
    # a second one while that hello is outstanding does not send another
    client.receive(basewire.encode_unknown(), BASE_A, lab.now)
    assert len(client.outbox) == 1


def test_a_restarted_base_gets_the_client_back_at_once() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(1.0)
    restarted = lab.servers[BASE_A] = BaseServer()
    assert client.connect(BOB.address, lab.now)  # answered with UNKNOWN by the restarted base
    lab.run_for(0.5)  # well before the next keepalive
    assert ALICE.address in restarted.clients
    assert client.counters["base_forgot_us"] == 1
    assert state(client, BASE_A) is BaseState.REGISTERED


def test_welcome_for_another_address_is_ignored() -> None:
    client = BaseClient(ALICE)
    client.set_servers([named(BASE_A)], T0)
    client.tick(T0)
    client.receive(basewire.Welcome(BOB.address, 25, ALICE_AT).encode(), BASE_A, T0 + 0.125)
    assert state(client, BASE_A) is BaseState.CONNECTING
    assert client.links[0].observed is None
    assert client.home is None
    assert client.counters["drop_base_wrong_address"] == 1


def test_datagrams_from_unconfigured_endpoints_are_counted_and_ignored() -> None:
    client = BaseClient(ALICE)
    client.set_servers([named(BASE_A)], T0)
    client.tick(T0)
    client.outbox.clear()
    for data in (
        basewire.Challenge(1, bytes(32)).encode(),  # must not make us sign a registration for a stranger
        basewire.Welcome(ALICE.address, 25, ALICE_AT).encode(),
        basewire.PeerInfo(BOB.address, True, [BOB_AT]).encode(),
        basewire.encode_unknown(),
    ):
        client.receive(data, STRANGER, T0 + 0.125)
        client.receive(data, (BASE_A[0], BASE_A[1] + 1), T0 + 0.125)
    assert client.counters["drop_base_not_configured"] == 8
    assert not client.outbox
    assert not client.peer_infos
    assert state(client, BASE_A) is BaseState.CONNECTING


@pytest.mark.parametrize(
    ("data", "counter"),
    [
        (b"", "drop_base_unexpected"),
        (basewire.encode_hello(), "drop_base_unexpected"),
        (basewire.encode_connect(bytes(16)), "drop_base_unexpected"),
        (basewire.Challenge(1, bytes(32)).encode()[:-1], "drop_base_malformed"),
        (basewire.Welcome(ALICE.address, 25, ALICE_AT).encode() + b"\0", "drop_base_malformed"),
        (basewire.encode_unknown() + b"\0", "drop_base_malformed"),
        (bytes((basewire.MSG_BASE_PEER, 2, 0, 0)), "drop_base_malformed"),
    ],
)
def test_malformed_or_unexpected_messages_from_a_base_are_counted(data: bytes, counter: str) -> None:
    client = BaseClient(ALICE)
    client.set_servers([named(BASE_A)], T0)
    client.tick(T0)
    client.outbox.clear()
    client.receive(data, BASE_A, T0 + 0.125)
    assert client.counters[counter] == 1
    assert not client.outbox
    assert not client.peer_infos


# --------------------------------------------------------------------------- rendezvous
def test_connect_needs_a_home() -> None:
    client = BaseClient(ALICE)
    client.set_servers([named(BASE_A)], T0)
    client.tick(T0)
    client.outbox.clear()
    assert client.connect(BOB.address, T0) is False
    assert not client.outbox


def test_connect_is_rate_limited_per_target() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    lab.add_server(BASE_B, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A, BASE_B])
    lab.run_for(1.0)
    home = home_endpoint(client)
    client.outbox.clear()
    now = lab.now
    other = bytes.fromhex("fc94" + "33" * 14)
    assert client.connect(BOB.address, now) is True
    assert client.connect(BOB.address, now + CONNECT_INTERVAL_S - 0.125) is False
    assert client.connect(other, now + 1) is True
    assert client.connect(BOB.address, now + CONNECT_INTERVAL_S) is True
    assert list(client.outbox) == [
        (home, basewire.encode_connect(BOB.address)),
        (home, basewire.encode_connect(other)),
        (home, basewire.encode_connect(BOB.address)),
    ]


def test_connect_through_the_home_base_tells_both_peers() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    alice = lab.add_client(ALICE, ALICE_AT, [BASE_A], local_endpoints=lambda: [("192.168.1.5", 40000)])
    bob = lab.add_client(BOB, BOB_AT, [BASE_A], local_endpoints=lambda: [("10.0.0.7", 40000)])
    lab.run_for(1.0)
    assert alice.connect(BOB.address, lab.now)
    lab.run_for(1.0)
    assert list(alice.peer_infos) == [basewire.PeerInfo(BOB.address, True, [BOB_AT, ("10.0.0.7", 40000)])]
    assert list(bob.peer_infos) == [
        basewire.PeerInfo(ALICE.address, True, [ALICE_AT, ("192.168.1.5", 40000)])
    ]


def test_peer_infos_are_queued_in_order() -> None:
    client = BaseClient(ALICE)
    client.set_servers([named(BASE_A), named(BASE_B)], T0)
    infos = [
        basewire.PeerInfo(BOB.address, False, []),
        basewire.PeerInfo(BOB.address, True, [BOB_AT]),
        basewire.PeerInfo(bytes.fromhex("fc94" + "44" * 14), True, [("fd00:98::4", 9)]),
    ]
    for info, base in zip(infos, (BASE_A, BASE_B, BASE_A), strict=True):
        client.receive(info.encode(), base, T0)
    assert list(client.peer_infos) == infos


# --------------------------------------------------------------------------- configuration
def test_set_servers_keeps_known_links_and_drops_a_removed_home() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.03125)
    lab.add_server(BASE_B, rtt=0.125)
    lab.add_server(BASE_C, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A, BASE_B])
    lab.run_for(2.0)
    link_a, link_b = client.links
    assert client.home is link_a
    client.set_servers([named(BASE_B), named(BASE_A), named(BASE_C)], lab.now)
    assert client.links[0] is link_b
    assert client.links[1] is link_a
    assert link_a.state is BaseState.REGISTERED
    assert link_a.rtt_ms == pytest.approx(31.25)
    assert client.links[2].state is BaseState.CONNECTING
    assert client.home is link_a
    client.set_servers([named(BASE_B)], lab.now)
    assert client.links == [link_b]
    assert client.home is link_b
    assert not client.is_base(BASE_A)
    assert client.is_base(BASE_B)
    lab.run_for(30.0)
    assert not lab.hellos(ALICE_AT, BASE_A, since=lab.now - 29)  # a removed base is no longer contacted
    client.set_servers([], lab.now)
    assert client.home is None
    assert client.connect(BOB.address, lab.now) is False


def test_a_renamed_base_is_a_new_link() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(1.0)
    client.set_servers([("base.example:5582", BASE_A)], lab.now)
    assert client.links[0].state is BaseState.CONNECTING
    assert client.home is None
    lab.run_for(1.0)
    assert client.home is client.links[0]


FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@FUZZ
@given(
    datagrams=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.tuples(st.sampled_from(sorted(basewire.BASE_TYPES)), st.binary(max_size=120)).map(
                lambda kind_body: basewire.header(kind_body[0]) + kind_body[1]
            ),
        ),
        max_size=6,
    )
)
def test_no_datagram_from_a_base_makes_the_client_raise(datagrams: list[bytes]) -> None:
    client = BaseClient(ALICE)
    client.set_servers([named(BASE_A)], T0)
    client.tick(T0)
    for i, data in enumerate(datagrams):
        client.receive(data, BASE_A, T0 + i / 8)
        client.tick(T0 + i / 8)
    assert all(to == BASE_A for to, _ in client.outbox)


# --------------------------------------------------------------------------- parse_base_server
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("base.example", ("base.example", DEFAULT_BASE_PORT)),
        ("base.example:6000", ("base.example", 6000)),
        ("  base.example:6000 \n", ("base.example", 6000)),
        ("198.18.1.1", ("198.18.1.1", DEFAULT_BASE_PORT)),
        ("198.18.1.1:1", ("198.18.1.1", 1)),
        ("198.18.1.1:65535", ("198.18.1.1", 65535)),
        ("[fd00:98::1]:6000", ("fd00:98::1", 6000)),
        ("[fd00:98::1]", ("fd00:98::1", DEFAULT_BASE_PORT)),
        ("fd00:98::1", ("fd00:98::1", DEFAULT_BASE_PORT)),
        ("::1", ("::1", DEFAULT_BASE_PORT)),
    ],
)
def test_parse_base_server_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_base_server(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("base.example:0", "out of range"),
        ("base.example:65536", "out of range"),
        ("base.example:-1", "out of range"),
        ("base.example:http", "not a number"),
        ("[fd00:98::1]:99999", "out of range"),
        ("[fd00:98::1]:x", "not a number"),
        (":6000", "no host"),
        ("[]:6000", "no host"),
        ("[fd00:98::1", r"\[address\]:port"),
        ("[fd00:98::1]6000", r"\[address\]:port"),
    ],
)
def test_parse_base_server_refuses_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_base_server(text)
    if text.strip():
        assert repr(text) in str(caught.value)  # says which configured value is wrong


@pytest.mark.parametrize("text", ["base.example:5582:1", "198.18.1.1:80:90"])
def test_parse_base_server_refuses_a_host_with_extra_colons(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_base_server(text)


def test_an_unsolicited_challenge_is_not_answered() -> None:
    # The base's address is easy to spoof: a challenge we did not ask for must not make us sign and send.
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(2.0)
    assert state(client, BASE_A) is BaseState.REGISTERED
    client.outbox.clear()
    forged = basewire.Challenge(1, bytes(basewire.COOKIE_SIZE)).encode()
    for _ in range(10):
        client.receive(forged, BASE_A, lab.now)
    assert not client.outbox
    assert client.counters["drop_base_unsolicited"] == 10


def test_a_lost_relay_checks_the_home_at_once_so_a_dead_base_is_left_in_seconds() -> None:
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0625)
    lab.add_server(BASE_B, rtt=0.125)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A, BASE_B])
    lab.run_for(2.0)
    assert home_endpoint(client) == BASE_A
    lab.run_for(0.5)  # right after a keepalive: the next one would be ~5 s away
    lab.silent.add(BASE_A)
    lost_at = lab.now
    client.check_home(lab.now)
    while home_endpoint(client) == BASE_A:
        assert lab.now - lost_at < ANSWER_TIMEOUT_S * (DOWN_AFTER_UNANSWERED + 1), "still on the dead base"
        lab.run_for(0.0625)
    assert home_endpoint(client) == BASE_B
    assert client.counters["base_checks"] == 1


def test_a_slow_first_round_trip_does_not_move_a_healthy_home() -> None:
    # A daemon starting up measures its first RTT while busy: many times the real one. The home it chose must
    # not move to a base that merely registered later with a quicker first sample.
    lab = BaseLab()
    lab.add_server(BASE_A, rtt=0.0078125)  # 7.8 ms, the real RTT
    lab.add_server(BASE_B, rtt=0.0078125)
    client = lab.add_client(ALICE, ALICE_AT, [BASE_A])
    lab.run_for(1.0)
    link_a = next(link for link in client.links if link.endpoint == BASE_A)
    link_a.rtt_recent.clear()
    link_a.rtt_recent.append(80.0)  # the first sample, taken during start-up
    link_a.rtt_ms = 80.0
    client.set_servers([named(BASE_A), named(BASE_B)], lab.now)
    lab.run_for(2.0)
    assert state(client, BASE_B) is BaseState.REGISTERED
    assert home_endpoint(client) == BASE_A
    lab.run_for(60.0)  # with settled samples both are the same: still no reason to move
    assert home_endpoint(client) == BASE_A
    assert client.home_changes == 1
