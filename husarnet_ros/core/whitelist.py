"""The whitelist: which overlay addresses may talk to this node.

Consulted for every packet, so ``allows`` is a single set lookup. The address set is an
immutable frozenset replaced as a whole on every change (copy on write): changes are rare, and
a data-plane thread reading it while the control thread edits always sees one consistent set,
without a lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from .address import format_address, is_overlay, parse_overlay
from .errors import AddressError, ConfigError

JSON_FORMAT_VERSION = 1


class WhitelistError(ConfigError, ValueError):
    """A whitelist document or address that cannot be used (the message says what is wrong)."""


def _check_address(address: bytes) -> bytes:
    if not isinstance(address, bytes) or not is_overlay(address):
        raise AddressError(
            f"whitelist entries must be 16-byte overlay addresses in fc94::/16, got {address!r}"
        )
    return address


class Whitelist:
    """Enabled flag (default on) plus a set of 16-byte overlay addresses.

    When disabled, ``allows`` is True for everyone; the addresses are kept, so enabling it
    again restores the previous list.
    """

    __slots__ = ("_addresses", "enabled")

    def __init__(self, addresses: Iterable[bytes] = (), enabled: bool = True) -> None:
        self.enabled: bool = bool(enabled)
        self._addresses: frozenset[bytes] = frozenset(_check_address(a) for a in addresses)

    # -- hot path --------------------------------------------------------------------------

    def allows(self, address: bytes) -> bool:
        """May a packet from/to ``address`` pass? One attribute read and one set lookup."""
        return not self.enabled or address in self._addresses

    # -- editing ---------------------------------------------------------------------------

    def add(self, address: bytes) -> bool:
        """Add ``address``; True if it was not there before. AddressError if not an overlay address."""
        _check_address(address)
        if address in self._addresses:
            return False
        self._addresses = self._addresses | {address}
        return True

    def remove(self, address: bytes) -> bool:
        """Remove ``address``; True if it was there."""
        if address not in self._addresses:
            return False
        self._addresses = self._addresses - {address}
        return True

    def replace(self, addresses: Iterable[bytes]) -> None:
        """Set the whole list at once (e.g. from the Dashboard); all-or-nothing on bad input."""
        self._addresses = frozenset(_check_address(a) for a in addresses)

    @property
    def addresses(self) -> frozenset[bytes]:
        return self._addresses

    def __contains__(self, address: object) -> bool:
        return address in self._addresses

    def __len__(self) -> int:
        return len(self._addresses)

    def __iter__(self) -> Iterator[bytes]:
        """Addresses in sorted (byte) order, so listings are stable."""
        return iter(sorted(self._addresses))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Whitelist):
            return NotImplemented
        return self.enabled == other.enabled and self._addresses == other._addresses

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shown = ", ".join(format_address(a) for a in self)
        return f"Whitelist(enabled={self.enabled}, addresses=[{shown}])"

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_FORMAT_VERSION,
            "enabled": self.enabled,
            "addresses": [format_address(a) for a in self],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, obj: object) -> Whitelist:
        """Whitelist from its JSON form; WhitelistError naming the problem if it is malformed."""
        if not isinstance(obj, dict):
            raise WhitelistError(f"a whitelist must be a JSON object, not {type(obj).__name__}")
        unknown = set(obj) - {"version", "enabled", "addresses"}
        if unknown:
            raise WhitelistError(f"whitelist has unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        version = obj.get("version", JSON_FORMAT_VERSION)
        if version != JSON_FORMAT_VERSION:
            raise WhitelistError(
                f"whitelist format version {version!r} is not supported (expected {JSON_FORMAT_VERSION})"
            )
        enabled = obj.get("enabled", True)
        if not isinstance(enabled, bool):
            raise WhitelistError(f"whitelist 'enabled' must be true or false, not {enabled!r:.60}")
        raw_addresses = obj.get("addresses", [])
        if not isinstance(raw_addresses, list):
            raise WhitelistError("whitelist 'addresses' must be a list of overlay addresses")
        addresses = []
        for index, text in enumerate(raw_addresses):
            if not isinstance(text, str):
                raise WhitelistError(f"whitelist address #{index + 1} must be a string, not {text!r:.60}")
            try:
                addresses.append(parse_overlay(text))
            except AddressError as exc:
                raise WhitelistError(f"whitelist address #{index + 1}: {exc}") from None
        return cls(addresses, enabled=enabled)

    @classmethod
    def loads(cls, text: str) -> Whitelist:
        """Parse the JSON text written by ``dumps``; WhitelistError if it is not valid."""
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise WhitelistError(f"whitelist is not valid JSON: {exc}") from None
        return cls.from_json(obj)
