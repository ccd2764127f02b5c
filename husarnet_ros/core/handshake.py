"""The three-message SIGMA-style handshake, as pure functions over explicit keys.

    I -> R  init      sender index, timestamp, both addresses, ephemeral X25519 key, static Ed25519 key,
                      signature over all of it
    R -> I  response  ephemeral key, static Ed25519 key, signature over TH2, MAC under the handshake key
    I -> R  confirm   static Ed25519 key, signature over TH3, MAC under the handshake key

Each side proves its address by showing a public key that derives to it and signing with it (no PKI).
The init is signed too, so a responder acts only on inits that its peer really sent; with the
timestamp (which must grow per peer) a captured init cannot be replayed either (docs/PROTOCOL.md 6.2
says why this was chosen over several pending states per peer). The X25519 secret of the two
ephemeral keys feeds a BLAKE2b KDF, so session keys are forward secret; signatures make
key-compromise impersonation useless. See docs/PROTOCOL.md for the exact transcript and key schedule.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b

from . import wire
from .address import is_overlay
from .errors import AuthenticationError, ProtocolError
from .identity import Identity, derive_address, verify_signature

_INIT_SIG_LABEL = b"husarnet_ros v2 init signature"
_RESPONDER_SIG_LABEL = b"husarnet_ros v2 responder signature"
_INITIATOR_SIG_LABEL = b"husarnet_ros v2 initiator signature"


def _hash(data: bytes, person: bytes, key: bytes = b"", size: int = 32) -> bytes:
    return bytes(blake2b(data, digest_size=size, key=key, person=person, encoder=RawEncoder))


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        shared = bytes(crypto_scalarmult(private, public))
    except CryptoError:  # libsodium refuses low-order points (all-zero result)
        raise ProtocolError("ephemeral key is a low-order point") from None
    if not any(shared):
        raise ProtocolError("ephemeral key is a low-order point")
    return shared


def public_ephemeral(private: bytes) -> bytes:
    return bytes(crypto_scalarmult_base(private))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What a completed handshake yields: one key per direction and the session indices."""

    peer_address: bytes
    peer_public_key: bytes
    local_index: int
    remote_index: int
    send_key: bytes
    receive_key: bytes
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class InitiatorState:
    """The initiator between sending init and receiving the response."""

    peer_address: bytes
    local_index: int
    timestamp_ns: int
    ephemeral_private: bytes
    init_bytes: bytes


@dataclass(frozen=True, slots=True)
class ResponderState:
    """The responder between sending its response and receiving the confirm."""

    peer_address: bytes
    peer_public_key: bytes
    init_bytes: bytes  # kept so a retransmitted init (the very same bytes) gets the same response
    local_index: int
    remote_index: int
    timestamp_ns: int
    shared: bytes
    handshake_key: bytes
    th3_prefix: bytes  # TH2 || responder signature || responder MAC
    response_bytes: bytes  # kept so a retransmitted init gets the same response


def start(
    identity: Identity, peer_address: bytes, local_index: int, timestamp_ns: int, ephemeral_private: bytes
) -> tuple[bytes, InitiatorState]:
    """Build the (signed) init message for ``peer_address``."""
    unsigned = wire.HandshakeInit(
        local_index,
        timestamp_ns,
        identity.address,
        peer_address,
        public_ephemeral(ephemeral_private),
        identity.public_key,
        b"",
    )
    signature = identity.sign(_INIT_SIG_LABEL + unsigned.signed_part())
    data = unsigned.signed_part() + signature
    return data, InitiatorState(peer_address, local_index, timestamp_ns, ephemeral_private, data)


def init_key_matches(init: wire.HandshakeInit) -> bool:
    """The init's public key derives to the address it claims (one SHA-256: checked before the signature)."""
    return derive_address(init.public_key) == init.initiator_address


def init_signature_valid(init: wire.HandshakeInit) -> bool:
    """The init was signed by its public key (an Ed25519 verification: the expensive check, done last)."""
    return verify_signature(init.public_key, _INIT_SIG_LABEL + init.signed_part(), init.signature)


def verify_init(identity: Identity, init_bytes: bytes) -> wire.HandshakeInit:
    """Decode and authenticate an init for ``identity``; AuthenticationError if forged, ProtocolError if
    malformed or not for us. (The node runs these checks one by one, with its policy checks between.)"""
    init = wire.decode_init(init_bytes)
    check_init_addresses(identity, init)
    if not init_key_matches(init):
        raise AuthenticationError("initiator's public key does not derive to its claimed address")
    if not init_signature_valid(init):
        raise AuthenticationError("handshake init signature is invalid")
    return init


def check_init_addresses(identity: Identity, init: wire.HandshakeInit) -> None:
    if init.responder_address != identity.address:
        raise ProtocolError("handshake init is addressed to another node")
    if not is_overlay(init.initiator_address) or init.initiator_address == identity.address:
        raise ProtocolError("handshake init has an invalid initiator address")


def respond(
    identity: Identity, init_bytes: bytes, local_index: int, ephemeral_private: bytes
) -> tuple[bytes, ResponderState]:
    """Authenticate an init and answer it; AuthenticationError / ProtocolError if it cannot be answered."""
    init = verify_init(identity, init_bytes)
    return respond_verified(identity, init, init_bytes, local_index, ephemeral_private)


