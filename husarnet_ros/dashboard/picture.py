"""The network picture: one network drawn as SVG, from what its devices' daemons report.

A pure function of its input (no database, no clock unless given one): the Dashboard's UI and API feed it
``PictureDevice`` and ``LinkObservation`` values and serve the text it returns. Devices sit on a circle in
hostname order, so the same network always looks the same and a device keeps its place when another joins
behind it in the alphabet. Each link is drawn once although both of its ends report it: the fresher report
wins, and when the ends disagree on the path the link says so instead of hiding one of them.

Every string that reaches the SVG (hostnames, base servers, the title) comes from devices or accounts, so it
is escaped as XML text and characters XML cannot carry are replaced: a hostname can never add markup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv6Address
from typing import Literal
from xml.sax.saxutils import escape as _escape_text

LinkPath = Literal["direct", "tunnelled", "down"]

# Reports come every 30 s (docs/CONTROL_PLANE.md); one older than four intervals describes a link that may be
# gone, so it is left out when the caller gives the time.
STALE_REPORT_S = 120.0
# Space each device gets along the circle, and the smallest circle (a few devices are not drawn in a corner).
NODE_SPACING = 64.0
MIN_RADIUS = 120.0
NODE_RADIUS = 14.0
MARGIN = 170.0
LEGEND_HEIGHT = 80.0
# Up to this many devices labels are horizontal beside their node; beyond it they point away from the centre
# so neighbours' labels do not overlap.
HORIZONTAL_LABELS_UP_TO = 16
# Beyond this many links the RTT labels on the lines would be unreadable: they stay in each link's tooltip.
LINK_LABELS_UP_TO = 120
MAX_LABEL_CHARS = 40

COLOURS = {
    "online": "#2e9d4f",
    "offline": "#9aa0a6",
    "direct": "#1f5fbf",
    "tunnelled": "#7b3fbf",
    "down": "#c5c8cc",
    "disagree": "#d9822b",
}


@dataclass(frozen=True)
class PictureDevice:
    """A device of the network: its canonical fc94 address, its hostname, whether Websetup saw it lately."""

    address: str
    hostname: str
    online: bool


@dataclass(frozen=True)
class LinkObservation:
    """What one device (``reporter``) last said about its link to ``peer`` (``core.websetup.PeerLink``)."""

    reporter: str
    peer: str
    path: LinkPath
    reported_at: datetime
    base_server: str | None = None
    rtt_ms: float | None = None


@dataclass(frozen=True)
class NetworkLink:
    """One link of the picture: ``ends`` sorted, the values of the fresher report, and the other end's path
    when it disagrees (``None`` when the ends agree or only one reported)."""

    ends: tuple[str, str]
    path: LinkPath
    reported_at: datetime
    reported_by: str
    base_server: str | None
    rtt_ms: float | None
    other_path: LinkPath | None = None

    @property
    def disagree(self) -> bool:
        return self.other_path is not None


def merge_links(
    devices: Iterable[PictureDevice],
    observations: Iterable[LinkObservation],
    now: datetime | None = None,
) -> list[NetworkLink]:
    """Each pair of the network's devices that a report mentions, once, sorted by its ends.

    Reports about devices outside ``devices`` (a device is often in several networks) and about the reporter
    itself are ignored; with ``now``, so are reports older than ``STALE_REPORT_S``. Per end only its latest
    report counts; of the two ends the fresher one gives the link's path, RTT and base server."""
    members = {device.address for device in devices}
    latest: dict[tuple[str, str], LinkObservation] = {}
    for item in observations:
        if item.reporter == item.peer or item.reporter not in members or item.peer not in members:
            continue
        if now is not None and (now - item.reported_at).total_seconds() > STALE_REPORT_S:
            continue
        key = (item.reporter, item.peer)
        known = latest.get(key)
        if known is None or _fresher(item, known):
            latest[key] = item
    by_pair: dict[tuple[str, str], list[LinkObservation]] = {}
    for (reporter, peer), item in latest.items():
        pair = (reporter, peer) if reporter < peer else (peer, reporter)
        by_pair.setdefault(pair, []).append(item)
    links = []
    for pair in sorted(by_pair):
        reports = sorted(by_pair[pair], key=lambda item: (item.reported_at, item.reporter), reverse=True)
        best = reports[0]
        other = reports[1].path if len(reports) > 1 and reports[1].path != best.path else None
        links.append(
            NetworkLink(
                pair, best.path, best.reported_at, best.reporter, best.base_server, best.rtt_ms, other
            )
        )
    return links


