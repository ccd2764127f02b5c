"""The base server's protocol engine (server/registry.py), sans-IO: datagrams and the time in, datagrams out.

Clients here are built by hand from basewire messages so that each test can break exactly one thing.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fixed_identities import failing_seed, fixed_identity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from husarnet_ros.core import basewire
from husarnet_ros.core.constants import HANDSHAKE_INIT_BURST, HANDSHAKE_INITS_PER_SECOND
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.peer import Endpoint
from husarnet_ros.server.registry import (
    COOKIE_EPOCH_S,
    EXPIRE_AFTER_S,
    REFRESH_S,
    BaseServer,
    Datagram,
)

ALICE = fixed_identity("base alice")
BOB = fixed_identity("base bob")
CAROL = fixed_identity("base carol")

ALICE_AT = ("198.18.0.10", 40000)
BOB_AT = ("198.18.0.20", 40001)
CAROL_AT = ("198.18.0.30", 40002)
STRANGER_AT = ("198.18.0.99", 50000)
T0 = 6000.0  # the start of a cookie epoch (6000 / 60 = 100)


def challenge_for(server: BaseServer, endpoint: Endpoint, now: float) -> basewire.Challenge:
    answers = server.receive(basewire.encode_hello(), endpoint, now)
    assert len(answers) == 1
    assert answers[0][0] == endpoint
    return basewire.decode_challenge(answers[0][1])


def signed_register(
    identity: Identity, challenge: basewire.Challenge, local_endpoints: list[Endpoint] | None = None
) -> bytes:
    message = basewire.Register(challenge.epoch, challenge.cookie, identity.public_key, local_endpoints or [])
    return message.signed_part() + identity.sign(basewire.REGISTER_CONTEXT + message.signed_part())


def register(
    server: BaseServer,
    identity: Identity,
    endpoint: Endpoint,
    now: float,
    local_endpoints: list[Endpoint] | None = None,
) -> basewire.Welcome:
    """hello -> challenge -> signed registration -> welcome, all from ``endpoint``."""
    challenge = challenge_for(server, endpoint, now)
    answers = server.receive(signed_register(identity, challenge, local_endpoints), endpoint, now)
    assert len(answers) == 1, server.counters
    assert answers[0][0] == endpoint
    return basewire.decode_welcome(answers[0][1])


def relay(destination: bytes, frame: bytes) -> bytes:
    return basewire.relay_header(basewire.MSG_BASE_RELAY, destination) + frame


def is_unknown(answers: list[Datagram], endpoint: Endpoint) -> bool:
    return answers == [(endpoint, basewire.encode_unknown())]


# --------------------------------------------------------------------------- cookies
def test_hello_is_answered_with_a_challenge_bound_to_the_source_endpoint() -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0)
    assert challenge.epoch == BaseServer.epoch(T0)
    other_port = challenge_for(server, (ALICE_AT[0], ALICE_AT[1] + 1), T0)
    other_host = challenge_for(server, BOB_AT, T0)
    assert len({challenge.cookie, other_port.cookie, other_host.cookie}) == 3
    assert challenge_for(server, ALICE_AT, T0 + 1) == challenge  # stateless: same endpoint, same epoch
    assert server.clients == {}
    assert server.counters["challenges"] == 4


def test_two_servers_give_different_cookies() -> None:
    assert challenge_for(BaseServer(), ALICE_AT, T0) != challenge_for(BaseServer(), ALICE_AT, T0)


@pytest.mark.parametrize("used_from", [BOB_AT, (ALICE_AT[0], ALICE_AT[1] + 1), ("fd00:98::10", ALICE_AT[1])])
def test_a_cookie_from_one_endpoint_is_refused_from_another(used_from: Endpoint) -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0)
    assert server.receive(signed_register(ALICE, challenge), used_from, T0) == []
    assert server.counters["drop_bad_cookie"] == 1
    assert server.clients == {}
    # the same registration from the endpoint the cookie was made for is accepted
    assert server.receive(signed_register(ALICE, challenge), ALICE_AT, T0)
    assert ALICE.address in server.clients


def test_previous_epoch_cookie_is_accepted() -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0)
    later = T0 + 2 * COOKIE_EPOCH_S - 1  # the last moment of the next epoch
    assert BaseServer.epoch(later) == challenge.epoch + 1
    assert server.receive(signed_register(ALICE, challenge), ALICE_AT, later)
    assert ALICE.address in server.clients


@pytest.mark.parametrize("epochs_later", [2, 3, 100])
def test_older_cookie_is_refused(epochs_later: int) -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0 + COOKIE_EPOCH_S - 1)  # the last moment of its epoch
    later = T0 + epochs_later * COOKIE_EPOCH_S
    assert server.receive(signed_register(ALICE, challenge), ALICE_AT, later) == []
    assert server.counters["drop_bad_cookie"] == 1
    assert server.clients == {}


def test_a_cookie_for_a_future_epoch_is_refused() -> None:
    server = BaseServer()
    future = BaseServer.epoch(T0) + 1
    challenge = basewire.Challenge(future, server.cookie(ALICE_AT, future))  # as if the key had leaked
    assert server.receive(signed_register(ALICE, challenge), ALICE_AT, T0) == []
    assert server.counters["drop_bad_cookie"] == 1


def test_a_forged_cookie_is_refused() -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0)
    forged = basewire.Challenge(challenge.epoch, bytes(a ^ 1 for a in challenge.cookie))
    assert server.receive(signed_register(ALICE, forged), ALICE_AT, T0) == []
    assert server.counters["drop_bad_cookie"] == 1
    assert server.clients == {}


# --------------------------------------------------------------------------- registration
def test_bad_signature_is_refused_and_nothing_stored() -> None:
    server = BaseServer()
    data = bytearray(signed_register(ALICE, challenge_for(server, ALICE_AT, T0)))
    data[-1] ^= 0x01
    assert server.receive(bytes(data), ALICE_AT, T0) == []
    assert server.counters["drop_bad_signature"] == 1
    assert server.clients == {}
    assert server.counters["registrations"] == 0


def test_someone_elses_key_with_my_signature_is_refused() -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0)
    message = basewire.Register(challenge.epoch, challenge.cookie, BOB.public_key, [])
    data = message.signed_part() + ALICE.sign(basewire.REGISTER_CONTEXT + message.signed_part())
    assert server.receive(data, ALICE_AT, T0) == []
    assert server.counters["drop_bad_signature"] == 1
    assert server.clients == {}


def test_signature_without_the_context_is_refused() -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0)
    message = basewire.Register(challenge.epoch, challenge.cookie, ALICE.public_key, [])
    data = message.signed_part() + ALICE.sign(message.signed_part())
    assert server.receive(data, ALICE_AT, T0) == []
    assert server.counters["drop_bad_signature"] == 1


def test_key_failing_the_proof_of_work_is_refused() -> None:
    server = BaseServer()
    key = SigningKey(failing_seed("base registry"))
    challenge = challenge_for(server, ALICE_AT, T0)
    message = basewire.Register(challenge.epoch, challenge.cookie, bytes(key.verify_key), [])
    data = message.signed_part() + key.sign(basewire.REGISTER_CONTEXT + message.signed_part()).signature
    assert server.receive(data, ALICE_AT, T0) == []
    assert server.counters["drop_bad_key"] == 1
    assert server.clients == {}


def test_tampered_endpoint_list_is_refused() -> None:
    server = BaseServer()
    challenge = challenge_for(server, ALICE_AT, T0)
    signed = signed_register(ALICE, challenge, [("198.18.5.5", 5582)])
    tampered = basewire.Register(challenge.epoch, challenge.cookie, ALICE.public_key, [("198.18.6.6", 5582)])
    assert server.receive(tampered.signed_part() + signed[-64:], ALICE_AT, T0) == []
    assert server.counters["drop_bad_signature"] == 1
    assert server.clients == {}


def test_welcome_carries_the_address_and_the_observed_endpoint() -> None:
    server = BaseServer()
    welcome = register(server, ALICE, ALICE_AT, T0, [("192.168.1.5", 5582)])
    assert welcome == basewire.Welcome(ALICE.address, REFRESH_S, ALICE_AT)
    client = server.clients[ALICE.address]
    assert client.public_key == ALICE.public_key
    assert client.endpoint == ALICE_AT
    assert client.local_endpoints == [("192.168.1.5", 5582)]
    assert server.counters["registrations"] == 1


def test_ipv4_client_seen_through_a_dual_stack_socket_is_shown_as_ipv4() -> None:
    server = BaseServer()
    welcome = register(server, ALICE, ("::ffff:198.18.0.7", 4000), T0)
    assert welcome.observed == ("198.18.0.7", 4000)


def test_ipv6_client_is_shown_as_ipv6() -> None:
    server = BaseServer()
    assert register(server, ALICE, ("fd00:98::7", 4000), T0).observed == ("fd00:98::7", 4000)


def test_re_registration_from_a_new_endpoint_moves_the_client() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    moved_to = ("198.18.0.11", 40100)
    welcome = register(server, ALICE, moved_to, T0 + 10)
    assert welcome.observed == moved_to
    assert server.clients[ALICE.address].endpoint == moved_to
    assert len(server.clients) == 2
    assert (server.counters["registrations"], server.counters["refreshes"]) == (2, 1)
    # the old endpoint is no longer Alice: it can neither relay nor ask for rendezvous
    assert is_unknown(server.receive(relay(BOB.address, b"frame"), ALICE_AT, T0 + 11), ALICE_AT)
    assert is_unknown(server.receive(basewire.encode_connect(BOB.address), ALICE_AT, T0 + 11), ALICE_AT)
    # the new one is, and Bob's frames for Alice go there
    assert server.receive(relay(BOB.address, b"frame"), moved_to, T0 + 11)[0][0] == BOB_AT
    assert server.receive(relay(ALICE.address, b"frame"), BOB_AT, T0 + 11)[0][0] == moved_to


def test_refresh_updates_the_advertised_endpoints() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0, [("192.168.1.5", 5582)])
    register(server, ALICE, ALICE_AT, T0 + REFRESH_S, [("192.168.1.6", 5582)])
    assert server.clients[ALICE.address].local_endpoints == [("192.168.1.6", 5582)]
    assert server.clients[ALICE.address].last_seen == T0 + REFRESH_S


def test_moving_away_does_not_unregister_the_client_now_at_the_old_endpoint() -> None:
    server = BaseServer()
    shared = ("198.18.0.50", 41000)  # a NAT mapping that Alice lost and Bob was then given
    register(server, ALICE, shared, T0)
    register(server, BOB, BOB_AT, T0)
    register(server, CAROL, shared, T0 + 5)
    register(server, ALICE, ALICE_AT, T0 + 10)
    answers = server.receive(relay(BOB.address, b"frame"), shared, T0 + 11)
    assert answers
    assert answers[0][0] == BOB_AT


# --------------------------------------------------------------------------- rendezvous
def test_connect_from_an_unregistered_endpoint_gets_unknown() -> None:
    server = BaseServer()
    register(server, BOB, BOB_AT, T0)
    answers = server.receive(basewire.encode_connect(BOB.address), STRANGER_AT, T0)
    assert is_unknown(answers, STRANGER_AT)
    assert server.counters["drop_unregistered"] == 1


def test_connect_to_an_unknown_peer_answers_only_the_requester() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    answers = server.receive(basewire.encode_connect(BOB.address), ALICE_AT, T0)
    assert len(answers) == 1
    assert answers[0][0] == ALICE_AT
    assert basewire.decode_peer(answers[0][1]) == basewire.PeerInfo(BOB.address, False, [])
    assert server.counters["connect_unknown_peer"] == 1


def test_connect_to_oneself_is_answered_as_unknown() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    answers = server.receive(basewire.encode_connect(ALICE.address), ALICE_AT, T0)
    assert [(to, basewire.decode_peer(data)) for to, data in answers] == [
        (ALICE_AT, basewire.PeerInfo(ALICE.address, False, []))
    ]


def test_connect_to_a_known_peer_tells_both_at_once() -> None:
    server = BaseServer()
    alice_lan = [("192.168.1.5", 5582), ("fd00:98::5", 5582)]
    bob_lan = [("10.1.2.3", 5582)]
    register(server, ALICE, ALICE_AT, T0, alice_lan)
    register(server, BOB, BOB_AT, T0, bob_lan)
    answers = server.receive(basewire.encode_connect(BOB.address), ALICE_AT, T0 + 1)
    decoded = {to: basewire.decode_peer(data) for to, data in answers}
    assert len(answers) == 2
    assert decoded[ALICE_AT] == basewire.PeerInfo(BOB.address, True, [BOB_AT, *bob_lan])
    assert decoded[BOB_AT] == basewire.PeerInfo(ALICE.address, True, [ALICE_AT, *alice_lan])
    assert server.counters["connects"] == 1


def test_candidates_are_observed_first_without_duplicates_and_bounded() -> None:
    server = BaseServer()
    bob_observed = ("::ffff:198.18.0.20", 40001)
    bob_lan = [("198.18.0.20", 40001)] + [(f"10.0.0.{i}", 5582) for i in range(1, 9)]  # observed, then 8
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, bob_observed, T0, bob_lan)
    answers = server.receive(basewire.encode_connect(BOB.address), ALICE_AT, T0)
    to_alice = next(basewire.decode_peer(data) for to, data in answers if to == ALICE_AT)
    assert to_alice.candidates[0] == ("198.18.0.20", 40001)
    assert len(to_alice.candidates) == basewire.MAX_ENDPOINTS
    assert len(set(to_alice.candidates)) == len(to_alice.candidates)
    assert to_alice.candidates[1:] == bob_lan[1 : basewire.MAX_ENDPOINTS]


# --------------------------------------------------------------------------- relay
def test_relay_from_an_unregistered_endpoint_gets_unknown() -> None:
    server = BaseServer()
    register(server, BOB, BOB_AT, T0)
    assert is_unknown(server.receive(relay(BOB.address, b"frame"), STRANGER_AT, T0), STRANGER_AT)
    assert server.counters["drop_relay_unregistered"] == 1
    assert server.counters["relayed_frames"] == 0


def test_relay_to_an_unknown_destination_is_dropped_and_counted() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    assert server.receive(relay(BOB.address, b"frame"), ALICE_AT, T0) == []
    assert server.counters["drop_relay_no_destination"] == 1
    assert server.counters["relayed_frames"] == 0


@settings(max_examples=40, deadline=None)
@given(frame=st.binary(min_size=1, max_size=1400))
def test_relay_names_the_registered_sender_and_keeps_the_frame(frame: bytes) -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    answers = server.receive(relay(BOB.address, frame), ALICE_AT, T0)
    assert len(answers) == 1
    to, data = answers[0]
    assert to == BOB_AT
    assert data[0] == basewire.MSG_BASE_RELAYED
    source, relayed_frame = basewire.decode_relay(data, "base relayed")
    assert source == ALICE.address  # the sender's registered address, never what the sender wrote
    assert bytes(relayed_frame) == frame
    assert server.counters["relayed_frames"] == 1
    assert server.counters["relayed_bytes"] == len(frame)
    assert server.clients[ALICE.address].relayed_bytes == len(frame)


def test_relayed_bytes_add_up_in_the_status() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    for size in (1, 100, 1000):
        server.receive(relay(BOB.address, bytes(size)), ALICE_AT, T0)
    server.receive(relay(ALICE.address, bytes(7)), BOB_AT, T0)
    status = server.status()
    assert status["clients"] == 2
    assert status["relayed_frames"] == 4
    assert status["relayed_bytes"] == 1108
    assert server.clients[ALICE.address].relayed_bytes == 1101
    assert server.clients[BOB.address].relayed_bytes == 7


def test_relay_from_another_port_of_a_registered_host_gets_unknown() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    spoofed = (ALICE_AT[0], ALICE_AT[1] + 1)
    assert is_unknown(server.receive(relay(BOB.address, b"frame"), spoofed, T0), spoofed)


def test_relay_is_not_slowed_by_a_hello_flood_from_the_same_host() -> None:
    """Only hellos, registrations and rendezvous requests are rate limited, not relayed data."""
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    for _ in range(100):
        server.receive(basewire.encode_hello(), ALICE_AT, T0 + 1)
    assert server.counters["drop_rate_limited"] > 0
    for _ in range(100):
        assert server.receive(relay(BOB.address, b"frame"), ALICE_AT, T0 + 1)
    assert server.counters["relayed_frames"] == 100


# --------------------------------------------------------------------------- limits and expiry
def test_client_cap_refuses_new_clients_but_lets_existing_ones_refresh() -> None:
    server = BaseServer(max_clients=2)
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    challenge = challenge_for(server, CAROL_AT, T0)
    assert server.receive(signed_register(CAROL, challenge), CAROL_AT, T0) == []
    assert server.counters["drop_too_many_clients"] == 1
    assert CAROL.address not in server.clients
    assert register(server, ALICE, ALICE_AT, T0 + 20).address == ALICE.address
    assert register(server, BOB, ("198.18.0.21", 40001), T0 + 20).address == BOB.address  # moving is fine too
    assert set(server.clients) == {ALICE.address, BOB.address}
    # once Alice is gone there is room again
    register(server, BOB, BOB_AT, T0 + 80)
    assert server.expire(T0 + 20 + EXPIRE_AFTER_S + 1) == 1
    assert register(server, CAROL, CAROL_AT, T0 + 20 + EXPIRE_AFTER_S + 1).address == CAROL.address


def test_a_client_that_stops_refreshing_expires() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    assert server.expire(T0 + EXPIRE_AFTER_S - 1) == 0
    assert server.expire(T0 + EXPIRE_AFTER_S + 1) == 2
    assert server.clients == {}
    assert server.counters["expired"] == 2
    later = T0 + EXPIRE_AFTER_S + 2
    assert is_unknown(server.receive(relay(BOB.address, b"frame"), ALICE_AT, later), ALICE_AT)
    assert is_unknown(server.receive(basewire.encode_connect(BOB.address), ALICE_AT, later), ALICE_AT)


def test_refreshing_keeps_a_client() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    now = T0
    for _ in range(10):  # well past EXPIRE_AFTER_S in total, one refresh per REFRESH_S
        now += REFRESH_S
        register(server, ALICE, ALICE_AT, now)
        server.expire(now)
    assert set(server.clients) == {ALICE.address}
    answers = server.receive(basewire.encode_connect(BOB.address), ALICE_AT, now)
    assert basewire.decode_peer(answers[0][1]).known is False


def test_expiry_after_a_move_forgets_the_new_endpoint() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    moved_to = ("198.18.0.11", 40100)
    register(server, ALICE, moved_to, T0 + 1)
    server.expire(T0 + 1 + EXPIRE_AFTER_S + 1)
    assert is_unknown(server.receive(relay(BOB.address, b"x"), moved_to, T0 + 200), moved_to)


# --------------------------------------------------------------------------- rate limiting
def test_a_hello_flood_at_one_moment_is_answered_at_most_burst_times() -> None:
    server = BaseServer()
    answered = sum(bool(server.receive(basewire.encode_hello(), ALICE_AT, T0)) for _ in range(500))
    assert 1 <= answered <= HANDSHAKE_INIT_BURST
    assert server.counters["drop_rate_limited"] == 500 - answered
    # other ports of the same host share the limit; other hosts do not
    assert server.receive(basewire.encode_hello(), (ALICE_AT[0], 1), T0) == []
    assert server.receive(basewire.encode_hello(), BOB_AT, T0)


def test_a_hello_flood_over_a_second_is_answered_at_most_burst_plus_rate() -> None:
    server = BaseServer()
    count = 1000
    answered = sum(
        bool(server.receive(basewire.encode_hello(), ALICE_AT, T0 + i / count)) for i in range(count)
    )
    assert HANDSHAKE_INIT_BURST <= answered <= HANDSHAKE_INIT_BURST + HANDSHAKE_INITS_PER_SECOND
    # and the host is served again once the flood stops
    assert server.receive(basewire.encode_hello(), ALICE_AT, T0 + 10)


def test_registrations_and_connects_share_the_limit() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)  # two tokens
    register(server, BOB, BOB_AT, T0)
    answered = sum(
        bool(server.receive(basewire.encode_connect(BOB.address), ALICE_AT, T0)) for _ in range(100)
    )
    assert answered <= HANDSHAKE_INIT_BURST - 2
    assert server.counters["drop_rate_limited"] >= 100 - answered


# --------------------------------------------------------------------------- garbage and restarts
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x0f" + bytes(63),
        b"\x19" + bytes(63),
        b"\xff" * 64,
        basewire.encode_hello()[:4],
        basewire.encode_hello() + b"\0",
        basewire.Challenge(1, bytes(32)).encode(),
        basewire.Welcome(ALICE.address, 25, ALICE_AT).encode(),
        basewire.PeerInfo(ALICE.address, True, [ALICE_AT]).encode(),
        basewire.relay_header(basewire.MSG_BASE_RELAYED, ALICE.address) + b"x",
        basewire.encode_unknown(),
        basewire.relay_header(basewire.MSG_BASE_RELAY, ALICE.address),
        bytes((basewire.MSG_BASE_REGISTER, 2, 0, 0)) + bytes(200),
        bytes((basewire.MSG_BASE_CONNECT, 2, 0, 0)),
    ],
)
def test_garbage_and_wrong_direction_messages_are_dropped_and_counted(data: bytes) -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    before = sum(server.counters.values())
    assert server.receive(data, ALICE_AT, T0 + 1) == []
    assert sum(server.counters.values()) == before + 1
    assert set(server.clients) == {ALICE.address}


def test_answers_to_unregistered_sources_are_never_larger_than_what_they_sent() -> None:
    """A spoofed source cannot use the base to amplify traffic toward a victim."""
    server = BaseServer()
    register(server, BOB, BOB_AT, T0)
    challenge = challenge_for(server, STRANGER_AT, T0)
    for data in (  # the registration last: from then on the source is registered
        basewire.encode_hello(),
        basewire.encode_connect(BOB.address),
        relay(BOB.address, b"x"),
        signed_register(ALICE, challenge),
    ):
        answers = server.receive(data, STRANGER_AT, T0 + 1)
        assert sum(len(answer) for _, answer in answers) <= len(data)
        assert all(to == STRANGER_AT for to, _ in answers)


def test_a_restarted_server_has_no_clients_until_they_register_again() -> None:
    first = BaseServer()
    register(first, ALICE, ALICE_AT, T0)
    register(first, BOB, BOB_AT, T0)
    old_challenge = challenge_for(first, ALICE_AT, T0 + 1)
    restarted = BaseServer()  # a new master key: the soft state and the cookies are gone
    assert restarted.clients == {}
    assert is_unknown(restarted.receive(relay(BOB.address, b"x"), ALICE_AT, T0 + 2), ALICE_AT)
    assert is_unknown(restarted.receive(basewire.encode_connect(BOB.address), ALICE_AT, T0 + 2), ALICE_AT)
    assert restarted.receive(signed_register(ALICE, old_challenge), ALICE_AT, T0 + 2) == []
    assert restarted.counters["drop_bad_cookie"] == 1
    register(restarted, ALICE, ALICE_AT, T0 + 3)
    register(restarted, BOB, BOB_AT, T0 + 3)
    answers = restarted.receive(relay(BOB.address, b"frame"), ALICE_AT, T0 + 4)
    assert answers == [(BOB_AT, basewire.relay_header(basewire.MSG_BASE_RELAYED, ALICE.address) + b"frame")]


def test_the_same_master_key_gives_the_same_cookies() -> None:
    key = bytes(range(32))
    assert challenge_for(BaseServer(master_key=key), ALICE_AT, T0) == challenge_for(
        BaseServer(master_key=key), ALICE_AT, T0
    )


FUZZ = settings(
    max_examples=400,
    deadline=timedelta(seconds=2),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    derandomize=True,
)


@st.composite
def base_datagrams(draw: st.DrawFn) -> bytes:
    """Random bytes, or a random body behind a valid base header (so the fuzzer reaches every handler)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    kind = draw(st.sampled_from(sorted(basewire.BASE_TYPES)))
    return basewire.header(kind) + draw(st.binary(max_size=200))


