"""Sessions: AEAD seal/open, tampering anywhere, replays, reordering, too-old frames, counter exhaustion."""

from __future__ import annotations

import itertools
import random

import pytest
from fixed_identities import fixed_identity
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from husarnet_ros.core import handshake, wire
from husarnet_ros.core.constants import REJECT_AFTER_MESSAGES
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.handshake import SessionKeys
from husarnet_ros.core.session import Session

INITIATOR = fixed_identity("session initiator")
RESPONDER = fixed_identity("session responder")


def session_pair(now: float = 100.0, ephemeral_seed: int = 0) -> tuple[Session, Session]:
    i_eph = bytes((ephemeral_seed + i) % 256 for i in range(32))
    init, i_state = handshake.start(INITIATOR, RESPONDER.address, 7, 1, i_eph)
    response, r_state = handshake.respond(RESPONDER, init, 9, bytes(range(32, 64)))
    confirm, i_keys = handshake.finish_initiator(INITIATOR, i_state, response)
    r_keys = handshake.finish_responder(r_state, confirm)
    return Session(i_keys, now), Session(r_keys, now)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def test_seal_open_round_trip_both_ways() -> None:
    alice, bob = session_pair()
    for size in (1, 2, 100, 1400, 9000):
        inner = bytes([wire.INNER_IPV6]) + random.Random(size).randbytes(size - 1)
        assert bob.open_(alice.seal(inner)) == inner
        assert alice.open_(bob.seal(inner)) == inner


def test_frame_layout_and_size() -> None:
    alice, bob = session_pair()
    frame = alice.seal(b"\x02")
    assert len(frame) == wire.DATA_HEADER_SIZE + 1 + wire.TAG_SIZE == wire.DATA_MIN_SIZE
    assert wire.decode_data_header(frame) == (bob.local_index, 0)
    assert alice.remote_index == bob.local_index
    assert alice.seal(b"\x02")[8:16] == (1).to_bytes(8, "big")
    assert alice.sent_messages == 2


def test_nonces_are_fresh_per_frame() -> None:
    alice, _ = session_pair()
    nonces = {alice.seal(b"\x02")[16:40] for _ in range(50)}
    assert len(nonces) == 50


def test_initiator_is_unconfirmed_until_the_responder_speaks() -> None:
    alice, bob = session_pair()
    assert not alice.confirmed
    assert bob.confirmed


def test_a_session_cannot_open_its_own_frames() -> None:
    alice, _ = session_pair()
    with pytest.raises(ProtocolError, match="failed authentication"):
        alice.open_(alice.seal(b"\x02"))


def test_frames_of_another_session_fail_authentication() -> None:
    alice, _ = session_pair()
    _, other_bob = session_pair(ephemeral_seed=1)
    assert other_bob.local_index == alice.remote_index
    with pytest.raises(ProtocolError, match="failed authentication"):
        other_bob.open_(alice.seal(b"\x02hello"))


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_every_byte_tampered_is_rejected(mask: int) -> None:
    """Header (associated data), nonce, ciphertext and tag: each byte matters."""
    alice, bob = session_pair()
    frame = alice.seal(b"\x00" + bytes(range(40)))
    for offset in range(len(frame)):
        tampered = flip(frame, offset, mask)
        with pytest.raises(ProtocolError) as info:
            bob.open_(tampered)
        if offset < 4:
            assert "bad type or non-zero reserved" in str(info.value)
        else:
            assert "failed authentication" in str(info.value), offset
    # Rejected frames did not consume the counter: the genuine frame still opens.
    assert bob.open_(frame) == b"\x00" + bytes(range(40))


def test_receiver_index_is_authenticated() -> None:
    alice, bob = session_pair()
    frame = alice.seal(b"\x02")
    rewritten = wire.encode_data_header(bob.local_index ^ 1, 0) + frame[16:]
    with pytest.raises(ProtocolError, match="failed authentication"):
        bob.open_(rewritten)


