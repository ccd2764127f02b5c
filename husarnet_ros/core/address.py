"""Overlay addresses: 16-byte IPv6 addresses inside fc94::/16."""

from __future__ import annotations

import ipaddress

from .constants import OVERLAY_PREFIX
from .errors import AddressError


def is_overlay(raw: bytes) -> bool:
    """True if ``raw`` is 16 bytes inside fc94::/16."""
    return len(raw) == 16 and raw[:2] == OVERLAY_PREFIX


def parse_overlay(text: str) -> bytes:
    """Parse an overlay address written as text; raise AddressError with a usable message."""
    try:
        addr = ipaddress.IPv6Address(text.strip())
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise AddressError(f"{text!r} is not an IPv6 address: {exc}") from None
    raw = addr.packed
    if not is_overlay(raw):
        raise AddressError(f"{text!r} is not an overlay address (must be inside fc94::/16)")
    return raw


def format_address(raw: bytes) -> str:
    """Compressed text form of a 16-byte address."""
    if len(raw) != 16:
        raise AddressError(f"an IPv6 address has 16 bytes, not {len(raw)}")
    return str(ipaddress.IPv6Address(raw))
