"""Whitelist: membership, the enabled switch, and JSON that rejects anything malformed."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from husarnet_ros.core.errors import AddressError, ConfigError
from husarnet_ros.core.whitelist import Whitelist, WhitelistError

A1 = bytes.fromhex("fc94" + "11" * 14)
A2 = bytes.fromhex("fc94" + "22" * 14)
A3 = bytes.fromhex("fc94" + "33" * 14)
A1_TEXT = "fc94:1111:1111:1111:1111:1111:1111:1111"
A2_TEXT = "fc94:2222:2222:2222:2222:2222:2222:2222"

overlay_addresses = st.binary(min_size=14, max_size=14).map(lambda tail: b"\xfc\x94" + tail)


def test_default_is_enabled_and_empty() -> None:
    wl = Whitelist()
    assert wl.enabled
    assert len(wl) == 0
    assert not wl.allows(A1)


def test_allows_only_listed_when_enabled() -> None:
    wl = Whitelist([A1])
    assert wl.allows(A1)
    assert not wl.allows(A2)
    assert not wl.allows(b"")
    assert not wl.allows(b"\x00" * 16)


def test_disabled_allows_everything_and_keeps_list() -> None:
    wl = Whitelist([A1], enabled=False)
    assert wl.allows(A2)
    assert wl.allows(b"\x00" * 16)
    wl.enabled = True
    assert wl.allows(A1)
    assert not wl.allows(A2)


def test_add_and_remove_report_changes() -> None:
    wl = Whitelist()
    assert wl.add(A1) is True
    assert wl.add(A1) is False
    assert wl.allows(A1)
    assert A1 in wl
    assert wl.remove(A1) is True
    assert wl.remove(A1) is False
    assert not wl.allows(A1)


@pytest.mark.parametrize("bad", [b"\x00" * 16, A1[:15], A1 + b"\x00", "fc94::1", bytearray(A1)])
def test_add_rejects_non_overlay(bad: object) -> None:
    wl = Whitelist()
    with pytest.raises(AddressError, match="overlay"):
        wl.add(bad)  # type: ignore[arg-type]
    assert len(wl) == 0


def test_constructor_rejects_non_overlay() -> None:
    with pytest.raises(AddressError):
        Whitelist([A1, b"\x00" * 16])


def test_replace_is_all_or_nothing() -> None:
    wl = Whitelist([A1])
    with pytest.raises(AddressError):
        wl.replace([A2, b"bad"])
    assert list(wl) == [A1]
    wl.replace([A3, A2])
    assert list(wl) == [A2, A3]


def test_snapshot_taken_before_a_change_is_unaffected() -> None:
    # Copy on write: a reader holding the old set never sees it change under it.
    wl = Whitelist([A1])
    snapshot = wl.addresses
    wl.add(A2)
    wl.remove(A1)
    assert snapshot == frozenset({A1})
    assert wl.addresses == frozenset({A2})


def test_iteration_is_sorted() -> None:
    assert list(Whitelist([A3, A1, A2])) == [A1, A2, A3]


def test_equality_and_repr() -> None:
    assert Whitelist([A1]) == Whitelist([A1])
    assert Whitelist([A1]) != Whitelist([A1], enabled=False)
    assert Whitelist([A1]) != Whitelist([A2])
    assert A1_TEXT in repr(Whitelist([A1]))


def test_json_round_trip() -> None:
    wl = Whitelist([A2, A1], enabled=False)
    assert wl.to_json() == {"version": 1, "enabled": False, "addresses": [A1_TEXT, A2_TEXT]}
    assert Whitelist.loads(wl.dumps()) == wl
    assert wl.dumps().endswith("\n")


def test_json_defaults_for_missing_fields() -> None:
    assert Whitelist.from_json({}) == Whitelist()


def test_json_addresses_are_normalised() -> None:
    wl = Whitelist.from_json({"addresses": [A1_TEXT.upper(), " fc94:2222:2222:2222:2222:2222:2222:2222 "]})
    assert list(wl) == [A1, A2]


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([], "JSON object"),
        ("x", "JSON object"),
        ({"enabled": "yes"}, "'enabled' must be true or false"),
        ({"enabled": 1}, "'enabled' must be true or false"),
        ({"addresses": A1_TEXT}, "must be a list"),
        ({"addresses": [1]}, "#1 must be a string"),
        ({"addresses": [A1_TEXT, "10.0.0.1"]}, "#2.*not an IPv6"),
        ({"addresses": ["fd00::1"]}, "#1.*overlay"),
        ({"version": 2}, "version 2 is not supported"),
        ({"enabled": True, "extra": 1}, "unknown field.*extra"),
    ],
)
def test_json_errors(obj: object, fragment: str) -> None:
    with pytest.raises(WhitelistError, match=fragment):
        Whitelist.from_json(obj)


@pytest.mark.parametrize("text", ["", "{", "nul", "[" * 100_000])
def test_loads_rejects_bad_json(text: str) -> None:
    with pytest.raises(WhitelistError):
        Whitelist.loads(text)


def test_whitelist_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Whitelist.loads("{}x")


@given(st.sets(overlay_addresses, max_size=20), st.booleans())
def test_json_round_trip_property(addresses: set[bytes], enabled: bool) -> None:
    wl = Whitelist(addresses, enabled=enabled)
    assert Whitelist.loads(wl.dumps()) == wl
    assert Whitelist.from_json(json.loads(json.dumps(wl.to_json()))) == wl


@given(st.sets(overlay_addresses, max_size=20), overlay_addresses)
def test_allows_matches_membership(addresses: set[bytes], probe: bytes) -> None:
    wl = Whitelist(addresses)
    assert wl.allows(probe) == (probe in addresses)
    wl.enabled = False
    assert wl.allows(probe)


@given(st.text(max_size=200))
def test_loads_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(WhitelistError):
        Whitelist.loads(text)
