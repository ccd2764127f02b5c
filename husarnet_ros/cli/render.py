"""Human output: the status header, the peers table, ping lines; plain text when not on a terminal."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..api import PeerStatus, PingResult, Status

# Wide enough that a full fc94 address never wraps when output goes to a file or a pipe.
_PIPE_WIDTH = 200
_PATH_STYLE = {"direct": "green", "tunnelled": "yellow", "none": "red"}


def console() -> Console:
    """A console on the current stdout (looked up now, so click's test runner captures it)."""
    out = sys.stdout
    if out.isatty():
        return Console(file=out)
    return Console(file=out, width=_PIPE_WIDTH, no_color=True, highlight=False)


def age(timestamp: float | None, now: float | None = None) -> str:
    """'5s ago', '3m ago', '2h ago', '4d ago' or 'never'."""
    if timestamp is None:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable, keeps mypy and readers calm


def rtt(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def route(peer_path: str, endpoint: str | None, base_server: str | None) -> str:
    """How packets reach a peer, in the words of ``ping``: 'direct via ...' or 'tunnelled via ...'."""
    if peer_path == "direct":
        return f"direct via {endpoint}" if endpoint else "direct"
    if peer_path == "tunnelled":
        return f"tunnelled via {base_server}" if base_server else "tunnelled"
    return "no path"


def peers_table(peers: list[PeerStatus], now: float | None = None) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("ADDRESS", "HOSTNAME", "PATH", "ENDPOINT", "RTT", "HANDSHAKE", "RX", "TX"):
        table.add_column(name, no_wrap=True, justify="right" if name in ("RTT", "RX", "TX") else "left")
    for peer in sorted(peers, key=lambda p: (p.hostname is None, p.hostname or "", p.address)):
        endpoint = peer.endpoint if peer.path == "direct" else peer.base_server
        table.add_row(
            peer.address,
            escape(peer.hostname or "-"),  # names come from the network: never markup
            Text(peer.path, style=_PATH_STYLE.get(peer.path, "")),
            escape(endpoint or "-"),
            rtt(peer.rtt_ms),
            age(peer.last_handshake, now),
            size(peer.rx_bytes),
            size(peer.tx_bytes),
        )
    return table


def print_peers(peers: list[PeerStatus]) -> None:
    out = console()
    if not peers:
        out.print("no peers yet")
        return
    out.print(peers_table(peers))


def print_status(status: Status) -> None:
    out = console()
    lines = [
        ("address", status.address),
        ("hostname", status.hostname),
        ("interface", f"{status.interface} (udp {status.udp_port})"),
        ("whitelist", "on" if status.whitelist_enabled else "off (any peer may connect)"),
        (
            "daemon",
            f"{status.version}, up {duration(status.uptime_s)}" + ("" if status.ready else ", NOT READY"),
        ),
    ]
    dropped = ", ".join(f"{name}={count}" for name, count in sorted(status.counters.items()) if count)
    if dropped:
        lines.append(("counters", dropped))
    if status.license is not None:
        from .control_plane import license_lines  # the Dashboard this daemon is set up with

        lines.extend(license_lines(status.license))
    for key, value in lines:
        out.print(f"{key:<10} {value}", highlight=False, markup=False)
    out.print()
    print_peers(status.peers)


def ping_header(target: str, address: str) -> str:
    shown = address if target == address else f"{target} ({address})"
    return f"PING {shown}"


def ping_reply_line(result: PingResult, seq: int, rtt_ms: float | None) -> str:
    how = route(result.path, result.endpoint, result.base_server)
    if rtt_ms is None:
        return f"seq={seq} timed out ({how})"
    return f"reply from {result.address}: seq={seq} time={rtt(rtt_ms)} ({how})"


def ping_summary(target: str, sent: int, received: int) -> list[str]:
    loss = 0 if sent == 0 else round(100 * (sent - received) / sent)
    return [f"--- {target} ping statistics ---", f"{sent} sent, {received} received, {loss}% loss"]
