"""The installation's license key file and the license it signs."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from husarnet_ros.core.license import LicenseError, parse_license
from husarnet_ros.dashboard.license_key import (
    LicenseKeyError,
    current_license,
    license_key_path,
    load_license_key,
    load_or_create_license_key,
)
from husarnet_ros.dashboard.settings import DashboardSettings

NOW = datetime(2026, 12, 1, 3, 0, 0, 123456, tzinfo=timezone.utc)
INSTALLATION = "0b0e7a52-6f43-4a2e-9c36-6d4f1c1e2a10"


def test_key_is_created_once_private_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    with pytest.raises(LicenseKeyError, match="start the Dashboard once"):
        load_license_key(data_dir)
    first = load_or_create_license_key(data_dir)
    path = license_key_path(data_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_license_key(data_dir).encode() == first.encode()
    assert load_license_key(data_dir).encode() == first.encode()
    assert [p.name for p in data_dir.iterdir()] == ["license.key"]  # no temporary file left behind


@pytest.mark.parametrize("content", [b"", b"not base64!\n", base64.b64encode(b"short") + b"\n", b"\xff" * 10])
def test_a_corrupt_key_is_refused_with_what_to_do(tmp_path: Path, content: bytes) -> None:
    path = license_key_path(tmp_path)
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(LicenseKeyError, match=r"corrupt.*restore it from a backup"):
        load_or_create_license_key(tmp_path)
    assert path.read_bytes() == content  # never replaced by a new key


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    load_or_create_license_key(tmp_path)
    path = license_key_path(tmp_path)
    path.chmod(0o644)
    with pytest.raises(LicenseKeyError, match="chmod 600"):
        load_license_key(tmp_path)


def test_current_license_is_signed_with_the_settings(tmp_path: Path) -> None:
    key = load_or_create_license_key(tmp_path)
    settings = DashboardSettings(
        data_dir=tmp_path,
        name="fleet",
        public_url="https://dash.example:8443",
        base_servers=("198.18.0.1:5582", "[fd00:98::1]:443"),
        websetup_address="fc94:5e7::1",
        websetup_port=5591,
        max_devices=42,
        license_validity=timedelta(days=30),
    )
    issued = current_license(settings, key, INSTALLATION, NOW)
    parsed = parse_license(issued.to_json(), pinned_key=bytes(key.verify_key))
    assert parsed.name == "fleet"
    assert parsed.dashboard_url == "https://dash.example:8443"
    assert parsed.base_servers == ["198.18.0.1:5582", "[fd00:98::1]:443"]
    assert parsed.websetup_port == 5591
    assert parsed.max_devices == 42
    assert parsed.issued == NOW.replace(microsecond=0)
    assert parsed.valid_until == NOW.replace(microsecond=0) + timedelta(days=30)


def test_no_license_without_a_websetup_address(tmp_path: Path) -> None:
    key = load_or_create_license_key(tmp_path)
    with pytest.raises(LicenseError, match="--websetup-address"):
        current_license(DashboardSettings(data_dir=tmp_path), key, INSTALLATION, NOW)
