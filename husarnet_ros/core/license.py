"""The installation's license: what a Dashboard tells its daemons, signed with the installation's own key.

A Dashboard serves ``license.json`` over plain HTTP. Plain HTTP is fine because the document is signed: its
``license_key`` (an Ed25519 public key) signs every other field, and a daemon pins that key the first time
(or checks it against a fingerprint given out of band), so a later document with another key is refused.

The signed bytes are the canonical JSON of every field but ``signature``: keys sorted, no spaces, ASCII
only. Pure functions, no I/O: the daemon fetches and stores, the Dashboard serves.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any

from nacl.signing import SigningKey

from .address import parse_overlay
from .base_client import parse_base_server
from .errors import AddressError, ConfigError, HusarnetError
from .identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, verify_signature

LICENSE_FORMAT = 1
# A license is a few hundred bytes; anything this large is not one (and is not read further).
MAX_LICENSE_SIZE = 64 * 1024
MAX_BASE_SERVERS = 16
MAX_NAME_LENGTH = 200
DEFAULT_WEBSETUP_PORT = 5590
FINGERPRINT_PREFIX = "SHA256:"

_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z", re.ASCII)
_FIELDS = {
    "format",
    "installation_id",
    "name",
    "dashboard_url",
    "base_servers",
    "websetup_address",
    "websetup_port",
    "max_devices",
    "issued",
    "valid_until",
    "license_key",
    "signature",
}


class LicenseError(HusarnetError):
    """A license document that is malformed, badly signed, expired or signed by a key other than the pinned
    one: the message says which, and what to do."""


def fingerprint(public_key: bytes) -> str:
    """``SHA256:`` and the unpadded base64 of the key's SHA-256, as ssh shows host keys."""
    digest = hashlib.sha256(public_key).digest()
    return FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as given on a command line (with or without the prefix); LicenseError if malformed."""
    value = text.strip()
    body = value[len(FINGERPRINT_PREFIX) :] if value.upper().startswith(FINGERPRINT_PREFIX) else value
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        raise LicenseError(
            f"fingerprint {text!r}: expected SHA256: and 43 base64 characters, as the Dashboard shows it"
        )
    return FINGERPRINT_PREFIX + base64.b64encode(raw).decode("ascii").rstrip("=")


def _timestamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_timestamp(name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise LicenseError(f"license: {name} must be a UTC time like 2026-12-01T00:00:00Z")
    # Parsed by hand, not with strptime: that imports a module on first use, which a daemon that has dropped
    # its privileges may no longer be able to read.
    match = _TIMESTAMP.fullmatch(value)
    try:
        if match is None:
            raise ValueError(value)
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        raise LicenseError(f"license: {name} {value!r} is not a UTC time like 2026-12-01T00:00:00Z") from None


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The bytes the signature covers: every field but ``signature``, as canonical JSON."""
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class License:
    """A verified license (build one with ``parse_license`` or ``issue_license``). Immutable."""

    __slots__ = (
        "base_servers",
        "dashboard_url",
        "document",
        "installation_id",
        "issued",
        "license_key",
        "max_devices",
        "name",
        "valid_until",
        "websetup_address",
        "websetup_port",
    )

    def __init__(self, document: dict[str, Any]) -> None:
        # Only parse_license calls this, after checking every field.
        self.document = document
        self.installation_id: str = document["installation_id"]
        self.name: str = document["name"]
        self.dashboard_url: str = document["dashboard_url"]
        self.base_servers: list[str] = list(document["base_servers"])
        self.websetup_address: bytes = parse_overlay(document["websetup_address"])
        self.websetup_port: int = document["websetup_port"]
        self.max_devices: int = document["max_devices"]
        self.issued = _parse_timestamp("issued", document["issued"])
        self.valid_until = _parse_timestamp("valid_until", document["valid_until"])
        self.license_key: bytes = base64.b64decode(document["license_key"])

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.license_key)

    def to_json(self) -> str:
        """The document as served and stored (the signature still verifies on it)."""
        return json.dumps(self.document, sort_keys=True, indent=2) + "\n"

    def check_valid_at(self, now: datetime) -> None:
        """LicenseError if ``now`` is outside [issued, valid_until]."""
        if now > self.valid_until:
            raise LicenseError(
                f"license of {self.name!r} expired at {_timestamp(self.valid_until)}: ask its Dashboard's "
                "operator to renew it, then run setup-server again"
            )
        # A little slack for clocks that differ between the Dashboard and the robot.
        if (self.issued - now).total_seconds() > 3600:
            raise LicenseError(
                f"license of {self.name!r} is issued at {_timestamp(self.issued)}, in the future: check this "
                "machine's clock"
            )


