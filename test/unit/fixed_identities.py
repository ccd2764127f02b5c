"""Deterministic identities for tests: the first seed derived from a label that passes the proof of work.

Key generation loops ~1311 times on average, so results are cached per label.
"""

from __future__ import annotations

import functools
import hashlib

from nacl.signing import SigningKey

from husarnet_ros.core.identity import Identity, derive_address


def seed_for(label: str) -> bytes:
    """The first ``sha256(label || counter)`` whose Ed25519 key passes the address proof of work."""
    for counter in range(1_000_000):
        seed = hashlib.sha256(label.encode() + counter.to_bytes(4, "big")).digest()
        if derive_address(bytes(SigningKey(seed).verify_key)) is not None:
            return seed
    raise AssertionError("no valid seed found (impossible in practice)")


@functools.cache
def fixed_identity(label: str) -> Identity:
    return Identity.from_seed(seed_for(label))


@functools.cache
def failing_seed(label: str) -> bytes:
    """A seed whose key does NOT pass the proof of work (almost every seed)."""
    for counter in range(1000):
        seed = hashlib.sha256(b"fail" + label.encode() + counter.to_bytes(4, "big")).digest()
        if derive_address(bytes(SigningKey(seed).verify_key)) is None:
            return seed
    raise AssertionError("unreachable")
