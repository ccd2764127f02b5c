"""The SIGMA handshake: round trip, and every byte of every message tampered -> rejected at a known check.

Which check catches which byte (also documented in docs/PROTOCOL.md, section "Tampering"):

init (176 bytes, signed by the initiator: the responder catches every change):
    0 type, 1 version, 2-3 reserved  -> responder: decode_init
    4-15 sender index, timestamp     -> responder: init signature invalid
    16-17 initiator address (fc94)   -> responder: "invalid initiator address" (no longer an overlay address)
    18-31 initiator address (rest)   -> responder: key does not derive to the claimed address
    32-47 responder address          -> responder: "addressed to another node"
    48-79 initiator ephemeral        -> responder: init signature invalid (X25519 ignores bit 7 of byte 79,
                                        the signature does not)
    80-111 initiator public key      -> responder: key does not derive to the claimed address
    112-175 signature                -> responder: init signature invalid
response (156 bytes):
    0-3 header                       -> initiator: decode_response
    4-7 responder's sender index     -> initiator: signature over TH2
    8-11 receiver index              -> initiator: "for another initiation"
    12-43 responder ephemeral        -> initiator: signature over TH2
    44-75 responder public key       -> initiator: key does not derive to the address we called
    76-139 signature                 -> initiator: signature invalid
    140-155 MAC                      -> initiator: MAC invalid
confirm (120 bytes):
    0-3 header                       -> responder: decode_confirm
    4-7 receiver index               -> responder: "for another session"
    8-39 initiator public key        -> responder: not the key that signed the init
    40-103 signature                 -> responder: signature invalid
    104-119 MAC                      -> responder: MAC invalid
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fixed_identities import failing_seed, fixed_identity
from nacl.signing import SigningKey

from husarnet_ros.core import handshake, wire
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.handshake import InitiatorState, SessionKeys
from husarnet_ros.core.identity import Identity

INITIATOR = fixed_identity("handshake initiator")
RESPONDER = fixed_identity("handshake responder")
MALLORY = fixed_identity("handshake mallory")
I_EPH = bytes(range(1, 33))
R_EPH = bytes(range(101, 133))
I_INDEX = 0x11223344
R_INDEX = 0x55667788
TIMESTAMP = 1_700_000_000_123_456_789

# Every known low-order point of Curve25519 (and their non-canonical encodings with the top bit set).
_LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
LOW_ORDER_POINTS = [bytes.fromhex(p) for p in _LOW_ORDER] + [
    bytes.fromhex(p)[:31] + bytes([bytes.fromhex(p)[31] | 0x80]) for p in _LOW_ORDER
]


def signed_init(
    signer: Identity,
    *,
    initiator_address: bytes | None = None,
    public_key: bytes | None = None,
    ephemeral: bytes | None = None,
) -> bytes:
    """An init signed by ``signer`` whatever it claims: what a node that runs modified code could send."""
    unsigned = wire.HandshakeInit(
        I_INDEX,
        TIMESTAMP,
        signer.address if initiator_address is None else initiator_address,
        RESPONDER.address,
        handshake.public_ephemeral(I_EPH) if ephemeral is None else ephemeral,
        signer.public_key if public_key is None else public_key,
        b"",
    )
    return unsigned.signed_part() + signer.sign(handshake._INIT_SIG_LABEL + unsigned.signed_part())


def start() -> tuple[bytes, InitiatorState]:
    return handshake.start(INITIATOR, RESPONDER.address, I_INDEX, TIMESTAMP, I_EPH)


def full_handshake() -> tuple[bytes, bytes, bytes, SessionKeys, SessionKeys]:
    init, i_state = start()
    response, r_state = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    confirm, i_keys = handshake.finish_initiator(INITIATOR, i_state, response)
    r_keys = handshake.finish_responder(r_state, confirm)
    return init, response, confirm, i_keys, r_keys


def flip(data: bytes, offset: int, mask: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# --------------------------------------------------------------------------- happy path
def test_round_trip_yields_matching_keys() -> None:
    init, response, confirm, i_keys, r_keys = full_handshake()
    assert (len(init), len(response), len(confirm)) == (176, 156, 120)
    assert i_keys.send_key == r_keys.receive_key
    assert i_keys.receive_key == r_keys.send_key
    assert i_keys.send_key != i_keys.receive_key
    assert len(i_keys.send_key) == len(i_keys.receive_key) == 32
    assert (i_keys.local_index, i_keys.remote_index) == (I_INDEX, R_INDEX)
    assert (r_keys.local_index, r_keys.remote_index) == (R_INDEX, I_INDEX)
    assert (i_keys.peer_address, i_keys.peer_public_key) == (RESPONDER.address, RESPONDER.public_key)
    assert (r_keys.peer_address, r_keys.peer_public_key) == (INITIATOR.address, INITIATOR.public_key)
    assert i_keys.is_initiator
    assert not r_keys.is_initiator


def test_handshake_is_deterministic_given_its_inputs() -> None:
    first, second = full_handshake(), full_handshake()
    assert first[:3] == second[:3]
    assert first[3].send_key == second[3].send_key


def test_fresh_ephemeral_keys_give_fresh_session_keys() -> None:
    *_, i_keys, _ = full_handshake()
    init, i_state = handshake.start(INITIATOR, RESPONDER.address, I_INDEX, TIMESTAMP, bytes(range(2, 34)))
    response, r_state = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    confirm, other = handshake.finish_initiator(INITIATOR, i_state, response)
    assert handshake.finish_responder(r_state, confirm).receive_key == other.send_key
    assert other.send_key != i_keys.send_key
    assert other.receive_key != i_keys.receive_key


def test_responder_state_keeps_the_response_for_retransmitted_inits() -> None:
    init, _ = start()
    response, r_state = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    assert r_state.response_bytes == response
    assert (r_state.remote_index, r_state.timestamp_ns, r_state.peer_address) == (
        I_INDEX,
        TIMESTAMP,
        INITIATOR.address,
    )


# --------------------------------------------------------------------------- every byte tampered
INIT_CHECKS: list[tuple[range, str]] = [
    (range(1), "wrong message type"),
    (range(1, 2), "unsupported protocol version"),
    (range(2, 4), "reserved bytes"),
    (range(4, 16), "init signature is invalid"),
    (range(16, 18), "invalid initiator address"),
    (range(18, 32), "does not derive to its claimed address"),
    (range(32, 48), "addressed to another node"),
    (range(48, 80), "init signature is invalid"),
    (range(80, 112), "does not derive to its claimed address"),
    (range(112, 176), "init signature is invalid"),
]
RESPONSE_CHECKS: list[tuple[range, str]] = [
    (range(1), "wrong message type"),
    (range(1, 2), "unsupported protocol version"),
    (range(2, 4), "reserved bytes"),
    (range(4, 8), "signature is invalid"),
    (range(8, 12), "for another initiation"),
    (range(12, 44), "signature is invalid"),
    (range(44, 76), "does not derive to the address we called"),
    (range(76, 140), "signature is invalid"),
    (range(140, 156), "MAC is invalid"),
]
CONFIRM_CHECKS: list[tuple[range, str]] = [
    (range(1), "wrong message type"),
    (range(1, 2), "unsupported protocol version"),
    (range(2, 4), "reserved bytes"),
    (range(4, 8), "for another session"),
    (range(8, 40), "not the one that signed the init"),
    (range(40, 104), "signature is invalid"),
    (range(104, 120), "MAC is invalid"),
]
MASKS = (0x01, 0x80, 0xFF)


def range_ids(checks: list[tuple[range, str]]) -> list[str]:
    return [f"bytes {c[0].start}-{c[0].stop - 1}" for c in checks]


def point_ids(points: list[bytes]) -> list[str]:
    return [p.hex()[:8] + ".." + p.hex()[-2:] for p in points]


def _covers(checks: list[tuple[range, str]], size: int) -> bool:
    return sorted(i for c in checks for i in c[0]) == list(range(size))


def test_check_tables_cover_every_byte() -> None:
    assert _covers(INIT_CHECKS, wire.INIT_SIZE)
    assert _covers(RESPONSE_CHECKS, wire.RESPONSE_SIZE)
    assert _covers(CONFIRM_CHECKS, wire.CONFIRM_SIZE)


@pytest.mark.parametrize(("where", "message"), INIT_CHECKS, ids=range_ids(INIT_CHECKS))
def test_every_init_byte_tampered_is_rejected_by_the_responder(where: range, message: str) -> None:
    """The init is signed: the responder refuses any change before it keeps any state or answers."""
    init, _ = start()
    for offset in where:
        for mask in MASKS:
            with pytest.raises(ProtocolError, match=re.escape(message)):
                handshake.respond(RESPONDER, flip(init, offset, mask), R_INDEX, R_EPH)
    handshake.respond(RESPONDER, init, R_INDEX, R_EPH)


@pytest.mark.parametrize(("where", "message"), RESPONSE_CHECKS, ids=range_ids(RESPONSE_CHECKS))
def test_every_response_byte_tampered_is_rejected(where: range, message: str) -> None:
    init, i_state = start()
    response, _ = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    for offset in where:
        for mask in MASKS:
            with pytest.raises(ProtocolError, match=re.escape(message)):
                handshake.finish_initiator(INITIATOR, i_state, flip(response, offset, mask))
    # The untampered response is still accepted afterwards: a forgery does not poison the state.
    handshake.finish_initiator(INITIATOR, i_state, response)


@pytest.mark.parametrize(("where", "message"), CONFIRM_CHECKS, ids=range_ids(CONFIRM_CHECKS))
def test_every_confirm_byte_tampered_is_rejected(where: range, message: str) -> None:
    init, i_state = start()
    response, r_state = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    confirm, _ = handshake.finish_initiator(INITIATOR, i_state, response)
    for offset in where:
        for mask in MASKS:
            with pytest.raises(ProtocolError, match=re.escape(message)):
                handshake.finish_responder(r_state, flip(confirm, offset, mask))
    handshake.finish_responder(r_state, confirm)


@pytest.mark.parametrize("kind", ["init", "response", "confirm"])
@pytest.mark.parametrize("cut", [0, 1, 4, -1])
def test_truncated_or_extended_messages_are_rejected(kind: str, cut: int) -> None:
    init, i_state = start()
    response, r_state = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    confirm, _ = handshake.finish_initiator(INITIATOR, i_state, response)
    message = {"init": init, "response": response, "confirm": confirm}[kind]
    consumers: dict[str, Callable[[bytes], object]] = {
        "init": lambda data: handshake.respond(RESPONDER, data, R_INDEX, R_EPH),
        "response": lambda data: handshake.finish_initiator(INITIATOR, i_state, data),
        "confirm": lambda data: handshake.finish_responder(r_state, data),
    }
    for variant in (message[:cut], message + b"\x00"):
        with pytest.raises(ProtocolError):
            consumers[kind](variant)


# --------------------------------------------------------------------------- wrong keys and addresses
def test_init_for_another_address_is_refused_by_the_responder() -> None:
    init, _ = handshake.start(INITIATOR, MALLORY.address, I_INDEX, TIMESTAMP, I_EPH)
    with pytest.raises(ProtocolError, match="addressed to another node"):
        handshake.respond(RESPONDER, init, R_INDEX, R_EPH)


def test_responder_with_a_key_deriving_to_another_address_is_refused() -> None:
    """Mallory intercepts an init for the responder and answers it with her own (valid) key."""
    init, i_state = start()
    answering_for_responder = Identity(MALLORY.signing_key, MALLORY.public_key, RESPONDER.address)
    response, _ = handshake.respond(answering_for_responder, init, R_INDEX, R_EPH)
    with pytest.raises(ProtocolError, match="does not derive to the address we called"):
        handshake.finish_initiator(INITIATOR, i_state, response)


def test_responder_key_failing_the_proof_of_work_is_refused() -> None:
    init, i_state = start()
    bogus_key = SigningKey(failing_seed("responder"))
    bogus = Identity(bogus_key, bytes(bogus_key.verify_key), RESPONDER.address)  # claims the address
    response, _ = handshake.respond(bogus, init, R_INDEX, R_EPH)
    with pytest.raises(ProtocolError, match="does not derive to the address we called"):
        handshake.finish_initiator(INITIATOR, i_state, response)


def test_responder_showing_the_right_public_key_without_its_secret_is_refused() -> None:
    """Mallory shows the responder's public key but can only sign with her own key."""
    init, i_state = start()
    impostor = Identity(MALLORY.signing_key, RESPONDER.public_key, RESPONDER.address)
    response, _ = handshake.respond(impostor, init, R_INDEX, R_EPH)
    with pytest.raises(ProtocolError, match="signature is invalid"):
        handshake.finish_initiator(INITIATOR, i_state, response)


