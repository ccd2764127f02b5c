"""Node identity: an Ed25519 key pair and the fc94 overlay address derived from it.

The derivation matches Husarnet's, so an existing Husarnet identity keeps its address:
``h = SHA-256(pubkey)``; the key is acceptable only if ``h[0] == 0`` and ``h[1] < 50``
(a small proof of work, about 1 in 1311 keys); the address is ``fc94`` followed by ``h[3:17]``.

``read_identity_file`` is the one reader of identity files (the daemon's state, the CLI, fleet files).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from ..fileio import read_bounded
from .constants import IDENTITY_POW_BYTE1_LIMIT, OVERLAY_PREFIX
from .errors import IdentityError

PUBLIC_KEY_SIZE = 32
SECRET_KEY_SIZE = 64  # libsodium layout: 32-byte seed followed by the 32-byte public key
SIGNATURE_SIZE = 64
# An identity file is one line of about 250 bytes; anything much larger is the wrong file.
MAX_IDENTITY_FILE_SIZE = 4096
# Bound on key generation attempts: the expected count is ~1311, this is ~1e-150 likely to be hit.
_MAX_GENERATION_ATTEMPTS = 500_000


def derive_address(public_key: bytes) -> bytes | None:
    """The 16-byte overlay address of ``public_key``, or None if the key fails the proof of work."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        return None
    h = hashlib.sha256(public_key).digest()
    if h[0] != 0 or h[1] >= IDENTITY_POW_BYTE1_LIMIT:
        return None
    return OVERLAY_PREFIX + h[3:17]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification that never raises on malformed input."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair whose public key passes the proof of work, and its address."""

    signing_key: SigningKey = field(repr=False)
    public_key: bytes
    address: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Identity from a 32-byte Ed25519 seed; IdentityError if the key fails the proof of work."""
        if len(seed) != 32:
            raise IdentityError(f"an Ed25519 seed has 32 bytes, not {len(seed)}")
        key = SigningKey(seed)
        public = bytes(key.verify_key)
        address = derive_address(public)
        if address is None:
            raise IdentityError("this key does not pass the address proof of work (sha256(pubkey)[0:2])")
        return cls(key, public, address)

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity (loops until a key passes the proof of work)."""
        for _ in range(_MAX_GENERATION_ATTEMPTS):
            key = SigningKey.generate()
            public = bytes(key.verify_key)
            address = derive_address(public)
            if address is not None:
                return cls(key, public, address)
        raise IdentityError("could not generate a valid identity (random source broken?)")

    @property
    def secret_key(self) -> bytes:
        """The 64-byte libsodium secret key (seed || public key), as Husarnet stores it."""
        return bytes(self.signing_key) + self.public_key

    def sign(self, message: bytes) -> bytes:
        return bytes(self.signing_key.sign(message).signature)

    def to_file_text(self) -> str:
        """Husarnet's identity file format: ``<ipv6> <hex pubkey> <hex 64-byte secret>``."""
        addr = str(ipaddress.IPv6Address(self.address))
        return f"{addr} {self.public_key.hex()} {self.secret_key.hex()}\n"

    @classmethod
    def from_file_text(cls, text: str) -> Identity:
        """Parse an identity file; every inconsistency is an IdentityError saying what is wrong."""
        parts = text.split()
        if len(parts) != 3:
            raise IdentityError(
                "identity file must hold one line '<ipv6 address> <hex public key> <hex secret key>', "
                f"found {len(parts)} field(s)"
            )
        addr_text, pub_hex, secret_hex = parts
        try:
            claimed = ipaddress.IPv6Address(addr_text).packed
        except ValueError:
            raise IdentityError(f"identity file: {addr_text!r} is not an IPv6 address") from None
        try:
            public = bytes.fromhex(pub_hex)
            secret = bytes.fromhex(secret_hex)
        except ValueError:
            raise IdentityError("identity file: public or secret key is not valid hex") from None
        if len(public) != PUBLIC_KEY_SIZE:
            raise IdentityError(f"identity file: public key has {len(public)} bytes, expected 32")
        if len(secret) != SECRET_KEY_SIZE:
            raise IdentityError(f"identity file: secret key has {len(secret)} bytes, expected 64")
        key = SigningKey(secret[:32])
        if bytes(key.verify_key) != public or secret[32:] != public:
            raise IdentityError("identity file: the secret key does not belong to the public key")
        address = derive_address(public)
        if address is None:
            raise IdentityError("identity file: the public key does not pass the address proof of work")
        if address != claimed:
            raise IdentityError(
                f"identity file: address {addr_text} does not match the public key "
                f"(it derives {ipaddress.IPv6Address(address)})"
            )
        return cls(key, public, address)


class IdentityFileError(IdentityError):
    """An identity file whose content is not a valid identity: ``path`` and the ``problem`` found in it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self) -> tuple[type[IdentityFileError], tuple[Path, str]]:
        # Picklable despite the two arguments (errors cross process boundaries in tests).
        return (type(self), (self.path, self.problem))


def read_identity_file(path: Path) -> Identity:
    """The identity stored in ``path`` (Husarnet's one-line format), checked through and through.

    ``fileio.FileReadError`` (``FileMissingError`` when there is none) if the file cannot be read or is
    larger than MAX_IDENTITY_FILE_SIZE; IdentityFileError naming the file and the problem if its content
    is not a valid identity. The file is only read, never changed.
    """
    data = read_bounded(path, MAX_IDENTITY_FILE_SIZE, "identity file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IdentityFileError(
            path, "not a text identity file (an identity file is one line of ASCII text)"
        ) from None
    try:
        return Identity.from_file_text(text)
    except IdentityError as exc:
        raise IdentityFileError(path, str(exc)) from None