def respond_verified(
    identity: Identity,
    init: wire.HandshakeInit,
    init_bytes: bytes,
    local_index: int,
    ephemeral_private: bytes,
) -> tuple[bytes, ResponderState]:
    """Answer an init that was already authenticated (the node runs ``verify_init``'s checks one by one,
    with its policy checks between them)."""
    check_init_addresses(identity, init)
    shared = _dh(ephemeral_private, init.ephemeral)
    unsigned = wire.HandshakeResponse(
        local_index, init.sender_index, public_ephemeral(ephemeral_private), identity.public_key, b"", b""
    )
    th2 = _hash(init_bytes + unsigned.signed_part(), b"hr2-th2")
    handshake_key = _hash(th2, b"hr2-hs-key", key=shared)
    signature = identity.sign(_RESPONDER_SIG_LABEL + th2)
    mac = _hash(b"R" + th2 + signature, b"hr2-mac", key=handshake_key, size=wire.MAC_SIZE)
    response = wire.HandshakeResponse(
        unsigned.sender_index,
        unsigned.receiver_index,
        unsigned.ephemeral,
        unsigned.public_key,
        signature,
        mac,
    )
    state = ResponderState(
        init.initiator_address,
        init.public_key,
        init_bytes,
        local_index,
        init.sender_index,
        init.timestamp_ns,
        shared,
        handshake_key,
        th2 + signature + mac,
        response.encode(),
    )
    return state.response_bytes, state


def _traffic_keys(shared: bytes, th4: bytes) -> tuple[bytes, bytes]:
    i2r = _hash(b"i2r" + th4, b"hr2-traffic", key=shared)
    r2i = _hash(b"r2i" + th4, b"hr2-traffic", key=shared)
    return i2r, r2i


def finish_initiator(
    identity: Identity, state: InitiatorState, response_bytes: bytes
) -> tuple[bytes, SessionKeys]:
    """Verify the response; return the confirm message and the session keys."""
    response = wire.decode_response(response_bytes)
    if response.receiver_index != state.local_index:
        raise ProtocolError("handshake response for another initiation")
    if derive_address(response.public_key) != state.peer_address:
        raise AuthenticationError("responder's public key does not derive to the address we called")
    shared = _dh(state.ephemeral_private, response.ephemeral)
    th2 = _hash(state.init_bytes + response.signed_part(), b"hr2-th2")
    if not verify_signature(response.public_key, _RESPONDER_SIG_LABEL + th2, response.signature):
        raise AuthenticationError("handshake response signature is invalid")
    handshake_key = _hash(th2, b"hr2-hs-key", key=shared)
    expected_mac = _hash(b"R" + th2 + response.signature, b"hr2-mac", key=handshake_key, size=wire.MAC_SIZE)
    if not hmac.compare_digest(expected_mac, response.mac):
        raise AuthenticationError("handshake response MAC is invalid")
    unsigned = wire.HandshakeConfirm(response.sender_index, identity.public_key, b"", b"")
    th3 = _hash(th2 + response.signature + response.mac + unsigned.signed_part(), b"hr2-th3")
    signature = identity.sign(_INITIATOR_SIG_LABEL + th3)
    mac = _hash(b"I" + th3 + signature, b"hr2-mac", key=handshake_key, size=wire.MAC_SIZE)
    confirm = wire.HandshakeConfirm(response.sender_index, identity.public_key, signature, mac)
    th4 = _hash(th3 + signature + mac, b"hr2-th4")
    i2r, r2i = _traffic_keys(shared, th4)
    keys = SessionKeys(
        state.peer_address, response.public_key, state.local_index, response.sender_index, i2r, r2i, True
    )
    return confirm.encode(), keys


def finish_responder(state: ResponderState, confirm_bytes: bytes) -> SessionKeys:
    """Verify the confirm; return the session keys."""
    confirm = wire.decode_confirm(confirm_bytes)
    if confirm.receiver_index != state.local_index:
        raise ProtocolError("handshake confirm for another session")
    if confirm.public_key != state.peer_public_key:
        raise AuthenticationError("the confirm's public key is not the one that signed the init")
    th3 = _hash(state.th3_prefix + confirm.signed_part(), b"hr2-th3")
    if not verify_signature(confirm.public_key, _INITIATOR_SIG_LABEL + th3, confirm.signature):
        raise AuthenticationError("handshake confirm signature is invalid")
    expected_mac = _hash(
        b"I" + th3 + confirm.signature, b"hr2-mac", key=state.handshake_key, size=wire.MAC_SIZE
    )
    if not hmac.compare_digest(expected_mac, confirm.mac):
        raise AuthenticationError("handshake confirm MAC is invalid")
    th4 = _hash(th3 + confirm.signature + confirm.mac, b"hr2-th4")
    i2r, r2i = _traffic_keys(state.shared, th4)
    return SessionKeys(
        state.peer_address, confirm.public_key, state.local_index, state.remote_index, r2i, i2r, False
    )