def test_initiator_impersonation_with_own_key_is_refused() -> None:
    """Mallory claims the initiator's address in an init she signs with her own key: refused at once."""
    forged = signed_init(MALLORY, initiator_address=INITIATOR.address)
    with pytest.raises(ProtocolError, match="does not derive to its claimed address"):
        handshake.respond(RESPONDER, forged, R_INDEX, R_EPH)


def test_initiator_impersonation_showing_the_victims_key_in_the_init_is_refused() -> None:
    """Mallory shows the initiator's public key in the init but can only sign with her own key."""
    forged = signed_init(MALLORY, initiator_address=INITIATOR.address, public_key=INITIATOR.public_key)
    with pytest.raises(ProtocolError, match="init signature is invalid"):
        handshake.respond(RESPONDER, forged, R_INDEX, R_EPH)


def test_initiator_impersonation_showing_the_victims_key_in_the_confirm_is_refused() -> None:
    """Mallory shows the initiator's public key in the confirm but signs with her own key."""
    init, i_state = start()
    response, r_state = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    impostor = Identity(MALLORY.signing_key, INITIATOR.public_key, INITIATOR.address)
    confirm, _ = handshake.finish_initiator(impostor, i_state, response)
    with pytest.raises(ProtocolError, match="signature is invalid"):
        handshake.finish_responder(r_state, confirm)


