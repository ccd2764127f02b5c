"""Identity: Husarnet-compatible address derivation, generation, files and every kind of corrupt file."""

from __future__ import annotations

import hashlib
import ipaddress
import pickle
import stat
from pathlib import Path

import pytest
from fixed_identities import failing_seed, fixed_identity, seed_for
from nacl.signing import SigningKey

from husarnet_ros.core.errors import IdentityError
from husarnet_ros.core.identity import (
    MAX_IDENTITY_FILE_SIZE,
    Identity,
    IdentityFileError,
    derive_address,
    read_identity_file,
    verify_signature,
)
from husarnet_ros.fileio import FileMissingError, FileReadError, atomic_write_text


def independent_address(public_key: bytes) -> bytes | None:
    """The rule of DESIGN.md section 2, written out again without the core's constants."""
    digest = hashlib.sha256(public_key).digest()
    if digest[0] != 0x00 or not digest[1] < 50:
        return None
    return b"\xfc\x94" + digest[3:17]


def husarnet_line(seed: bytes) -> str:
    """A Husarnet identity file built by hand: ``<ipv6> <hex pubkey> <hex 64-byte secret>``."""
    key = SigningKey(seed)
    public = bytes(key.verify_key)
    address = independent_address(public)
    assert address is not None
    return f"{ipaddress.IPv6Address(address)} {public.hex()} {(seed + public).hex()}\n"


# --------------------------------------------------------------------------- derivation
def test_derived_address_matches_independent_computation_for_valid_keys() -> None:
    for label in ("alpha", "beta", "gamma", "delta"):
        identity = fixed_identity(label)
        assert identity.address == independent_address(identity.public_key)
        assert len(identity.address) == 16
        assert identity.address[:2] == b"\xfc\x94"


def test_derivation_agrees_with_independent_rule_on_many_keys() -> None:
    # Mostly failing keys, plus whatever passes: both branches of the rule are compared.
    seen_valid = 0
    for counter in range(3000):
        public = bytes(SigningKey(hashlib.sha256(counter.to_bytes(4, "big")).digest()).verify_key)
        expected = independent_address(public)
        assert derive_address(public) == expected
        seen_valid += expected is not None
    assert seen_valid >= 1


@pytest.mark.parametrize(
    ("byte0", "byte1", "valid"),
    [(0, 0, True), (0, 49, True), (0, 50, False), (0, 255, False), (1, 0, False), (255, 0, False)],
)
def test_proof_of_work_boundaries(
    monkeypatch: pytest.MonkeyPatch, byte0: int, byte1: int, valid: bool
) -> None:
    digest = bytes([byte0, byte1, 0xAA]) + bytes(range(3, 32))

    class FakeHash:
        def digest(self) -> bytes:
            return digest

    monkeypatch.setattr(hashlib, "sha256", lambda _data: FakeHash())
    address = derive_address(bytes(32))
    if valid:
        assert address == b"\xfc\x94" + bytes(range(3, 17))
    else:
        assert address is None


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_derive_address_of_wrong_size_key_is_none(size: int) -> None:
    assert derive_address(bytes(size)) is None


# --------------------------------------------------------------------------- construction
def test_generate_gives_a_valid_identity_that_signs() -> None:
    identity = Identity.generate()
    assert identity.address == independent_address(identity.public_key)
    assert identity.secret_key == bytes(identity.signing_key) + identity.public_key
    signature = identity.sign(b"message")
    assert verify_signature(identity.public_key, b"message", signature)
    assert not verify_signature(identity.public_key, b"massage", signature)


def test_generate_gives_different_identities() -> None:
    assert Identity.generate().public_key != Identity.generate().public_key


def test_generate_gives_up_with_identity_error_when_no_key_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    import husarnet_ros.core.identity as identity_module

    monkeypatch.setattr(identity_module, "_MAX_GENERATION_ATTEMPTS", 3)
    monkeypatch.setattr(identity_module, "derive_address", lambda _public: None)
    with pytest.raises(IdentityError, match="could not generate"):
        Identity.generate()