def _fresher(item: LinkObservation, than: LinkObservation) -> bool:
    # Equal times (one report listed twice) are ordered by content, so the input's order never shows.
    return _order(item) > _order(than)


def _order(item: LinkObservation) -> tuple[datetime, str, float, str]:
    return (item.reported_at, item.path, -1.0 if item.rtt_ms is None else item.rtt_ms, item.base_server or "")


def draw_network(
    devices: Sequence[PictureDevice],
    observations: Iterable[LinkObservation],
    title: str = "",
    now: datetime | None = None,
) -> str:
    """The network as a standalone SVG document (text). Deterministic: the same input gives the same bytes."""
    ordered = sorted(devices, key=lambda device: (device.hostname, device.address))
    links = merge_links(ordered, observations, now)
    layout = _Layout.for_count(len(ordered))
    places = {device.address: layout.place(index) for index, device in enumerate(ordered)}
    names = {device.address: device.hostname for device in ordered}
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{layout.size:.0f}" height="{layout.height:.0f}" '
        f'viewBox="0 0 {layout.size:.0f} {layout.height:.0f}" font-family="sans-serif" font-size="12">',
        f"<title>{_text(title or 'network')}</title>",
        _legend(title),
    ]
    if not ordered:
        parts.append(
            f'<text class="empty" x="{layout.size / 2:.1f}" y="{layout.height / 2:.1f}" text-anchor="middle">'
            "No devices in this network yet: claim one with a join code.</text>"
        )
    parts.append('<g class="links">')
    show_labels = len(links) <= LINK_LABELS_UP_TO
    parts.extend(_link(link, places, names, show_labels) for link in links)
    parts.append("</g>")
    parts.append('<g class="devices">')
    parts.extend(
        _device(device, places[device.address], layout, index) for index, device in enumerate(ordered)
    )
    parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class _Layout:
    count: int
    radius: float

    @classmethod
    def for_count(cls, count: int) -> _Layout:
        # The circle grows with the device count so neighbours stay NODE_SPACING apart (200 devices: ~2000 px;
        # the UI scales the drawing through its viewBox).
        return cls(count, max(MIN_RADIUS, count * NODE_SPACING / (2 * math.pi)))

    @property
    def size(self) -> float:
        return 2 * (self.radius + MARGIN)

    @property
    def height(self) -> float:
        return self.size + LEGEND_HEIGHT

    def angle(self, index: int) -> float:
        # The first device at the top, then clockwise.
        return -math.pi / 2 + 2 * math.pi * index / max(self.count, 1)

    def place(self, index: int) -> tuple[float, float]:
        if self.count == 1:
            return self.size / 2, LEGEND_HEIGHT + self.size / 2
        angle = self.angle(index)
        centre = self.size / 2
        return centre + self.radius * math.cos(angle), LEGEND_HEIGHT + centre + self.radius * math.sin(angle)


def _legend(title: str) -> str:
    items = [
        (f'<line x1="10" y1="40" x2="40" y2="40" stroke="{COLOURS["direct"]}" stroke-width="2"/>', "direct"),
        (
            f'<line x1="10" y1="40" x2="40" y2="40" stroke="{COLOURS["tunnelled"]}" stroke-width="2" '
            'stroke-dasharray="6 4"/>',
            "tunnelled (via base server)",
        ),
        (f'<line x1="10" y1="40" x2="40" y2="40" stroke="{COLOURS["down"]}" stroke-width="1"/>', "down"),
        (
            f'<line x1="10" y1="40" x2="40" y2="40" stroke="{COLOURS["disagree"]}" stroke-width="2"/>',
            "ends disagree",
        ),
        (f'<circle cx="25" cy="40" r="6" fill="{COLOURS["online"]}"/>', "online"),
        (f'<circle cx="25" cy="40" r="6" fill="{COLOURS["offline"]}"/>', "offline"),
    ]
    parts = ['<g class="legend">']
    if title:
        parts.append(
            f'<text x="10" y="20" font-size="16" font-weight="bold">{_text(_shorten(title, 80))}</text>'
        )
    for index, (symbol, label) in enumerate(items):
        row, column = divmod(index, 3)
        parts.append(
            f'<g transform="translate({column * 220} {row * 20})">{symbol}'
            f'<text x="46" y="44">{label}</text></g>'
        )
    parts.append("</g>")
    return "".join(parts)


