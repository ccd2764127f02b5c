"""Hypothesis fuzzing of every decoder: only the module's own error type may come out (nothing, for the Node).

Inputs are arbitrary bytes and valid messages mutated (bit flips, truncation, extension, splices), so the
fuzzer reaches past the length and type checks into the cryptographic ones. Example counts are bounded so
the whole file runs in well under a minute; hypothesis' deadline turns a pathological slowdown into a failure.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from datetime import timedelta

from fixed_identities import fixed_identity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from husarnet_ros.core import beacon, handshake, wire
from husarnet_ros.core.errors import IdentityError, ProtocolError
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.node import Node
from husarnet_ros.core.session import Session
from husarnet_ros.testing.memnet import MemNet, ipv6_packet

FUZZ = settings(
    max_examples=1000,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # reproducible in CI; run with a random seed by hand to explore further
)

INITIATOR = fixed_identity("fuzz initiator")
RESPONDER = fixed_identity("fuzz responder")


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A valid message with a few random edits."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "set", "truncate", "extend", "splice"]))
        if edit in ("flip", "set") and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = (
                data[i] ^ (1 << draw(st.integers(0, 7))) if edit == "flip" else draw(st.integers(0, 255))
            )
        elif edit == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif edit == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif edit == "splice":
            other = draw(st.sampled_from(originals))
            cut = draw(st.integers(0, min(len(data), len(other))))
            data = data[:cut] + other[cut:]
    return bytes(data)


@functools.cache
def handshake_messages() -> tuple[bytes, bytes, bytes]:
    init, i_state = handshake.start(INITIATOR, RESPONDER.address, 1, 2, bytes(range(32)))
    response, _ = handshake.respond(RESPONDER, init, 3, bytes(range(32, 64)))
    confirm, _ = handshake.finish_initiator(INITIATOR, i_state, response)
    return init, response, confirm


def any_or_mutated(originals: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(originals))


def only(error: type[Exception], function: Callable[[], object]) -> None:
    """Run ``function``; ``error`` is the one exception allowed out (any other fails the test)."""
    with contextlib.suppress(error):
        function()


# --------------------------------------------------------------------------- wire
@FUZZ
@given(data=any_or_mutated(list(handshake_messages())))
def test_wire_decoders_raise_only_protocol_error(data: bytes) -> None:
    for decoder in (wire.decode_init, wire.decode_response, wire.decode_confirm, wire.decode_data_header):
        only(ProtocolError, functools.partial(decoder, data))
    only(ProtocolError, functools.partial(wire.message_type, data))
    only(ProtocolError, functools.partial(wire.decompress_ipv6, data, bytes(16), bytes(16)))


@FUZZ
@given(data=st.binary(max_size=200))
def test_compression_round_trips_any_bytes(data: bytes) -> None:
    src, dst = INITIATOR.address, RESPONDER.address
    inner = wire.compress_ipv6(data, src, dst)
    restored = (
        wire.decompress_ipv6(inner[1:], src, dst) if inner[0] == wire.INNER_IPV6_COMPRESSED else inner[1:]
    )
    assert restored == data


# --------------------------------------------------------------------------- handshake
@FUZZ
@given(data=any_or_mutated(list(handshake_messages())))
def test_handshake_steps_raise_only_protocol_error(data: bytes) -> None:
    init, _, _ = handshake_messages()
    _, i_state = handshake.start(INITIATOR, RESPONDER.address, 1, 2, bytes(range(32)))
    _, r_state = handshake.respond(RESPONDER, init, 3, bytes(range(32, 64)))
    only(ProtocolError, lambda: handshake.respond(RESPONDER, data, 5, bytes(range(64, 96))))
    only(ProtocolError, lambda: handshake.finish_initiator(INITIATOR, i_state, data))
    only(ProtocolError, lambda: handshake.finish_responder(r_state, data))


# --------------------------------------------------------------------------- session
@functools.cache
def session_pair() -> tuple[Session, Session, list[bytes]]:
    init, response, confirm = handshake_messages()
    _, i_state = handshake.start(INITIATOR, RESPONDER.address, 1, 2, bytes(range(32)))
    _, r_state = handshake.respond(RESPONDER, init, 3, bytes(range(32, 64)))
    _, i_keys = handshake.finish_initiator(INITIATOR, i_state, response)
    sender, receiver = Session(i_keys, 0.0), Session(handshake.finish_responder(r_state, confirm), 0.0)
    frames = [sender.seal(bytes([kind]) + bytes(n)) for kind, n in ((0, 60), (1, 20), (2, 0), (3, 8), (4, 8))]
    return sender, receiver, frames


@FUZZ
@given(data=st.data())
def test_session_open_raises_only_protocol_error(data: st.DataObject) -> None:
    _, receiver, frames = session_pair()
    only(ProtocolError, functools.partial(receiver.open_, data.draw(any_or_mutated(frames))))


# --------------------------------------------------------------------------- beacon
@functools.cache
def beacons() -> list[bytes]:
    return [beacon.encode(INITIATOR, name, 5582, 7) for name in ("", "robot-1", "é" * 40, "x" * 63)]


@FUZZ
@given(data=st.data())
def test_beacon_decode_raises_only_protocol_error(data: st.DataObject) -> None:
    only(ProtocolError, functools.partial(beacon.decode, data.draw(any_or_mutated(beacons()))))


@FUZZ
@given(host=st.text(max_size=60))
def test_source_allowed_never_raises(host: str) -> None:
    assert beacon.source_allowed(host, beacon.parse_networks(beacon.DEFAULT_SOURCE_NETWORKS)) in (True, False)


# --------------------------------------------------------------------------- identity files
@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = list(INITIATOR.to_file_text())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text) - 1))
        text[i] = draw(st.sampled_from(list("0123456789abcdefABCDEF: \n\t\x00gé%z")))
    return "".join(text)


@FUZZ
@given(text=st.one_of(st.text(max_size=300), mutated_text()))
def test_identity_file_parser_raises_only_identity_error(text: str) -> None:
    only(IdentityError, functools.partial(Identity.from_file_text, text))


# --------------------------------------------------------------------------- node
@functools.cache
def live_pair() -> tuple[MemNet, Node, list[bytes], list[bytes]]:
    """Two nodes with a live session, and every datagram they exchanged (data and control)."""
    net = MemNet()
    a, ea = net.add(INITIATOR)
    b, eb = net.add(RESPONDER)
    net.introduce(ea, eb)
    net.advance(6)
    net.send(eb, ipv6_packet(b.address, a.address, b"payload"))
    data = [d for src, _, d in net.log if src == eb and d and d[0] == wire.MSG_DATA]
    control = [d for _, _, d in net.log if d and d[0] != wire.MSG_DATA]
    return net, a, data, control


SOURCES = [("198.18.0.11", 5582), ("198.18.0.66", 1), ("fe80::1%veth0", 5582)]


@FUZZ
@given(data=st.data())
def test_node_never_raises_on_any_datagram(data: st.DataObject) -> None:
    net, node, frames, control = live_pair()
    datagram = data.draw(any_or_mutated(frames + control))
    endpoint = data.draw(
        st.sampled_from([("198.18.0.11", 5582), ("198.18.0.66", 1), ("fe80::1%veth0", 5582)])
    )
    node.receive_data(datagram, endpoint, net.now)
    node.receive_control(datagram, endpoint, net.now)
    node.tick(net.now)
    net.now += 0.01


def test_node_is_still_healthy_after_the_fuzzing() -> None:
    net, node, _, _ = live_pair()
    other = next(iter(node.peers))
    net.advance(1)
    net.send(("198.18.0.10", 5582), ipv6_packet(node.address, other, b"still alive"))
    assert net.delivered[("198.18.0.11", 5582)][-1] == ipv6_packet(node.address, other, b"still alive")