def test_confirm_of_another_handshake_is_refused_even_with_the_same_index() -> None:
    init, _ = start()
    _, r_state = handshake.respond(RESPONDER, init, R_INDEX, R_EPH)
    # A second, complete handshake with the same indices but other ephemeral keys.
    init2, i_state2 = handshake.start(
        INITIATOR, RESPONDER.address, I_INDEX, TIMESTAMP + 1, bytes(range(3, 35))
    )
    response2, _ = handshake.respond(RESPONDER, init2, R_INDEX, bytes(range(50, 82)))
    confirm2, _ = handshake.finish_initiator(INITIATOR, i_state2, response2)
    with pytest.raises(ProtocolError, match="signature is invalid"):
        handshake.finish_responder(r_state, confirm2)


def test_response_to_another_initiation_is_refused_even_with_the_same_index() -> None:
    _, i_state = start()
    init2, _ = handshake.start(INITIATOR, RESPONDER.address, I_INDEX, TIMESTAMP + 1, bytes(range(3, 35)))
    response2, _ = handshake.respond(RESPONDER, init2, R_INDEX, R_EPH)
    with pytest.raises(ProtocolError, match="signature is invalid"):
        handshake.finish_initiator(INITIATOR, i_state, response2)


@pytest.mark.parametrize(
    "initiator_address",
    [RESPONDER.address, bytes(16), bytes.fromhex("fd00" + "00" * 14), bytes.fromhex("fe80" + "00" * 14)],
    ids=["own address", "zero", "ula", "link-local"],
)
def test_init_with_an_invalid_initiator_address_is_refused(initiator_address: bytes) -> None:
    init = signed_init(INITIATOR, initiator_address=initiator_address)
    with pytest.raises(ProtocolError, match="invalid initiator address"):
        handshake.respond(RESPONDER, init, R_INDEX, R_EPH)