def test_from_seed_is_deterministic() -> None:
    seed = seed_for("deterministic")
    assert Identity.from_seed(seed).public_key == Identity.from_seed(seed).public_key


def test_from_seed_rejects_a_key_failing_the_proof_of_work() -> None:
    with pytest.raises(IdentityError, match="proof of work"):
        Identity.from_seed(failing_seed("x"))


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_from_seed_rejects_wrong_seed_size(size: int) -> None:
    with pytest.raises(IdentityError, match="32 bytes"):
        Identity.from_seed(bytes(size))


def test_secret_key_is_not_in_repr() -> None:
    identity = fixed_identity("alpha")
    assert identity.secret_key.hex() not in repr(identity)
    assert bytes(identity.signing_key).hex() not in repr(identity)


# --------------------------------------------------------------------------- files
def test_file_text_round_trip() -> None:
    identity = fixed_identity("alpha")
    text = identity.to_file_text()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    again = Identity.from_file_text(text)
    assert (again.public_key, again.address, again.secret_key) == (
        identity.public_key,
        identity.address,
        identity.secret_key,
    )


def test_file_round_trip_through_an_atomic_0600_file(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "id"
    atomic_write_text(path, identity.to_file_text(), 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.from_file_text(path.read_text()).secret_key == identity.secret_key


def test_imports_a_husarnet_identity_file_built_by_hand() -> None:
    seed = seed_for("husarnet import")
    line = husarnet_line(seed)
    identity = Identity.from_file_text(line)
    assert identity.address == independent_address(bytes(SigningKey(seed).verify_key))
    assert identity.secret_key.hex() == line.split()[2]
    # and it is written back in the same format, so the address survives a round trip
    assert identity.to_file_text().split() == line.split()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda line: line.replace(" ", "\t"),
        lambda line: "  " + line.strip() + "\r\n\n",
        lambda line: line.upper(),  # upper-case hex and address
        lambda line: str(ipaddress.IPv6Address(line.split()[0]).exploded) + " " + " ".join(line.split()[1:]),
    ],
)
def test_import_tolerates_harmless_formatting(mangle: object) -> None:
    line = husarnet_line(seed_for("husarnet import"))
    assert callable(mangle)
    assert Identity.from_file_text(mangle(line)).address == Identity.from_file_text(line).address


def _fields() -> list[str]:
    return husarnet_line(seed_for("corrupt")).split()


def _join(*fields: str) -> str:
    return " ".join(fields) + "\n"


def _with_secret(secret: bytes) -> str:
    addr, pub, _ = _fields()
    return _join(addr, pub, secret.hex())


def _other_valid_line() -> list[str]:
    return husarnet_line(seed_for("another")).split()


def _corrupt_cases() -> list[tuple[str, str, str]]:
    addr, pub, secret = _fields()
    other_addr, other_pub, other_secret = _other_valid_line()
    seed = bytes.fromhex(secret)[:32]
    bad_seed = failing_seed("corrupt file")
    bad_pub = bytes(SigningKey(bad_seed).verify_key)
    bad_pub_addr = "fc94::1"
    return [
        ("empty file", "", "found 0 field"),
        ("only whitespace", " \n\t\n", "found 0 field"),
        ("one field", _join(addr), "found 1 field"),
        ("two fields", _join(addr, pub), "found 2 field"),
        ("four fields", _join(addr, pub, secret, "extra"), "found 4 field"),
        ("two identities", _join(addr, pub, secret) + _join(other_addr, other_pub, other_secret), "found 6"),
        ("address not IPv6", _join("192.168.0.1", pub, secret), "not an IPv6 address"),
        ("address garbage", _join("fc94::zz", pub, secret), "not an IPv6 address"),
        ("public key bad hex", _join(addr, "zz" + pub[2:], secret), "not valid hex"),
        ("public key odd hex", _join(addr, pub[:-1], secret), "not valid hex"),
        ("secret bad hex", _join(addr, pub, secret[:-2] + "g0"), "not valid hex"),
        ("public key too short", _join(addr, pub[:-2], secret), "public key has 31 bytes"),
        ("public key too long", _join(addr, pub + "00", secret), "public key has 33 bytes"),
        ("secret too short (seed only)", _join(addr, pub, secret[:64]), "secret key has 32 bytes"),
        ("secret too long", _join(addr, pub, secret + "00"), "secret key has 65 bytes"),
        ("secret of another key", _join(addr, pub, other_secret), "does not belong"),
        (
            "secret seed changed",
            _with_secret(bytes([seed[0] ^ 1]) + seed[1:] + bytes.fromhex(pub)),
            "does not belong",
        ),
        ("secret public half changed", _join(addr, pub, secret[:64] + other_pub), "does not belong"),
        ("public key of another identity", _join(addr, other_pub, secret), "does not belong"),
        ("address of another identity", _join(other_addr, pub, secret), "does not match the public key"),
        ("address outside fc94", _join("fd00::1", pub, secret), "does not match the public key"),
        (
            "consistent key failing the proof of work",
            _join(bad_pub_addr, bad_pub.hex(), (bad_seed + bad_pub).hex()),
            "proof of work",
        ),
    ]


