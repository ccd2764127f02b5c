"""Protocol test vectors (test/unit/vectors/handshake_v2.json, also printed in docs/PROTOCOL.md).

Three checks:
1. the core, fed the vectors' fixed inputs, produces every vector byte for byte;
2. an independent re-implementation of the transcript and key schedule (hashlib's BLAKE2b, raw libsodium
   calls, the address rule written out) reaches the same values, so the document describes the code;
3. Session.open_ opens the data frame that was sealed with libsodium's XChaCha20-Poly1305 directly.

Regenerate (only for a deliberate protocol change, which must also bump the protocol version):
    PYTHONPATH=. .venv/bin/python test/unit/test_protocol_vectors.py --write
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.signing import VerifyKey

from husarnet_ros.core import beacon, handshake, wire
from husarnet_ros.core.errors import ProtocolError
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.session import Session

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "handshake_v2.json"
PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# Fixed inputs. The identity seeds are the first sha256(label || counter) that pass the proof of work
# (see fixed_identities.seed_for); they are stored in the JSON so the test does not search again.
INITIATOR_LABEL = "husarnet_ros vector initiator"
RESPONDER_LABEL = "husarnet_ros vector responder"
INITIATOR_EPHEMERAL_PRIVATE = bytes.fromhex("a0" * 16 + "0a" * 16)
RESPONDER_EPHEMERAL_PRIVATE = bytes.fromhex("b1" * 16 + "1b" * 16)
INITIATOR_INDEX = 0x01020304
RESPONDER_INDEX = 0xA1B2C3D4
TIMESTAMP_NS = 1_700_000_000_123_456_789
DATA_COUNTER = 7
DATA_NONCE = bytes(range(0x40, 0x40 + 24))
INNER_PAYLOAD = b"hello over the overlay"
BEACON_HOSTNAME = "robot-1"
BEACON_PORT = 5582
BEACON_TIMESTAMP_NS = 1_700_000_001_000_000_000


def _ipv6_packet(src: bytes, dst: bytes, payload: bytes) -> bytes:
    header = bytes([0x60, 0x00, 0x00, 0x00]) + len(payload).to_bytes(2, "big") + bytes([17, 64])
    return header + src + dst + payload


def compute_vectors(initiator_seed: bytes, responder_seed: bytes) -> dict[str, Any]:
    """Every vector, computed with the core (and, for the data frame, libsodium directly)."""
    initiator = Identity.from_seed(initiator_seed)
    responder = Identity.from_seed(responder_seed)
    init, i_state = handshake.start(
        initiator, responder.address, INITIATOR_INDEX, TIMESTAMP_NS, INITIATOR_EPHEMERAL_PRIVATE
    )
    response, r_state = handshake.respond(responder, init, RESPONDER_INDEX, RESPONDER_EPHEMERAL_PRIVATE)
    confirm, i_keys = handshake.finish_initiator(initiator, i_state, response)
    r_keys = handshake.finish_responder(r_state, confirm)
    assert i_keys.send_key == r_keys.receive_key

    packet = _ipv6_packet(initiator.address, responder.address, INNER_PAYLOAD)
    inner = wire.compress_ipv6(packet, initiator.address, responder.address)
    header = wire.encode_data_header(RESPONDER_INDEX, DATA_COUNTER)
    ciphertext = crypto_aead_xchacha20poly1305_ietf_encrypt(inner, header, DATA_NONCE, i_keys.send_key)
    th2 = r_state.th3_prefix[:32]
    return {
        "description": "husarnet_ros protocol v2 test vectors; all byte strings are hex",
        "initiator": {
            "seed": initiator_seed.hex(),
            "public_key": initiator.public_key.hex(),
            "address": str(ipaddress.IPv6Address(initiator.address)),
            "identity_file": initiator.to_file_text().strip(),
        },
        "responder": {
            "seed": responder_seed.hex(),
            "public_key": responder.public_key.hex(),
            "address": str(ipaddress.IPv6Address(responder.address)),
            "identity_file": responder.to_file_text().strip(),
        },
        "handshake_inputs": {
            "initiator_index": INITIATOR_INDEX,
            "responder_index": RESPONDER_INDEX,
            "timestamp_ns": TIMESTAMP_NS,
            "initiator_ephemeral_private": INITIATOR_EPHEMERAL_PRIVATE.hex(),
            "responder_ephemeral_private": RESPONDER_EPHEMERAL_PRIVATE.hex(),
            "initiator_ephemeral_public": handshake.public_ephemeral(INITIATOR_EPHEMERAL_PRIVATE).hex(),
            "responder_ephemeral_public": handshake.public_ephemeral(RESPONDER_EPHEMERAL_PRIVATE).hex(),
        },
        "messages": {"init": init.hex(), "response": response.hex(), "confirm": confirm.hex()},
        "key_schedule": {
            "shared_secret": r_state.shared.hex(),
            "th2": th2.hex(),
            "handshake_key": r_state.handshake_key.hex(),
            "initiator_to_responder_key": i_keys.send_key.hex(),
            "responder_to_initiator_key": i_keys.receive_key.hex(),
        },
        "data_frame": {
            "key": i_keys.send_key.hex(),
            "receiver_index": RESPONDER_INDEX,
            "counter": DATA_COUNTER,
            "nonce": DATA_NONCE.hex(),
            "ipv6_packet": packet.hex(),
            "inner_frame": inner.hex(),
            "associated_data": header.hex(),
            "frame": (header + DATA_NONCE + ciphertext).hex(),
        },
        "beacon": {
            "hostname": BEACON_HOSTNAME,
            "udp_port": BEACON_PORT,
            "timestamp_ns": BEACON_TIMESTAMP_NS,
            "signed_by": "initiator",
            "datagram": beacon.encode(initiator, BEACON_HOSTNAME, BEACON_PORT, BEACON_TIMESTAMP_NS).hex(),
        },
    }


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
    return data


def _seeds(vectors: dict[str, Any]) -> tuple[bytes, bytes]:
    return bytes.fromhex(vectors["initiator"]["seed"]), bytes.fromhex(vectors["responder"]["seed"])


def _blake2b(data: bytes, person: bytes, key: bytes = b"", size: int = 32) -> bytes:
    return hashlib.blake2b(data, digest_size=size, key=key, person=person).digest()


# --------------------------------------------------------------------------- 1. the core reproduces them
def test_core_reproduces_every_vector_byte_for_byte() -> None:
    vectors = load()
    assert compute_vectors(*_seeds(vectors)) == vectors


# --------------------------------------------------------------------------- 2. independent derivation
def test_addresses_follow_the_documented_rule() -> None:
    vectors = load()
    for side in ("initiator", "responder"):
        public = bytes.fromhex(vectors[side]["public_key"])
        digest = hashlib.sha256(public).digest()
        assert digest[0] == 0
        assert digest[1] < 50
        assert ipaddress.IPv6Address(b"\xfc\x94" + digest[3:17]) == ipaddress.IPv6Address(
            vectors[side]["address"]
        )
        line = vectors[side]["identity_file"].split()
        assert line[1] == vectors[side]["public_key"]
        assert line[2] == vectors[side]["seed"] + vectors[side]["public_key"]


def test_messages_transcript_and_keys_match_an_independent_implementation() -> None:
    v = load()
    inputs, messages, schedule = v["handshake_inputs"], v["messages"], v["key_schedule"]
    init = bytes.fromhex(messages["init"])
    response = bytes.fromhex(messages["response"])
    confirm = bytes.fromhex(messages["confirm"])
    i_pub = bytes.fromhex(v["initiator"]["public_key"])
    r_pub = bytes.fromhex(v["responder"]["public_key"])
    i_addr = ipaddress.IPv6Address(v["initiator"]["address"]).packed
    r_addr = ipaddress.IPv6Address(v["responder"]["address"]).packed
    i_eph = crypto_scalarmult_base(bytes.fromhex(inputs["initiator_ephemeral_private"]))
    r_eph = crypto_scalarmult_base(bytes.fromhex(inputs["responder_ephemeral_private"]))

    # init: type 1, version 2, reserved, sender index, timestamp, initiator addr, responder addr, ephemeral,
    # pubkey | signature by pubkey over the label and all that
    assert init[:112] == (
        b"\x01\x02\x00\x00"
        + inputs["initiator_index"].to_bytes(4, "big")
        + inputs["timestamp_ns"].to_bytes(8, "big")
        + i_addr
        + r_addr
        + i_eph
        + i_pub
    )
    assert len(init) == 176
    VerifyKey(i_pub).verify(b"husarnet_ros v2 init signature" + init[:112], init[112:])
    # response: type 2, version 2, reserved, sender (responder) index, receiver index, ephemeral, pubkey
    assert response[:76] == (
        b"\x02\x02\x00\x00"
        + inputs["responder_index"].to_bytes(4, "big")
        + inputs["initiator_index"].to_bytes(4, "big")
        + r_eph
        + r_pub
    )
    # confirm: type 3, version 2, reserved, receiver (responder) index, pubkey | sig mac
    assert confirm[:40] == b"\x03\x02\x00\x00" + inputs["responder_index"].to_bytes(4, "big") + i_pub

    shared = crypto_scalarmult(bytes.fromhex(inputs["responder_ephemeral_private"]), i_eph)
    assert shared == crypto_scalarmult(bytes.fromhex(inputs["initiator_ephemeral_private"]), r_eph)
    assert shared.hex() == schedule["shared_secret"]

    th2 = _blake2b(init + response[:76], b"hr2-th2")
    assert th2.hex() == schedule["th2"]
    handshake_key = _blake2b(th2, b"hr2-hs-key", key=shared)
    assert handshake_key.hex() == schedule["handshake_key"]
    r_sig, r_mac = response[76:140], response[140:156]
    VerifyKey(r_pub).verify(b"husarnet_ros v2 responder signature" + th2, r_sig)
    assert r_mac == _blake2b(b"R" + th2 + r_sig, b"hr2-mac", key=handshake_key, size=16)

    th3 = _blake2b(th2 + r_sig + r_mac + confirm[:40], b"hr2-th3")
    i_sig, i_mac = confirm[40:104], confirm[104:120]
    VerifyKey(i_pub).verify(b"husarnet_ros v2 initiator signature" + th3, i_sig)
    assert i_mac == _blake2b(b"I" + th3 + i_sig, b"hr2-mac", key=handshake_key, size=16)

    th4 = _blake2b(th3 + i_sig + i_mac, b"hr2-th4")
    assert _blake2b(b"i2r" + th4, b"hr2-traffic", key=shared).hex() == schedule["initiator_to_responder_key"]
    assert _blake2b(b"r2i" + th4, b"hr2-traffic", key=shared).hex() == schedule["responder_to_initiator_key"]


def test_data_frame_matches_an_independent_implementation() -> None:
    frame_v = load()["data_frame"]
    frame = bytes.fromhex(frame_v["frame"])
    header = (
        b"\x04\x00\x00\x00"
        + frame_v["receiver_index"].to_bytes(4, "big")
        + frame_v["counter"].to_bytes(8, "big")
    )
    assert header.hex() == frame_v["associated_data"]
    assert frame[:16] == header
    assert frame[16:40].hex() == frame_v["nonce"]
    inner = crypto_aead_xchacha20poly1305_ietf_decrypt(
        frame[40:], header, frame[16:40], bytes.fromhex(frame_v["key"])
    )
    assert inner.hex() == frame_v["inner_frame"]
    packet = bytes.fromhex(frame_v["ipv6_packet"])
    assert inner == b"\x01" + packet[:8] + packet[40:]  # compressed: both addresses implied by the session


def test_beacon_vector_verifies_independently() -> None:
    v = load()
    datagram = bytes.fromhex(v["beacon"]["datagram"])
    name = v["beacon"]["hostname"].encode()
    body_len = 48 + len(name)
    assert datagram[:4] == b"HRB1"
    assert datagram[5] == len(name)
    assert int.from_bytes(datagram[6:8], "big") == v["beacon"]["udp_port"]
    assert datagram[16:48].hex() == v["initiator"]["public_key"]
    assert datagram[48:body_len] == name
    VerifyKey(datagram[16:48]).verify(datagram[:body_len], datagram[body_len:])


# --------------------------------------------------------------------------- 3. the core opens the vectors
def test_session_open_opens_the_vector_data_frame() -> None:
    v = load()
    initiator_seed, responder_seed = _seeds(v)
    initiator, responder = Identity.from_seed(initiator_seed), Identity.from_seed(responder_seed)
    inputs = v["handshake_inputs"]
    init = bytes.fromhex(v["messages"]["init"])
    _, r_state = handshake.respond(
        responder, init, inputs["responder_index"], bytes.fromhex(inputs["responder_ephemeral_private"])
    )
    keys = handshake.finish_responder(r_state, bytes.fromhex(v["messages"]["confirm"]))
    assert keys.peer_address == initiator.address
    session = Session(keys, 0.0)
    inner = session.open_(bytes.fromhex(v["data_frame"]["frame"]))
    assert inner.hex() == v["data_frame"]["inner_frame"]
    packet = wire.decompress_ipv6(inner[1:], initiator.address, responder.address)
    assert packet.hex() == v["data_frame"]["ipv6_packet"]
    with pytest.raises(ProtocolError, match="replayed"):
        session.open_(bytes.fromhex(v["data_frame"]["frame"]))


def test_vector_beacon_decodes() -> None:
    v = load()
    decoded = beacon.decode(bytes.fromhex(v["beacon"]["datagram"]))
    assert decoded.hostname == v["beacon"]["hostname"]
    assert str(ipaddress.IPv6Address(decoded.address)) == v["initiator"]["address"]


# --------------------------------------------------------------------------- the document prints them
def _hex_values(node: object) -> list[str]:
    if isinstance(node, dict):
        return [h for value in node.values() for h in _hex_values(value)]
    if isinstance(node, str) and len(node) >= 16 and all(c in "0123456789abcdef" for c in node):
        return [node]
    return []


def test_protocol_md_prints_every_vector() -> None:
    text = PROTOCOL_MD.read_text()
    values = _hex_values(load())
    assert len(values) >= 20
    missing = [value[:16] + "..." for value in values if value not in text]
    assert not missing, f"docs/PROTOCOL.md lacks these vectors: {missing}"


def _write() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixed_identities import seed_for

    vectors = compute_vectors(seed_for(INITIATOR_LABEL), seed_for(RESPONDER_LABEL))
    VECTORS_PATH.parent.mkdir(exist_ok=True)
    VECTORS_PATH.write_text(json.dumps(vectors, indent=2) + "\n")
    print(f"wrote {VECTORS_PATH}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_protocol_vectors.py --write")
    _write()