# --------------------------------------------------------------------------- low-order ephemeral points
@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_ids(LOW_ORDER_POINTS))
def test_low_order_initiator_ephemeral_is_refused(point: bytes) -> None:
    """Even correctly signed by the real initiator, a low-order ephemeral key is refused."""
    init = signed_init(INITIATOR, ephemeral=point)
    with pytest.raises(ProtocolError, match="low-order point"):
        handshake.respond(RESPONDER, init, R_INDEX, R_EPH)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_ids(LOW_ORDER_POINTS))
def test_low_order_responder_ephemeral_is_refused(point: bytes) -> None:
    """Even correctly signed by the real responder, a low-order ephemeral key is refused."""
    init, i_state = start()
    unsigned = wire.HandshakeResponse(R_INDEX, I_INDEX, point, RESPONDER.public_key, b"", b"")
    th2 = handshake._hash(init + unsigned.signed_part(), b"hr2-th2")
    signature = RESPONDER.sign(handshake._RESPONDER_SIG_LABEL + th2)
    response = wire.HandshakeResponse(R_INDEX, I_INDEX, point, RESPONDER.public_key, signature, bytes(16))
    with pytest.raises(ProtocolError, match="low-order point"):
        handshake.finish_initiator(INITIATOR, i_state, response.encode())


def test_the_ignored_top_bit_of_the_ephemeral_key_is_not_malleable() -> None:
    """X25519 ignores bit 255 of a public key; the init's signature does not, so the two encodings are not
    interchangeable (and the transcript, which covers the raw bytes, would catch it at the initiator)."""
    init, _ = start()
    with pytest.raises(ProtocolError, match="init signature is invalid"):
        handshake.respond(RESPONDER, flip(init, 79, 0x80), R_INDEX, R_EPH)