@pytest.mark.parametrize(("case", "text", "message"), _corrupt_cases(), ids=[c[0] for c in _corrupt_cases()])
def test_corrupt_identity_file_is_a_clear_identity_error(case: str, text: str, message: str) -> None:
    with pytest.raises(IdentityError, match=message) as info:
        Identity.from_file_text(text)
    # The message must not leak the secret key.
    assert _fields()[2] not in str(info.value)


# --------------------------------------------------------------------------- read_identity_file
def test_read_identity_file_reads_a_husarnet_file(tmp_path: Path) -> None:
    path = tmp_path / "id"
    line = husarnet_line(seed_for("husarnet import"))
    path.write_text(line)
    assert read_identity_file(path).to_file_text().split() == line.split()
    assert path.read_text() == line  # only read


def test_read_identity_file_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "id"
    path.write_text("fc94::1 00 00\n")
    with pytest.raises(IdentityFileError) as info:
        read_identity_file(path)
    assert info.value.path == path
    assert "public key has 1 bytes" in info.value.problem
    assert str(info.value).startswith(f"{path}: ")


def test_read_identity_file_refuses_binary_content(tmp_path: Path) -> None:
    path = tmp_path / "id"
    path.write_bytes(husarnet_line(seed_for("binary")).encode() + b"\xff")
    with pytest.raises(IdentityFileError, match="not a text identity file"):
        read_identity_file(path)


def test_read_identity_file_refuses_a_large_file_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "id"
    # A valid line followed by padding: the size alone decides, whatever the content.
    path.write_text(husarnet_line(seed_for("large")) + " " * MAX_IDENTITY_FILE_SIZE)
    with pytest.raises(
        FileReadError, match=rf"identity file {path} is larger than {MAX_IDENTITY_FILE_SIZE} bytes"
    ):
        read_identity_file(path)


def test_read_identity_file_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(FileMissingError, match=rf"cannot read identity file {tmp_path / 'none'}: "):
        read_identity_file(tmp_path / "none")
    with pytest.raises(FileReadError, match=rf"cannot read identity file {tmp_path}: "):
        read_identity_file(tmp_path)  # a directory


def test_identity_file_errors_survive_pickling(tmp_path: Path) -> None:
    # They cross process boundaries (husarnet_ros.testing.unprivileged) with their attributes.
    error = IdentityFileError(tmp_path / "id", "found 1 field(s)")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.path, again.problem, str(again)) == (
        IdentityFileError,
        error.path,
        error.problem,
        str(error),
    )


# --------------------------------------------------------------------------- signatures
@pytest.mark.parametrize(
    ("public_key", "signature"),
    [(bytes(31), bytes(64)), (bytes(32), bytes(63)), (bytes(32), bytes(64)), (b"\xff" * 32, b"\xff" * 64)],
)
def test_verify_signature_never_raises_on_malformed_input(public_key: bytes, signature: bytes) -> None:
    assert verify_signature(public_key, b"m", signature) is False