def issue_license(
    signing_key: SigningKey,
    *,
    installation_id: str,
    name: str,
    dashboard_url: str,
    base_servers: list[str],
    websetup_address: str,
    websetup_port: int = DEFAULT_WEBSETUP_PORT,
    max_devices: int,
    issued: datetime,
    valid_until: datetime,
) -> License:
    """Sign a license with the installation's key (the Dashboard's side). Bad fields raise LicenseError."""
    document: dict[str, Any] = {
        "format": LICENSE_FORMAT,
        "installation_id": installation_id,
        "name": name,
        "dashboard_url": dashboard_url,
        "base_servers": list(base_servers),
        "websetup_address": websetup_address,
        "websetup_port": websetup_port,
        "max_devices": max_devices,
        "issued": _timestamp(issued),
        "valid_until": _timestamp(valid_until),
        "license_key": base64.b64encode(bytes(signing_key.verify_key)).decode("ascii"),
    }
    _check_fields(document)
    document["signature"] = base64.b64encode(signing_key.sign(canonical_bytes(document)).signature).decode(
        "ascii"
    )
    return License(document)


def parse_license(
    data: bytes | str, *, pinned_key: bytes | None = None, expected_fingerprint: str | None = None
) -> License:
    """Check a license document: well-formed, signed by its own ``license_key``, and that key is the
    ``pinned_key`` (if one is pinned) and matches ``expected_fingerprint`` (if given). LicenseError says why
    not. Validity dates are the caller's to check (``License.check_valid_at``): a cached license is still
    read when it has expired, to say so."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_LICENSE_SIZE:
        raise LicenseError(f"license: {len(raw)} bytes, more than {MAX_LICENSE_SIZE}: not a license")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LicenseError(f"license: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise LicenseError("license: expected a JSON object")
    _check_fields(document)
    signature = _base64_field(document, "signature", SIGNATURE_SIZE)
    key = _base64_field(document, "license_key", PUBLIC_KEY_SIZE)
    if not verify_signature(key, canonical_bytes(document), signature):
        raise LicenseError("license: the signature does not verify: the document was altered or is forged")
    if expected_fingerprint is not None and fingerprint(key) != normalise_fingerprint(expected_fingerprint):
        raise LicenseError(
            f"license: its key's fingerprint is {fingerprint(key)}, not the expected "
            f"{normalise_fingerprint(expected_fingerprint)}: this is not the Dashboard you meant"
        )
    if pinned_key is not None and key != pinned_key:
        raise LicenseError(
            f"license: signed by another key ({fingerprint(key)}) than the pinned one "
            f"({fingerprint(pinned_key)}): refusing it. If the server was really reinstalled, run "
            "setup-server again with --fingerprint of the new key and --replace"
        )
    return License(document)


def _base64_field(document: dict[str, Any], name: str, size: int) -> bytes:
    value = document.get(name)
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise LicenseError(f"license: {name} must be {size} bytes in base64")
    return raw


def _check_fields(document: dict[str, Any]) -> None:
    missing = sorted(_FIELDS - {"signature"} - document.keys())
    if missing:
        raise LicenseError(f"license: missing field(s): {', '.join(missing)}")
    unknown = sorted(document.keys() - _FIELDS)
    if unknown:
        raise LicenseError(f"license: unknown field(s): {', '.join(unknown)}")
    if document["format"] != LICENSE_FORMAT or isinstance(document["format"], bool):
        raise LicenseError(f"license: format {document['format']!r}, this version reads {LICENSE_FORMAT}")
    try:
        uuid.UUID(str(document["installation_id"]))
    except ValueError:
        raise LicenseError("license: installation_id must be a UUID") from None
    name = document["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise LicenseError(f"license: name must be text of 1 to {MAX_NAME_LENGTH} characters")
    url = document["dashboard_url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2000:
        raise LicenseError("license: dashboard_url must be an http:// or https:// URL")
    servers = document["base_servers"]
    if not isinstance(servers, list) or len(servers) > MAX_BASE_SERVERS:
        raise LicenseError(f"license: base_servers must be a list of at most {MAX_BASE_SERVERS}")
    for server in servers:
        if not isinstance(server, str):
            raise LicenseError("license: every base server must be text like host:port")
        try:
            parse_base_server(server)
        except ConfigError as exc:
            raise LicenseError(f"license: {exc}") from None
    address = document["websetup_address"]
    try:
        if not isinstance(address, str):
            raise AddressError("not text")
        parse_overlay(address)
    except AddressError:
        raise LicenseError(f"license: websetup_address {address!r} is not an fc94::/16 address") from None
    for name_of_int, low, high in (("websetup_port", 1, 65535), ("max_devices", 0, 10**9)):
        value = document[name_of_int]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise LicenseError(f"license: {name_of_int} must be a whole number from {low} to {high}")
    issued = _parse_timestamp("issued", document["issued"])
    valid_until = _parse_timestamp("valid_until", document["valid_until"])
    if valid_until <= issued:
        raise LicenseError("license: valid_until must be after issued")