@FUZZ
@given(datagrams=st.lists(base_datagrams(), min_size=1, max_size=8))
def test_no_datagram_makes_the_server_raise(datagrams: list[bytes]) -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    for i, data in enumerate(datagrams):
        for source in (ALICE_AT, STRANGER_AT):
            for to, answer in server.receive(data, source, T0 + i):
                assert to in (ALICE_AT, BOB_AT, STRANGER_AT)
                assert answer[0] in basewire.BASE_TYPES
    server.expire(T0 + 1000)
    assert server.clients == {}


# --------------------------------------------------------------------------- relay fast path (GRO batches)
def batch(*datagrams: bytes) -> tuple[bytearray, int, int]:
    """Datagrams back to back as UDP GRO hands them over: all of the first one's size but the last."""
    segment = len(datagrams[0])
    return bytearray(b"".join(datagrams)), sum(map(len, datagrams)), segment


def test_a_batch_of_relay_messages_is_rewritten_in_place_like_one_by_one() -> None:
    server = BaseServer()
    register(server, ALICE, ALICE_AT, T0)
    register(server, BOB, BOB_AT, T0)
    frames = [bytes([i]) * 100 for i in range(5)] + [b"\x09" * 40]
    expected = [server.receive(relay(BOB.address, frame), ALICE_AT, T0) for frame in frames]
    buffer, size, segment = batch(*(relay(BOB.address, frame) for frame in frames))
    assert server.relay_in_place(buffer, size, segment, ALICE_AT) == BOB_AT
    one_by_one = b"".join(answer[0][1] for answer in expected)
    assert bytes(buffer[:size]) == one_by_one  # the same bytes, in the same places
    assert server.counters["relayed_frames"] == 2 * len(frames)
    assert server.counters["relayed_bytes"] == 2 * sum(map(len, frames))


@pytest.mark.parametrize(
    "case", ["unregistered sender", "unknown destination", "mixed destinations", "not relay"]
)
def test_a_batch_that_is_not_uniform_is_left_untouched(case: str) -> None:
    server = BaseServer()
    register(server, BOB, BOB_AT, T0)
    register(server, CAROL, CAROL_AT, T0)
    sender = STRANGER_AT if case == "unregistered sender" else CAROL_AT
    if case != "unregistered sender":
        register(server, ALICE, ALICE_AT, T0)
        sender = ALICE_AT
    first = relay(BOB.address if case != "unknown destination" else bytes(16), b"a" * 50)
    second = relay(CAROL.address if case == "mixed destinations" else BOB.address, b"b" * 50)
    if case == "not relay":
        second = basewire.encode_hello()[: len(first)]
    buffer, size, segment = batch(first, second)
    before = bytes(buffer)
    assert server.relay_in_place(buffer, size, segment, sender) is None
    assert bytes(buffer) == before
    assert server.counters["relayed_frames"] == 0
