"""What the Websetup client decides, without any I/O: when to ask for the config and with which revision,
what an answer changes, when to report the links, how long to back off.

The client thread (websetup_client.py) does the HTTP requests and feeds their outcomes in here with the
time; everything here is tested without sockets or sleeping. Owned by the client thread's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api import Status
from ..core.address import format_address, parse_overlay
from ..core.websetup import DEFAULT_WAIT_S, MAX_PEERS_IN_REPORT, DeviceConfig, PeerLink

# Errors (no answer, a 5xx, a body that is not a config) are retried after 1 s, doubling up to 30 s.
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
REPORT_INTERVAL_S = 30.0
# A device Websetup does not know (not claimed) waits for a join; it looks again this rarely on its own, in
# case it was claimed another way (a join through the API of a daemon restarted since).
NOT_CLAIMED_RECHECK_S = 300.0

NO_REVISION = -1

_PATHS = {"direct": "direct", "tunnelled": "tunnelled"}


class Backoff:
    """1 s, 2 s, 4 s ... up to 30 s while errors follow each other; back to 1 s after a success."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._next_s = initial_s

    def next_delay(self) -> float:
        delay = self._next_s
        self._next_s = min(self._max_s, self._next_s * 2)
        return delay

    def reset(self) -> None:
        self._next_s = self._initial_s


@dataclass(frozen=True)
class ConfigChange:
    """What a new config changes on this device (empty tuples when only the revision moved)."""

    config: DeviceConfig
    allowed: tuple[str, ...]
    disallowed: tuple[str, ...]
    hosts_changed: bool

    @property
    def changes_anything(self) -> bool:
        return bool(self.allowed or self.disallowed or self.hosts_changed)


@dataclass(frozen=True)
class PollRequest:
    after: int
    wait_s: float


class ConfigFollower:
    """Follows the device's config at Websetup: long-polls with the revision it holds (so it catches up after
    being offline), applies what differs, waits for a join while the device is not claimed.

    ``state`` is what `husarnet-ros status` shows: "connecting", "connected", "not claimed" or
    "backing off (<reason>)".
    """

    def __init__(self, held: DeviceConfig | None, now: float, wait_s: float = DEFAULT_WAIT_S) -> None:
        self.held = held
        self.wait_s = wait_s
        self.state = "connecting"
        self._next_poll_at: float | None = now
        self._backoff = Backoff()

    # --- when ----------------------------------------------------------------------------------------------

    def poll_due_at(self) -> float | None:
        """When to ask next (monotonic seconds); None while waiting for a join."""
        return self._next_poll_at

    def request(self) -> PollRequest:
        """``after`` is the revision held, -1 with none (Websetup then answers at once)."""
        return PollRequest(
            after=self.held.revision if self.held is not None else NO_REVISION, wait_s=self.wait_s
        )

    @property
    def claimed(self) -> bool:
        return self.held is not None

    # --- outcomes ------------------------------------------------------------------------------------------

    def on_config(self, config: DeviceConfig, now: float) -> ConfigChange | None:
        """A config arrived: what it changes (None if it is the one held). The next poll is due at once: the
        answer of a long poll is the moment to ask for the next change. Polls go one at a time, so an answer
        is the current config even with a revision below the one held (Websetup's database was restored from
        a backup: it answers so after holding the request): it is applied, and followed from there."""
        self._backoff.reset()
        self.state = "connected"
        self._next_poll_at = now
        held = self.held
        if held is not None and config == held:
            return None
        before = set(held.whitelist) if held is not None else set()
        after = set(config.whitelist)
        old_hosts = sorted((h.hostname, h.address) for h in held.hosts) if held is not None else []
        new_hosts = sorted((h.hostname, h.address) for h in config.hosts)
        self.held = config
        return ConfigChange(
            config=config,
            allowed=tuple(sorted(after - before)),
            disallowed=tuple(sorted(before - after)),
            hosts_changed=old_hosts != new_hosts,
        )

    def on_joined(self, config: DeviceConfig, now: float) -> None:
        """A join (through the control API) gave this config, already applied: follow it from now on."""
        if self.held is None or config.revision >= self.held.revision:
            self.held = config
        self.state = "connected"
        self._backoff.reset()
        self._next_poll_at = now

    def on_not_claimed(self, now: float) -> bool:
        """Websetup does not know this device: wait for a join. True if a config was held (released by the
        Dashboard: its entries must go)."""
        released = self.held is not None
        self.held = None
        self.state = "not claimed"
        self._backoff.reset()
        self._next_poll_at = now + NOT_CLAIMED_RECHECK_S
        return released

    def on_error(self, reason: str, now: float) -> float:
        """The request failed: back off. Returns the delay."""
        delay = self._backoff.next_delay()
        self.state = f"backing off ({reason})"
        self._next_poll_at = now + delay
        return delay


class ReportSchedule:
    """Reports every REPORT_INTERVAL_S while the device is claimed, sooner after a join; backs off on
    errors."""

    def __init__(self, now: float) -> None:
        self._due_at = now
        self._backoff = Backoff()

    def due_at(self) -> float:
        return self._due_at

    def on_sent(self, now: float) -> None:
        self._backoff.reset()
        self._due_at = now + REPORT_INTERVAL_S

    def on_error(self, now: float) -> float:
        delay = min(self._backoff.next_delay(), REPORT_INTERVAL_S)
        self._due_at = now + delay
        return delay

    def on_not_claimed(self, now: float) -> None:
        self._due_at = now + REPORT_INTERVAL_S

    def soon(self, now: float) -> None:
        self._due_at = min(self._due_at, now)


def peer_links(status: Status, websetup_address: str) -> list[PeerLink]:
    """The links this daemon sees, for Websetup's picture: every peer but Websetup itself, its path (a peer
    without one is "down"), its base server when tunnelled, its RTT."""
    websetup = format_address(parse_overlay(websetup_address))
    links: list[PeerLink] = []
    for peer in status.peers:
        if peer.address == websetup:
            continue
        path = _PATHS.get(peer.path, "down")
        links.append(
            PeerLink(
                address=peer.address,
                path="direct" if path == "direct" else "tunnelled" if path == "tunnelled" else "down",
                base_server=peer.base_server if path == "tunnelled" else None,
                rtt_ms=peer.rtt_ms if path != "down" else None,
            )
        )
        if len(links) >= MAX_PEERS_IN_REPORT:
            break
    return links