@pytest.mark.parametrize("cut", [1, 16, 17])
def test_truncated_frames_are_rejected(cut: int) -> None:
    alice, bob = session_pair()
    frame = alice.seal(b"\x02")
    with pytest.raises(ProtocolError):
        bob.open_(frame[:-cut])
    with pytest.raises(ProtocolError, match="failed authentication"):
        bob.open_(frame + b"\x00")


def test_replayed_frame_is_rejected() -> None:
    alice, bob = session_pair()
    frame = alice.seal(b"\x02")
    bob.open_(frame)
    with pytest.raises(ProtocolError, match="replayed"):
        bob.open_(frame)


def test_duplicate_with_a_different_nonce_is_rejected() -> None:
    """Same counter, re-encrypted by a sender that lost track: the counter alone decides."""
    alice, bob = session_pair()
    first = alice.seal(b"\x02")
    alice._counter = itertools.count(0)
    second = alice.seal(b"\x02")
    assert first[16:] != second[16:]
    bob.open_(first)
    with pytest.raises(ProtocolError, match="replayed"):
        bob.open_(second)


def test_reordered_frames_are_accepted_once_each() -> None:
    alice, bob = session_pair()
    frames = [alice.seal(bytes([wire.INNER_PING]) + i.to_bytes(8, "big")) for i in range(200)]
    order = list(range(200))
    random.Random(5).shuffle(order)
    for i in order:
        assert bob.open_(frames[i])[1:] == i.to_bytes(8, "big")
    for i in order[:20]:
        with pytest.raises(ProtocolError, match="replayed"):
            bob.open_(frames[i])


def test_too_old_frame_is_rejected_but_the_window_edge_is_not() -> None:
    alice, bob = session_pair()
    size = bob.replay.size
    oldest = alice.seal(b"\x02")  # counter 0
    edge = alice.seal(b"\x02")  # counter 1
    alice._counter = itertools.count(size + 1)
    bob.open_(alice.seal(b"\x02"))  # counter size + 1
    with pytest.raises(ProtocolError, match="too old"):
        bob.open_(oldest)  # size + 1 behind
    with pytest.raises(ProtocolError, match="too old"):
        bob.open_(edge)  # size behind
    alice._counter = itertools.count(2)
    bob.open_(alice.seal(b"\x02"))  # counter 2 is size - 1 behind: still inside


def test_forged_frame_with_a_far_future_counter_does_not_move_the_window() -> None:
    alice, bob = session_pair()
    first = alice.seal(b"\x02")
    forged = wire.encode_data_header(bob.local_index, 2**63) + first[16:]
    with pytest.raises(ProtocolError, match="failed authentication"):
        bob.open_(forged)
    assert bob.replay.highest == -1
    bob.open_(first)


def test_empty_inner_frame_is_rejected() -> None:
    alice, bob = session_pair()
    with pytest.raises(ProtocolError, match="shorter than the minimum"):
        bob.open_(alice.seal(b""))


def test_counter_exhaustion_bound() -> None:
    alice, bob = session_pair()
    alice._counter = itertools.count(REJECT_AFTER_MESSAGES - 2)
    bob.open_(alice.seal(b"\x02"))
    last = alice.seal(b"\x02")
    assert wire.decode_data_header(last)[1] == REJECT_AFTER_MESSAGES - 1
    assert alice.sent_messages == REJECT_AFTER_MESSAGES
    bob.open_(last)
    for _ in range(3):
        with pytest.raises(ProtocolError, match="exhausted"):
            alice.seal(b"\x02")
    assert alice.sent_messages == REJECT_AFTER_MESSAGES


def test_opens_a_frame_sealed_by_libsodium_directly() -> None:
    """Independent of Session.seal: header as AD, nonce in the clear, XChaCha20-Poly1305-IETF."""
    key = bytes(range(32))
    keys = SessionKeys(RESPONDER.address, RESPONDER.public_key, 5, 6, bytes(32), key, False)
    session = Session(keys, 0.0)
    header = wire.encode_data_header(5, 42)
    nonce = bytes(range(100, 124))
    frame = header + nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(b"\x02", header, nonce, key)
    assert session.open_(frame) == b"\x02"
    assert session.replay.highest == 42
