"""The managed block of a hosts file: overlay hostnames that husarnet-ros keeps up to date.

Pure text in, text out; the privileged hosts helper does the file I/O. The block looks like::

    # BEGIN husarnet-ros managed block - do not edit
    fc94:1:2:3:4:5:6:7 robot1
    # END husarnet-ros

Rules, chosen so that a user's own lines are never lost or altered:

- Lines are split on ``\\n`` only; each keeps its own terminator (``\\n``, ``\\r\\n`` or none on
  the last line), so every line outside the block is written back byte for byte.
- A *complete* block is a BEGIN marker whose next marker line is an END marker. Everything from
  the BEGIN line to that END line belongs to us and is replaced on every write; lines inside
  it that are not entries (a user's edit despite the warning) are dropped.
- Several complete blocks (e.g. two tools raced, or a file was concatenated): all are removed
  and the single new block goes where the first one was. ``parse_managed`` reads all of them.
- A BEGIN not followed by an END before the next BEGIN or the end of the file (unterminated),
  or an END outside any block (stray): only the marker line itself is removed. The lines
  after an unterminated BEGIN are kept as ordinary user lines because nothing says where our
  part would have ended - better a visible stale line than a deleted user line.
  ``parse_managed`` reads no entries from them.
- No block yet: the new block is appended at the end of the file. If the file did not end
  with a newline, its last line gets one and the block is written *without* a final newline;
  that asymmetry records the fact, so removing the block (no entries) restores the file
  exactly as it was.
- An empty entry list removes the block entirely.
- The block's own lines always end in LF (the Linux convention), whatever the user's lines
  use, so the output depends only on the user's lines and the entries.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .address import format_address, is_overlay, parse_overlay
from .errors import AddressError, ConfigError

BEGIN_MARKER = "# BEGIN husarnet-ros managed block - do not edit"
END_MARKER = "# END husarnet-ros"
# Markers are recognised by prefix so a marker whose tail was edited (or re-encoded) still counts.
_BEGIN_PREFIX = "# BEGIN husarnet-ros"
_END_PREFIX = "# END husarnet-ros"

MAX_HOSTNAME_LENGTH = 253  # RFC 1035 limit on a name in text form (no trailing dot)
MAX_LABEL_LENGTH = 63
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
# Names that must keep resolving to loopback; pointing them at a peer would break the machine.
_RESERVED_NAMES = ("localhost",)


class HostnameError(ConfigError, ValueError):
    """A hostname that is not a valid RFC 1123 name (the message says which rule it breaks)."""


class HostsEntryError(ConfigError, ValueError):
    """A set of host entries that cannot be written (e.g. one name with two addresses)."""


def normalize_hostname(name: str) -> str:
    """Lowercase ``name`` and check it against RFC 1123; raise HostnameError if it is not valid."""
    if not isinstance(name, str):
        raise HostnameError(f"a hostname must be text, not {type(name).__name__}")
    lowered = name.strip().lower()
    if not lowered:
        raise HostnameError("a hostname must not be empty")
    if len(lowered) > MAX_HOSTNAME_LENGTH:
        raise HostnameError(
            f"hostname {name!r} is {len(lowered)} characters long, at most {MAX_HOSTNAME_LENGTH} are allowed"
        )
    if lowered.endswith("."):
        raise HostnameError(f"hostname {name!r} must not end with a dot")
    for label in lowered.split("."):
        if not label:
            raise HostnameError(f"hostname {name!r} has an empty label (two dots in a row or a leading dot)")
        if len(label) > MAX_LABEL_LENGTH:
            raise HostnameError(
                f"hostname {name!r}: label {label!r} is {len(label)} characters long, "
                f"at most {MAX_LABEL_LENGTH} are allowed"
            )
        if not _LABEL_RE.fullmatch(label):
            raise HostnameError(
                f"hostname {name!r}: label {label!r} may contain only letters a-z, digits and '-', "
                "and must not start or end with '-'"
            )
    if _looks_like_ip_address(lowered):
        raise HostnameError(f"hostname {name!r} looks like an IP address")
    for reserved in _RESERVED_NAMES:
        if lowered == reserved or lowered.endswith("." + reserved):
            raise HostnameError(f"hostname {name!r} is reserved for the local machine")
    return lowered


def _looks_like_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, order=True)
class HostEntry:
    """One name -> overlay address mapping. The hostname is normalised (lowercase) on creation.

    ``address`` is the 16-byte overlay address; use ``HostEntry.from_text`` for text input.
    Ordering (hostname, then address) is the order entries are written in.
    """

    hostname: str
    address: bytes

    def __post_init__(self) -> None:
        # Frozen dataclass: normalising in place needs object.__setattr__.
        object.__setattr__(self, "hostname", normalize_hostname(self.hostname))
        if not isinstance(self.address, bytes) or not is_overlay(self.address):
            raise AddressError(
                f"host entry {self.hostname!r}: the address must be a 16-byte overlay address in fc94::/16"
            )

    @classmethod
    def from_text(cls, hostname: str, address: str) -> HostEntry:
        """Entry from a hostname and an address written as text (AddressError / HostnameError)."""
        return cls(hostname, parse_overlay(address))

    @property
    def address_text(self) -> str:
        return format_address(self.address)

    def to_json(self) -> dict[str, str]:
        return {"hostname": self.hostname, "address": self.address_text}

    @classmethod
    def from_json(cls, obj: object) -> HostEntry:
        """Entry from ``{"hostname": ..., "address": ...}``; ConfigError (or a subclass) if malformed."""
        if not isinstance(obj, dict):
            raise HostsEntryError(
                f"a host entry must be an object with hostname and address, not {obj!r:.60}"
            )
        unknown = set(obj) - {"hostname", "address"}
        if unknown:
            raise HostsEntryError(f"host entry has unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        hostname, address = obj.get("hostname"), obj.get("address")
        if not isinstance(hostname, str) or not isinstance(address, str):
            raise HostsEntryError("a host entry needs 'hostname' and 'address', both strings")
        try:
            return cls.from_text(hostname, address)
        except AddressError as exc:
            raise HostsEntryError(f"host entry {hostname!r}: {exc}") from None


def canonical_entries(entries: Iterable[HostEntry]) -> list[HostEntry]:
    """Deduplicate and sort ``entries``; HostsEntryError if one hostname maps to two addresses.

    Several names for one address are fine (aliases); one name with two addresses is ambiguous.
    """
    by_name: dict[str, HostEntry] = {}
    for entry in entries:
        if not isinstance(entry, HostEntry):
            raise HostsEntryError(f"expected a HostEntry, got {type(entry).__name__}")
        existing = by_name.get(entry.hostname)
        if existing is not None and existing.address != entry.address:
            raise HostsEntryError(
                f"hostname {entry.hostname!r} is given two addresses: "
                f"{existing.address_text} and {entry.address_text}"
            )
        by_name[entry.hostname] = entry
    return sorted(by_name.values())


# --- text handling ---------------------------------------------------------------------------


def _split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only (str.splitlines also splits on \\x0b, \\u2028, ...), keeping terminators."""
    lines = text.split("\n")
    result = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        result.append(lines[-1])
    return result


