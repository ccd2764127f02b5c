"""core/license.py and core/websetup.py: signing, verifying, tampering, fingerprints, pinning, dates, and the
validation of Websetup's messages."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from nacl.signing import SigningKey
from pydantic import ValidationError

from husarnet_ros.core.license import (
    MAX_LICENSE_SIZE,
    License,
    LicenseError,
    canonical_bytes,
    fingerprint,
    issue_license,
    normalise_fingerprint,
    parse_license,
)
from husarnet_ros.core.websetup import DeviceConfig, HostRecord, JoinRequest, PeerLink, PeerReport

INSTALLATION = "6f1c7a8e-2b4d-4c1e-9a3f-0d5e7b9c1a2f"
ISSUED = datetime(2026, 11, 1, tzinfo=timezone.utc)
VALID_UNTIL = datetime(2027, 11, 1, tzinfo=timezone.utc)


def make_license(key: SigningKey, **changes: Any) -> License:
    fields: dict[str, Any] = {
        "installation_id": INSTALLATION,
        "name": "Acme robots",
        "dashboard_url": "http://198.18.0.10:8080",
        "base_servers": ["198.18.0.10:5582"],
        "websetup_address": "fc94:0:0:0:0:0:0:10",
        "max_devices": 50,
        "issued": ISSUED,
        "valid_until": VALID_UNTIL,
    }
    fields.update(changes)
    return issue_license(key, **fields)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey(bytes(range(32)))


def test_an_issued_license_parses_back_with_every_field(key: SigningKey) -> None:
    issued = make_license(key)
    parsed = parse_license(issued.to_json())
    assert parsed.name == "Acme robots"
    assert parsed.installation_id == INSTALLATION
    assert parsed.base_servers == ["198.18.0.10:5582"]
    assert parsed.websetup_address == bytes.fromhex("fc94" + "00" * 13 + "10")
    assert parsed.websetup_port == 5590
    assert parsed.license_key == bytes(key.verify_key)
    assert parsed.valid_until == VALID_UNTIL
    assert parsed.to_json() == issued.to_json()


def test_fingerprint_is_sha256_of_the_key_in_unpadded_base64(key: SigningKey) -> None:
    raw = bytes(key.verify_key)
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert fingerprint(raw) == expected
    assert make_license(key).fingerprint == expected
    assert len(expected) == len("SHA256:") + 43


def test_a_fingerprint_is_accepted_with_or_without_its_prefix(key: SigningKey) -> None:
    fp = fingerprint(bytes(key.verify_key))
    assert normalise_fingerprint(fp[len("SHA256:") :]) == fp
    assert normalise_fingerprint(f"  sha256:{fp[7:]} ") == fp
    with pytest.raises(LicenseError, match="43 base64 characters"):
        normalise_fingerprint("SHA256:short")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Evil robots"),
        ("base_servers", ["203.0.113.66:5582"]),
        ("websetup_address", "fc94::66"),
        ("valid_until", "2099-01-01T00:00:00Z"),
        ("max_devices", 100000),
    ],
)
def test_any_changed_field_breaks_the_signature(key: SigningKey, field: str, value: object) -> None:
    document = json.loads(make_license(key).to_json())
    document[field] = value
    with pytest.raises(LicenseError, match="signature does not verify"):
        parse_license(json.dumps(document))


def test_a_document_re_signed_by_another_key_verifies_but_is_refused_by_the_pin(key: SigningKey) -> None:
    other = SigningKey(bytes(range(1, 33)))
    forged = make_license(other)
    assert parse_license(forged.to_json()).license_key == bytes(other.verify_key)  # well-formed on its own
    with pytest.raises(LicenseError) as caught:
        parse_license(forged.to_json(), pinned_key=bytes(key.verify_key))
    message = str(caught.value)
    assert fingerprint(bytes(other.verify_key)) in message
    assert fingerprint(bytes(key.verify_key)) in message
    assert "--replace" in message


def test_the_expected_fingerprint_must_match(key: SigningKey) -> None:
    document = make_license(key).to_json()
    parse_license(document, expected_fingerprint=fingerprint(bytes(key.verify_key)))
    other = fingerprint(bytes(SigningKey(bytes(32)).verify_key))
    with pytest.raises(LicenseError, match="not the Dashboard you meant"):
        parse_license(document, expected_fingerprint=other)


def test_dates_are_checked_by_the_caller(key: SigningKey) -> None:
    lic = make_license(key)
    lic.check_valid_at(ISSUED + timedelta(days=10))
    with pytest.raises(LicenseError, match="expired at 2027-11-01T00:00:00Z"):
        lic.check_valid_at(VALID_UNTIL + timedelta(seconds=1))
    lic.check_valid_at(ISSUED - timedelta(minutes=30))  # clocks differ a little
    with pytest.raises(LicenseError, match="in the future"):
        lic.check_valid_at(ISSUED - timedelta(hours=2))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"{}", "missing field"),
        (b" " * (MAX_LICENSE_SIZE + 1), "not a license"),
    ],
)
def test_what_is_not_a_license_says_why(data: bytes, message: str) -> None:
    with pytest.raises(LicenseError, match=message):
        parse_license(data)


def test_unknown_fields_and_bad_values_are_refused(key: SigningKey) -> None:
    document = json.loads(make_license(key).to_json())
    with pytest.raises(LicenseError, match="unknown field"):
        parse_license(json.dumps({**document, "extra": 1}))
    with pytest.raises(LicenseError, match="websetup_address"):
        make_license(key, websetup_address="2001:db8::1")
    with pytest.raises(LicenseError, match="valid_until must be after issued"):
        make_license(key, valid_until=ISSUED)
    with pytest.raises(LicenseError, match="installation_id"):
        make_license(key, installation_id="not-a-uuid")


def test_the_signature_covers_canonical_json_without_the_signature(key: SigningKey) -> None:
    lic = make_license(key)
    signed = canonical_bytes(lic.document)
    assert b"signature" not in signed
    assert b" " not in signed.replace(b"Acme robots", b"")
    key.verify_key.verify(signed, base64.b64decode(lic.document["signature"]))


# --- Websetup's messages ------------------------------------------------------------------------------------


def test_device_config_normalises_and_deduplicates_the_whitelist() -> None:
    config = DeviceConfig(
        revision=3,
        hostname="robot1",
        whitelist=["FC94:0::2", "fc94::2", "fc94::1"],
        hosts=[HostRecord(hostname="Robot2", address="fc94:0::2")],
    )
    assert config.whitelist == ["fc94::1", "fc94::2"]
    assert config.hosts[0].hostname == "robot2"
    assert config.hosts[0].address == "fc94::2"


@pytest.mark.parametrize(
    "body",
    [
        {"revision": -1, "hostname": "r", "whitelist": [], "hosts": []},
        {"revision": 1, "hostname": "r", "whitelist": ["2001:db8::1"], "hosts": []},
        {
            "revision": 1,
            "hostname": "r",
            "whitelist": [],
            "hosts": [{"hostname": "bad name", "address": "fc94::1"}],
        },
        {"revision": 1, "hostname": "r", "whitelist": [], "hosts": [], "extra": True},
    ],
)
def test_device_config_refuses_bad_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DeviceConfig.model_validate(body)


def test_join_request_and_peer_links_validate() -> None:
    assert JoinRequest(code="Ab-9_x", hostname="Robot1").hostname == "robot1"
    for code in ("", "has space", "x" * 65):
        with pytest.raises(ValidationError):
            JoinRequest(code=code)
    link = PeerLink(address="FC94::2", path="tunnelled", base_server="198.18.0.10:5582", rtt_ms=12.5)
    assert link.address == "fc94::2"
    with pytest.raises(ValidationError):
        PeerLink.model_validate({"address": "fc94::2", "path": "sideways"})
    with pytest.raises(ValidationError):
        PeerReport(peers=[PeerLink(address="fc94::2", path="down")] * 1025)
