"""The control plane's state files (license.json, managed.json: damaged, partial, atomic) and the parsing of
`setup-server ADDR`."""

from __future__ import annotations

import errno
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from husarnet_ros import fileio
from husarnet_ros.core.license import License, issue_license
from husarnet_ros.core.websetup import DeviceConfig, HostRecord
from husarnet_ros.daemon.controller import BadValue
from husarnet_ros.daemon.license_fetch import license_url
from husarnet_ros.daemon.state import StateDir, StateError

INSTALLATION = "0b8f5a52-7d1e-4c3a-9f0e-5a2b6c8d9e10"


def make_license() -> License:
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    return issue_license(
        SigningKey(bytes(range(32))),
        installation_id=INSTALLATION,
        name="Acme robots",
        dashboard_url="http://198.18.0.10:8080",
        base_servers=["198.18.0.10:5582"],
        websetup_address="fc94::5e7",
        max_devices=10,
        issued=now,
        valid_until=now + timedelta(days=365),
    )


CONFIG = DeviceConfig(
    revision=4,
    hostname="robot1",
    whitelist=["fc94::2", "fc94::3"],
    hosts=[HostRecord(hostname="robot2", address="fc94::2")],
)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


def test_nothing_saved_is_none(state: StateDir) -> None:
    assert state.load_license() is None
    assert state.load_managed() is None
    state.forget_managed()  # removing what is not there is fine


def test_license_and_managed_round_trip_with_mode_0600_and_no_temporary_file_left(state: StateDir) -> None:
    license_ = make_license()
    state.save_license(license_)
    state.save_managed(INSTALLATION, CONFIG)
    loaded = state.load_license()
    assert loaded is not None
    assert loaded.to_json() == license_.to_json()
    assert state.load_managed() == (INSTALLATION, CONFIG)
    for path in (state.license_path, state.managed_path):
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert sorted(p.name for p in state.path.iterdir()) == ["license.json", "managed.json"]
    state.forget_managed()
    assert state.load_managed() is None


def test_a_license_altered_on_disk_is_refused_naming_the_file(state: StateDir) -> None:
    document = json.loads(make_license().to_json())
    document["base_servers"] = ["203.0.113.66:5582"]  # someone edited it: the signature no longer holds
    state.license_path.write_text(json.dumps(document))
    with pytest.raises(StateError) as caught:
        state.load_license()
    message = str(caught.value)
    assert str(state.license_path) in message
    assert "signature does not verify" in message
    assert "setup-server" in message
    assert state.license_path.read_text() == json.dumps(document)  # left untouched


@pytest.mark.parametrize(
    "text",
    [
        make_license().to_json()[:40],  # cut short (a partial write by something other than the daemon)
        "",
        "\xff",
    ],
)
def test_a_partial_or_empty_license_file_is_a_clear_error(state: StateDir, text: str) -> None:
    state.license_path.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff" else b"\xff")
    with pytest.raises(StateError, match="damaged"):
        state.load_license()


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ('{"version": 1, "installation_id": "x", "config": {"revision": 1', "damaged"),
        ('{"version": 2, "installation_id": "x", "config": {}}', "format version 2"),
        ('{"version": 1, "installation_id": "x", "config": {}, "extra": 1}', "unknown field"),
        ('{"version": 1, "installation_id": "", "config": {}}', "installation_id"),
        (
            '{"version": 1, "installation_id": "x", "config": {"revision": 1, "hostname": "r", '
            '"whitelist": ["2001:db8::1"], "hosts": []}}',
            "config: whitelist",
        ),
        ("[]", "expected a JSON object"),
    ],
)
def test_a_damaged_managed_file_says_which_file_and_what_is_wrong(
    state: StateDir, document: str, problem: str
) -> None:
    state.managed_path.write_text(document)
    with pytest.raises(StateError) as caught:
        state.load_managed()
    assert str(state.managed_path) in str(caught.value)
    assert problem in str(caught.value)
    assert "left untouched" in str(caught.value)


def test_a_failed_write_leaves_the_previous_file_whole_and_says_what_to_do(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    state.save_managed(INSTALLATION, CONFIG)
    before = state.managed_path.read_text()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", disk_full)  # the new file is written, not yet renamed
    with pytest.raises(StateError, match="file system is full"):
        state.save_managed(INSTALLATION, CONFIG.model_copy(update={"revision": 5}))
    monkeypatch.undo()
    assert state.managed_path.read_text() == before
    assert sorted(p.name for p in state.path.iterdir()) == ["managed.json"]


# --- setup-server ADDR --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("198.18.0.10", "http://198.18.0.10/license.json"),
        ("198.18.0.10:8080", "http://198.18.0.10:8080/license.json"),
        ("dashboard.lan", "http://dashboard.lan/license.json"),
        ("http://dashboard.lan:8080/", "http://dashboard.lan:8080/license.json"),
        ("dashboard.lan/license.json", "http://dashboard.lan/license.json"),
        ("[fd00:98::10]:8080", "http://[fd00:98::10]:8080/license.json"),
        ("fd00:98::10", "http://[fd00:98::10]/license.json"),
        (" 198.18.0.10 ", "http://198.18.0.10/license.json"),
    ],
)
def test_server_addresses_become_the_license_url(typed: str, url: str) -> None:
    assert license_url(typed) == url


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "not a server address"),
        ("https://x/y/z", "not a server address"),
        ("user@host", "not a server address"),
        ("host:0", "port must be a number"),
        ("host:http", "port must be a number"),
        ("[fd00:98::10", "in brackets"),
        ("[not-v6]:80", "not an IPv6 address"),
        ("bad host", "not a host name"),
        ("fd00:98::zz", "not an IPv6 address"),
    ],
)
def test_bad_server_addresses_say_what_is_wrong(typed: str, message: str) -> None:
    with pytest.raises(BadValue, match=message):
        license_url(typed)