def _content(line: str) -> str:
    return line.strip()  # also drops the terminator, \r included


def _is_begin(line: str) -> bool:
    return _content(line).startswith(_BEGIN_PREFIX)


def _is_end(line: str) -> bool:
    return _content(line).startswith(_END_PREFIX)


@dataclass
class _Scan:
    user_lines: list[str]  # every line that is not ours, in order
    block_at: int | None  # index into user_lines where the first complete block was
    block_bodies: list[list[str]]  # the lines between BEGIN and END of every complete block
    block_was_last_without_newline: bool  # the last complete block ended the file with no newline


def _scan(text: str) -> _Scan:
    lines = _split_lines(text)
    kinds = ["begin" if _is_begin(line) else "end" if _is_end(line) else "" for line in lines]
    # next_marker[i]: index of the first marker line after line i (linear time, however many markers).
    next_marker: list[int | None] = [None] * len(lines)
    following: int | None = None
    for i in range(len(lines) - 1, -1, -1):
        next_marker[i] = following
        if kinds[i]:
            following = i
    user: list[str] = []
    bodies: list[list[str]] = []
    block_at: int | None = None
    last_without_newline = False
    i = 0
    while i < len(lines):
        if kinds[i] == "begin":
            # The block runs to the next marker, which must be an END; a BEGIN followed by another
            # BEGIN (or by nothing) is unterminated, so an END pairs with the nearest BEGIN only.
            end = next_marker[i]
            if end is None or kinds[end] != "end":
                i += 1  # unterminated: drop only the marker, keep what follows as user lines
                continue
            if block_at is None:
                block_at = len(user)
            bodies.append(lines[i + 1 : end])
            last_without_newline = end == len(lines) - 1 and not lines[end].endswith("\n")
            i = end + 1
            continue
        if kinds[i] == "end":
            i += 1  # stray END marker
            continue
        user.append(lines[i])
        i += 1
    return _Scan(user, block_at, bodies, last_without_newline)


def _parse_entry_line(line: str) -> list[HostEntry]:
    body = line.split("#", 1)[0].split()
    if len(body) < 2:
        return []
    try:
        address = parse_overlay(body[0])
        return [HostEntry(name, address) for name in body[1:]]
    except (AddressError, HostnameError):
        return []


def parse_managed(text: str) -> list[HostEntry]:
    """The entries in the managed block(s) of ``text``, canonical order; lines that are not valid
    entries are ignored. A name given two addresses keeps the first one seen."""
    found: dict[str, HostEntry] = {}
    for body in _scan(text).block_bodies:
        for line in body:
            for entry in _parse_entry_line(line):
                found.setdefault(entry.hostname, entry)
    return sorted(found.values())


def render_block(entries: Iterable[HostEntry]) -> str:
    """The managed block for ``entries`` (canonical order), every line ending in LF."""
    body = [f"{entry.address_text} {entry.hostname}" for entry in canonical_entries(entries)]
    return "".join(line + "\n" for line in [BEGIN_MARKER, *body, END_MARKER])


def render(text: str, entries: Iterable[HostEntry]) -> str:
    """``text`` with its managed block replaced by one holding ``entries`` (see the module doc).

    Raises HostsEntryError / HostnameError / AddressError if the entries are invalid; ``text``
    itself is never rejected.
    """
    wanted = canonical_entries(entries)
    scan = _scan(text)
    user = list(scan.user_lines)
    if not wanted:
        block_was_at_end = scan.block_at is not None and scan.block_at == len(user)
        if block_was_at_end and scan.block_was_last_without_newline and user and user[-1] != "\n":
            # The block was appended to a file without a final newline: take that newline back.
            # (We only ever add one to a non-empty line, so a bare "\n" line is the user's own.)
            user[-1] = user[-1].removesuffix("\n")
        return "".join(user)

    block = render_block(wanted)
    at = scan.block_at if scan.block_at is not None else len(user)
    at_end = at == len(user)
    if at_end and user and not user[-1].endswith("\n"):
        # Appending after a last line without newline: that line needs one, and the block
        # records the fact by leaving out its own final newline (see module doc).
        user[-1] += "\n"
        block = block.removesuffix("\n")
    elif at_end and scan.block_at is not None and scan.block_was_last_without_newline:
        block = block.removesuffix("\n")
    return "".join(user[:at]) + block + "".join(user[at:])
