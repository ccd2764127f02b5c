"""XChaCha20-Poly1305 (libsodium, through PyNaCl's cffi module) sealing and opening in place.

The hot path seals and opens tens of thousands of frames a second. PyNaCl's public functions allocate an
output buffer, copy it into a new ``bytes`` on every call and check their arguments in Python; calling the
same libsodium function on a preallocated buffer, in place (libsodium allows the output to be the input),
halves the cost per frame and lets a whole batch of datagrams be built in one buffer and sent with one
system call.
Same algorithm, same library, same bytes on the wire (the unit tests compare with PyNaCl's public API).

libsodium releases the GIL around these calls (cffi does, for every call), so both directions encrypt at once.
"""

from __future__ import annotations

from typing import Any

from nacl._sodium import ffi, lib  # type: ignore[import-not-found]  # PyNaCl's binding of libsodium

KEY_SIZE = 32
NONCE_SIZE = 24
TAG_SIZE = 16

Pointer = Any  # a cffi "unsigned char *" into a bytearray

# libsodium picks its fastest implementations for this CPU (AVX2 ChaCha20 and the like) in sodium_init();
# without it every call runs the portable code, about half as fast (measured: 3.4 against 1.7 µs per 1300-byte
# frame). PyNaCl's own modules call it when imported, but nothing here may depend on that import order.
# Idempotent and thread-safe.
if lib.sodium_init() < 0:
    raise ImportError("libsodium could not be initialised")


def pointer(buffer: bytearray) -> Pointer:
    """A pointer to ``buffer``'s bytes, valid while ``buffer`` lives and is not resized."""
    return ffi.from_buffer(buffer)


def encrypt_in_place(
    base: Pointer, start: int, length: int, ad_start: int, ad_length: int, nonce_start: int, key: bytes
) -> None:
    """Encrypt ``length`` bytes at ``base + start`` in place and append the 16-byte tag; the associated data
    and the nonce are read from the same buffer."""
    at = base + start
    lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        at, ffi.NULL, at, length, base + ad_start, ad_length, ffi.NULL, base + nonce_start, key
    )


def decrypt_in_place(
    base: Pointer, start: int, length: int, ad_start: int, ad_length: int, nonce_start: int, key: bytes
) -> bool:
    """Check the tag of the ``length`` bytes (ciphertext + tag) at ``base + start`` and decrypt them in place;
    False (and the bytes unusable) if they do not authenticate."""
    at = base + start
    status: int = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        at, ffi.NULL, ffi.NULL, at, length, base + ad_start, ad_length, base + nonce_start, key
    )
    return status == 0