def _link(
    link: NetworkLink,
    places: dict[str, tuple[float, float]],
    names: dict[str, str],
    show_label: bool,
) -> str:
    (x1, y1), (x2, y2) = places[link.ends[0]], places[link.ends[1]]
    classes = ["link", link.path]
    colour = COLOURS[link.path]
    width = 1 if link.path == "down" else 2
    dash = ' stroke-dasharray="6 4"' if link.path == "tunnelled" else ""
    if link.disagree:
        classes.append("disagree")
        colour = COLOURS["disagree"]
    description = _describe_link(link, names)
    label = ""
    if show_label and link.path != "down":
        words = []
        if link.rtt_ms is not None:
            words.append(_rtt(link.rtt_ms))
        if link.path == "tunnelled" and link.base_server:
            words.append(f"via {_shorten(link.base_server, MAX_LABEL_CHARS)}")
        if link.disagree:
            words.append("(ends disagree)")
        if words:
            label = (
                f'<text class="link-label" x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 - 4:.1f}" '
                f'text-anchor="middle" font-size="10" stroke="#ffffff" stroke-width="3" paint-order="stroke">'
                f"{_text(' '.join(words))}</text>"
            )
    return (
        f'<g class="{" ".join(classes)}"><title>{_text(description)}</title>'
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
        f'stroke-width="{width}"{dash}/>{label}</g>'
    )


def _describe_link(link: NetworkLink, names: dict[str, str]) -> str:
    first, second = (names[end] for end in link.ends)
    text = f"{first} - {second}: {link.path}"
    if link.path == "tunnelled" and link.base_server:
        text += f" via {link.base_server}"
    if link.rtt_ms is not None:
        text += f", RTT {_rtt(link.rtt_ms)}"
    if link.other_path is not None:
        other = link.ends[1] if link.reported_by == link.ends[0] else link.ends[0]
        text += (
            f"; the ends disagree: {names[link.reported_by]} (fresher) reports {link.path}, "
            f"{names[other]} reports {link.other_path}"
        )
    return text


def _device(device: PictureDevice, place: tuple[float, float], layout: _Layout, index: int) -> str:
    x, y = place
    state = "online" if device.online else "offline"
    tail = address_tail(device.address)
    name = _shorten(device.hostname, MAX_LABEL_CHARS)
    parts = [
        f'<g class="device {state}"><title>{_text(f"{device.hostname} ({device.address}), {state}")}</title>',
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{NODE_RADIUS:.0f}" fill="{COLOURS[state]}" '
        'stroke="#ffffff" stroke-width="2"/>',
    ]
    if layout.count <= HORIZONTAL_LABELS_UP_TO:
        parts.append(
            f'<text x="{x:.1f}" y="{y + NODE_RADIUS + 14:.1f}" text-anchor="middle">'
            f'<tspan font-weight="bold">{_text(name)}</tspan>'
            f'<tspan x="{x:.1f}" dy="13" fill="#555555" font-size="10">{_text(tail)}</tspan></text>'
        )
    else:
        # Pointing away from the centre; on the left half turned round so the text still reads left to right.
        degrees = math.degrees(layout.angle(index))
        left = 90 < degrees % 360 < 270
        rotation = degrees + 180 if left else degrees
        offset = NODE_RADIUS + 6
        anchor = "end" if left else "start"
        dx = -offset if left else offset
        parts.append(
            f'<text transform="translate({x:.1f} {y:.1f}) rotate({rotation:.1f})" x="{dx:.1f}" y="4" '
            f'text-anchor="{anchor}"><tspan font-weight="bold">{_text(name)}</tspan>'
            f'<tspan fill="#555555" font-size="10"> {_text(tail)}</tspan></text>'
        )
    parts.append("</g>")
    return "".join(parts)


def address_tail(address: str) -> str:
    """The last two groups of an address (``…7639:932a``): enough to tell a fleet's devices apart."""
    try:
        groups = IPv6Address(address).exploded.split(":")
    except ValueError:
        return _shorten(address, 12)
    return "…" + ":".join(group.lstrip("0") or "0" for group in groups[-2:])


def _rtt(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Characters XML 1.0 cannot carry at all, even escaped (controls other than tab, newline and carriage return,
# lone surrogates, U+FFFE and U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: str) -> str:
    """``value`` as XML text or attribute content: markup escaped, characters XML cannot carry replaced."""
    # A carriage return is written as a reference: a parser turns a literal one into a newline.
    return _escape_text(_NOT_XML.sub("\ufffd", value), {'"': "&quot;", "'": "&apos;", "\r": "&#13;"})
