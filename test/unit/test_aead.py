"""In-place XChaCha20-Poly1305 (core/aead.py) and the in-place paths of Session, against PyNaCl's public API.

The hot path calls libsodium on a preallocated buffer; the bytes on the wire must be exactly those of
``crypto_aead_xchacha20poly1305_ietf_encrypt`` for the same key, nonce and associated data, and a frame that
does not authenticate must be refused whichever byte was changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from husarnet_ros.core import aead, wire
from husarnet_ros.core.errors import AuthenticationError, ProtocolError, ReplayError
from husarnet_ros.core.handshake import SessionKeys
from husarnet_ros.core.session import Session

REPO = Path(__file__).resolve().parents[2]

keys = st.binary(min_size=aead.KEY_SIZE, max_size=aead.KEY_SIZE)
nonces = st.binary(min_size=aead.NONCE_SIZE, max_size=aead.NONCE_SIZE)


def layout(ad: bytes, nonce: bytes, message: bytes, lead: int) -> tuple[bytearray, int, int, int]:
    """A buffer as the data plane uses one: ``lead`` bytes of something else, the associated data, the nonce,
    the message with room for its tag, and a guard after it. Returns it and where ad, nonce, message start."""
    ad_at = lead
    nonce_at = ad_at + len(ad)
    start = nonce_at + len(nonce)
    buffer = bytearray(b"\xa5" * lead) + ad + nonce + message + bytes(aead.TAG_SIZE) + b"\x5a" * 7
    return buffer, ad_at, nonce_at, start


@settings(max_examples=150)
@given(
    key=keys,
    nonce=nonces,
    ad=st.binary(max_size=64),
    message=st.one_of(st.binary(max_size=300), st.integers(0, 9000).map(os.urandom)),
    lead=st.integers(0, 40),
)
def test_encrypt_in_place_is_pynacl_byte_for_byte(
    key: bytes, nonce: bytes, ad: bytes, message: bytes, lead: int
) -> None:
    buffer, ad_at, nonce_at, start = layout(ad, nonce, message, lead)
    before, after = bytes(buffer[:start]), bytes(buffer[start + len(message) + aead.TAG_SIZE :])
    base = aead.pointer(buffer)
    aead.encrypt_in_place(base, start, len(message), ad_at, len(ad), nonce_at, key)
    sealed = bytes(buffer[start : start + len(message) + aead.TAG_SIZE])
    assert sealed == crypto_aead_xchacha20poly1305_ietf_encrypt(message, ad, nonce, key)
    # nothing outside the message and its tag was touched
    assert buffer[:start] == before
    assert buffer[start + len(sealed) :] == after
    # and back, in place
    assert aead.decrypt_in_place(base, start, len(sealed), ad_at, len(ad), nonce_at, key)
    assert buffer[start : start + len(message)] == message
    assert buffer[:start] == before


@settings(max_examples=60)
@given(
    key=keys,
    nonce=nonces,
    ad=st.binary(min_size=1, max_size=32),
    message=st.binary(max_size=200),
    where=st.integers(0, 10_000),
    mask=st.integers(1, 255),
)
def test_decrypt_in_place_refuses_any_changed_byte(
    key: bytes, nonce: bytes, ad: bytes, message: bytes, where: int, mask: int
) -> None:
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(message, ad, nonce, key)
    buffer = bytearray(b"\xa5" * 3 + ad + nonce + sealed)
    ad_at, nonce_at, start = 3, 3 + len(ad), 3 + len(ad) + len(nonce)
    covered = len(buffer) - ad_at  # associated data, nonce, ciphertext and tag
    buffer[ad_at + where % covered] ^= mask
    assert not aead.decrypt_in_place(aead.pointer(buffer), start, len(sealed), ad_at, len(ad), nonce_at, key)


def test_decrypt_in_place_refuses_the_wrong_key_and_a_short_frame() -> None:
    key, nonce, ad = os.urandom(32), os.urandom(24), b"header"
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(b"inner frame", ad, nonce, key)
    buffer = bytearray(ad + nonce + sealed)
    base = aead.pointer(buffer)
    assert not aead.decrypt_in_place(base, 30, len(sealed), 0, 6, 6, os.urandom(32))
    buffer = bytearray(ad + nonce + sealed)
    assert not aead.decrypt_in_place(aead.pointer(buffer), 30, aead.TAG_SIZE - 1, 0, 6, 6, key)
    buffer = bytearray(ad + nonce + sealed)
    assert aead.decrypt_in_place(aead.pointer(buffer), 30, len(sealed), 0, 6, 6, key)
    assert buffer[30 : 30 + 11] == b"inner frame"


# --------------------------------------------------------------------------- Session, in place
PEER_A = bytes.fromhex("fc94" + "aa" * 14)
PEER_B = bytes.fromhex("fc94" + "bb" * 14)


def session_pair() -> tuple[Session, Session, bytes]:
    """Two ends of one session with known keys (no handshake: these tests are about framing)."""
    a_to_b, b_to_a = os.urandom(32), os.urandom(32)
    a = Session(SessionKeys(PEER_B, bytes(32), 11, 22, a_to_b, b_to_a, True), 100.0)
    b = Session(SessionKeys(PEER_A, bytes(32), 22, 11, b_to_a, a_to_b, False), 100.0)
    return a, b, a_to_b


@given(inner=st.binary(min_size=1, max_size=2000), nonce=nonces, start=st.integers(0, 100))
def test_seal_in_place_is_the_documented_frame(inner: bytes, nonce: bytes, start: int) -> None:
    a, b, key = session_pair()
    for counter in range(3):
        buffer = bytearray(b"\xee" * start) + bytearray(wire.DATA_HEADER_SIZE) + inner
        buffer += bytes(wire.TAG_SIZE) + b"\xdd" * 5
        length = a.seal_in_place(buffer, aead.pointer(buffer), start, len(inner), memoryview(nonce))
        assert length == wire.DATA_HEADER_SIZE + len(inner) + wire.TAG_SIZE
        header = wire.encode_data_header(b.local_index, counter)
        expected = header + nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(inner, header, nonce, key)
        assert buffer[start : start + length] == expected
        assert buffer[:start] == b"\xee" * start
        assert buffer[start + length :] == b"\xdd" * 5
        assert a.sent_messages == counter + 1
        # the other end opens it, whole and in place
        assert b.open_(bytes(buffer[start : start + length])) == inner
    # seal() makes the same frame around a fresh nonce
    frame = a.seal(inner)
    header = wire.encode_data_header(b.local_index, 3)
    assert frame[:16] == header
    nonce_used = frame[16:40]
    assert crypto_aead_xchacha20poly1305_ietf_decrypt(frame[40:], header, nonce_used, key) == inner


@given(inner=st.binary(min_size=1, max_size=2000), start=st.integers(0, 100))
def test_open_in_place_leaves_the_inner_frame_in_the_buffer(inner: bytes, start: int) -> None:
    a, b, _ = session_pair()
    frame = a.seal(inner)
    buffer = bytearray(b"\x11" * start) + frame + b"\x22" * 9
    size = b.open_in_place(buffer, aead.pointer(buffer), start, len(frame))
    assert size == len(inner)
    at = start + wire.DATA_HEADER_SIZE
    assert buffer[at : at + size] == inner
    assert buffer[:start] == b"\x11" * start
    assert buffer[start + len(frame) :] == b"\x22" * 9


def test_open_in_place_refuses_tampering_replays_and_short_frames() -> None:
    a, b, _ = session_pair()
    frame = a.seal(b"\x01" + bytes(100))
    for where in (0, 4, 8, 15, 16, 39, 40, len(frame) - 1):
        tampered = bytearray(frame)
        tampered[where] ^= 0x80
        with pytest.raises(ProtocolError):
            b.open_in_place(tampered, aead.pointer(tampered), 0, len(tampered))
    # a forged frame does not burn its counter: the genuine one still opens, once
    buffer = bytearray(frame)
    assert b.open_in_place(buffer, aead.pointer(buffer), 0, len(buffer)) == 101
    buffer = bytearray(frame)
    with pytest.raises(ReplayError):
        b.open_in_place(buffer, aead.pointer(buffer), 0, len(buffer))
    short = bytearray(a.seal(b"\x02"))
    with pytest.raises(ProtocolError):
        b.open_in_place(short, aead.pointer(short), 0, wire.DATA_MIN_SIZE - 1)
    tampered = bytearray(a.seal(b"\x02"))
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationError):
        b.open_in_place(tampered, aead.pointer(tampered), 0, len(tampered))


def test_frames_sealed_back_to_back_open_in_place_one_by_one() -> None:
    """The send path seals a TSO packet's segments into one buffer, the receive path opens a GRO batch in
    another: every frame keeps to its own bytes."""
    a, b, _ = session_pair()
    inners = [bytes([wire.INNER_IPV6_COMPRESSED]) + os.urandom(n) for n in (1400, 1400, 1400, 333)]
    stride = wire.DATA_HEADER_SIZE + 1401 + wire.TAG_SIZE
    buffer = bytearray(stride * len(inners))
    base = aead.pointer(buffer)
    at = 0
    for inner in inners:
        buffer[at + wire.DATA_HEADER_SIZE : at + wire.DATA_HEADER_SIZE + len(inner)] = inner
        at += a.seal_in_place(buffer, base, at, len(inner), os.urandom(wire.NONCE_SIZE))
    received = bytearray(buffer[:at])
    opened, base, at = [], aead.pointer(received), 0
    for inner in inners:
        length = wire.DATA_HEADER_SIZE + len(inner) + wire.TAG_SIZE
        size = b.open_in_place(received, base, at, length)
        opened.append(bytes(received[at + wire.DATA_HEADER_SIZE : at + wire.DATA_HEADER_SIZE + size]))
        at += length
    assert opened == inners


@settings(max_examples=40)
@given(
    sizes=st.tuples(st.integers(1, 1500), st.integers(1, 40)).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.integers(1, t[0]), st.just(t[1]))
    ),
    first=st.integers(0, 64),
)
def test_seal_run_seals_each_frame_as_seal_in_place_would(sizes: tuple[int, int, int], first: int) -> None:
    """Frames every ``stride`` bytes, the last maybe shorter: each becomes the documented datagram, with its
    own counter and nonce, and the datagrams lie back to back."""
    full, last, count = sizes
    a, b, key = session_pair()
    a.seal(b"\x02")  # the run continues the session's counter
    stride = wire.DATA_HEADER_SIZE + full + wire.TAG_SIZE
    inners = [os.urandom(full) for _ in range(count - 1)] + [os.urandom(last)]
    buffer = bytearray(b"\x77" * first) + bytearray(stride * count) + b"\x88" * 3
    for number, inner in enumerate(inners):
        at = first + number * stride + wire.DATA_HEADER_SIZE
        buffer[at : at + len(inner)] = inner
    total = a.seal_run(buffer, aead.pointer(buffer), first, count, stride, last)
    assert total == stride * (count - 1) + wire.DATA_HEADER_SIZE + last + wire.TAG_SIZE
    assert a.sent_messages == count + 1
    assert buffer[:first] == b"\x77" * first
    assert buffer[-3:] == b"\x88" * 3
    datagrams = [bytes(buffer[first + i : first + min(i + stride, total)]) for i in range(0, total, stride)]
    assert len(datagrams) == count
    assert len({d[16:40] for d in datagrams}) == count
    for number, (datagram, inner) in enumerate(zip(datagrams, inners, strict=True)):
        header = wire.encode_data_header(b.local_index, number + 1)
        assert datagram[:16] == header
        assert (
            crypto_aead_xchacha20poly1305_ietf_decrypt(datagram[40:], header, datagram[16:40], key) == inner
        )
        assert b.open_(datagram) == inner


def test_importing_the_module_initialises_libsodium_whatever_was_imported_before() -> None:
    """libsodium chooses its CPU-specific implementations in sodium_init(); without it the data plane runs the
    portable code at half the speed. In a fresh interpreter that imports nothing of PyNaCl but its cffi module
    (which does not initialise), importing aead must have done it: sodium_init() then answers 1, "already"."""
    probe = (
        "import sys; from husarnet_ros.core import aead; from nacl._sodium import lib; "
        "assert 'nacl.bindings' not in sys.modules, 'PyNaCl was initialised by another import'; "
        "print(lib.sodium_init())"
    )
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    }
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
