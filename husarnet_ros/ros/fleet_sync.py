"""What to change in the daemon's whitelist and hosts block so they match the fleet: pure planning.

No ROS and no daemon calls here: the nodes read the daemon's state, ask these functions what to add and
remove, and make the calls themselves. That keeps every rule testable without a daemon.

Who owns which host entry (the rule the hosts node follows)
    The managed hosts block is shared: the whitelist node writes the hostname given to ``add_peer``, the
    user may run ``husarnet-ros hosts add``. The hosts node therefore removes only names it *owns*; a
    ``HostsLedger`` remembers them for the node's lifetime. A name becomes owned when the node wanted it
    (a fleet peer's name, or a discovered name of a peer this robot may talk to) and the block held it
    with the wanted address, whether the node wrote it or found it there. It stops being wanted when the
    peer leaves the fleet view, stops being whitelisted, or changes its name; the node then removes it,
    but only while it still points at the address the node had for it (a user who re-pointed the name
    took it back). At start, entries that equal a robot of the fleet file (name and address) are adopted
    too, so a name left over from an earlier run is cleaned once that robot is no longer a peer.
    Entries the node never wanted are never touched.

Who owns which static endpoint
    The same rule, for the peers' static endpoints (``husarnet-ros endpoint``): the whitelist node adds the
    fleet's missing ones and removes only those it owns (an ``EndpointLedger``) once the fleet no longer
    gives them; one a user added by hand is never removed. At start, the daemon's static endpoints that the
    fleet gives are adopted, so one left over from an earlier run is removed once the file drops it.

Who owns which base server
    The same rule again, for the fleet's ``base_servers`` (``husarnet-ros base``; a ``BaseServerLedger``):
    the missing ones are added, the ones the node owns are removed once the file drops them; one added by
    hand (or from the daemon's own configuration) is never removed, unless the file also gave it when the
    node started (adopted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ..api import PeerStatus
from ..core.errors import ConfigError, HusarnetError
from ..core.fleet import Fleet, RobotView, load_fleet
from ..core.hosts import normalize_hostname


@dataclass(frozen=True)
class FleetState:
    """The fleet file as read for one robot."""

    fleet: Fleet
    view: RobotView
    source: str
    robot: str


def load_fleet_view(fleet_file: str, robot: str, daemon_hostname: str) -> FleetState | None:
    """The fleet seen by ``robot`` ("" = the daemon's hostname); None when no fleet file is configured.

    ConfigError (for the user) when the file cannot be read, is invalid, or does not list the robot.
    """
    if not fleet_file:
        return None
    name = robot or daemon_hostname
    if not name:
        raise ConfigError("no robot name: set the `robot` parameter (the daemon reported no hostname)")
    fleet = load_fleet(Path(fleet_file).expanduser())
    try:
        view = fleet.view(name)
    except ConfigError as exc:
        origin = "the `robot` parameter" if robot else "the daemon's hostname; set the `robot` parameter"
        raise ConfigError(f"fleet file {fleet_file}: {exc} ({name!r} is {origin})") from None
    return FleetState(fleet, view, fleet_file, name)


def address_mismatch(state: FleetState, own_address: str) -> str | None:
    """A warning when the fleet gives this robot another address than the daemon has, else None."""
    if state.view.me.address == own_address:
        return None
    return (
        f"fleet file {state.source} gives robot {state.robot!r} the address {state.view.me.address}, "
        f"but the daemon's address is {own_address}: the other robots will not reach this one"
    )


def whitelist_missing(wanted: Iterable[str], current: Iterable[str]) -> list[str]:
    """Addresses of ``wanted`` not on the whitelist yet, in the given order."""
    present = set(current)
    return [address for address in dict.fromkeys(wanted) if address not in present]


def hosts_to_write(wanted: Mapping[str, str], current: Mapping[str, str]) -> dict[str, str]:
    """Entries of ``wanted`` that are missing from the block or point elsewhere, sorted by name."""
    return {name: address for name, address in sorted(wanted.items()) if current.get(name) != address}


def reachable_peers(peers: Iterable[PeerStatus], whitelist_enabled: bool) -> list[PeerStatus]:
    """The peers this robot may talk to: whitelisted ones, or all of them when the whitelist is off."""
    return [peer for peer in peers if peer.whitelisted or not whitelist_enabled]


def discovered_hosts(peers: Iterable[PeerStatus]) -> dict[str, str]:
    """Hostname -> address of ``peers`` whose hostname the daemon knows.

    Names that are not valid hostnames are skipped; a name claimed by two addresses is ambiguous and
    left out rather than pointed at either one.
    """
    claims: dict[str, set[str]] = {}
    for peer in peers:
        if not peer.hostname:
            continue
        try:
            name = normalize_hostname(peer.hostname)
        except HusarnetError:
            continue
        claims.setdefault(name, set()).add(peer.address)
    return {name: next(iter(addresses)) for name, addresses in sorted(claims.items()) if len(addresses) == 1}


def wanted_hosts(
    fleet_hosts: Mapping[str, str], discovered: Mapping[str, str], reserved: Iterable[str] = ()
) -> dict[str, str]:
    """The entries the hosts block should hold: the fleet's, then discovered names the fleet does not use.

    The fleet file is the authority on its names. ``reserved`` names (this robot's own hostname) are
    never pointed at a peer.
    """
    skip = set(reserved)
    wanted = {name: address for name, address in fleet_hosts.items() if name not in skip}
    for name, address in discovered.items():
        if name not in skip and name not in wanted:
            wanted[name] = address
    return dict(sorted(wanted.items()))


@dataclass(frozen=True)
class HostsPlan:
    """Changes to make to the managed hosts block."""

    add: dict[str, str]
    remove: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


StaticKey = tuple[str, str]  # (peer address, endpoint), both in their one spelling
# What a ledger keeps: a static endpoint's StaticKey, or a base server's name (core.fleet.base_server_name).
Key = TypeVar("Key", StaticKey, str)


@dataclass(frozen=True)
class SyncPlan(Generic[Key]):
    """Entries to add and to remove so the daemon's match the fleet's."""

    add: tuple[Key, ...]
    remove: tuple[Key, ...]

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


EndpointsPlan = SyncPlan[StaticKey]
BaseServersPlan = SyncPlan[str]


@dataclass
class OwnershipLedger(Generic[Key]):
    """The entries of a daemon list (static endpoints, base servers) a whitelist node owns: see the module
    docstring for the rule. Only the node's fleet sync uses it, on one thread."""

    owned: set[Key] = field(default_factory=set)
    started: bool = False

    def plan(self, wanted: Iterable[Key], current: Iterable[Key]) -> SyncPlan[Key]:
        """What to add (wanted, not there yet) and remove (ours, no longer wanted, still there)."""
        wanted_keys, present = list(dict.fromkeys(wanted)), set(current)
        if not self.started:
            self.owned |= present & set(wanted_keys)  # left from an earlier run of ours, or the same as ours
            self.started = True
        add = tuple(key for key in wanted_keys if key not in present)
        remove = tuple(sorted(key for key in self.owned if key not in wanted_keys and key in present))
        return SyncPlan(add, remove)

    def settle(self, wanted: Iterable[Key], current: Iterable[Key]) -> None:
        """Update ownership from the daemon's list after the changes: wanted ones it holds are ours, stale
        ones still there (a removal failed) stay ours to retry, ones gone are forgotten."""
        present, wanted_keys = set(current), set(wanted)
        self.owned = (wanted_keys & present) | (self.owned & present)


class EndpointLedger(OwnershipLedger[StaticKey]):
    """The peers' static endpoints a whitelist node owns."""


class BaseServerLedger(OwnershipLedger[str]):
    """The base servers a whitelist node owns."""


@dataclass
class HostsLedger:
    """The host entries a hosts node owns (see the module docstring for the rule)."""

    owned: dict[str, str] = field(default_factory=dict)

    def adopt(self, candidates: Mapping[str, str], current: Mapping[str, str]) -> None:
        """Own the entries of ``current`` that equal one of ``candidates`` (e.g. the fleet's robots)."""
        for name, address in candidates.items():
            if current.get(name) == address:
                self.owned.setdefault(name, address)

    def plan(self, wanted: Mapping[str, str], current: Mapping[str, str]) -> HostsPlan:
        """What to write and remove so that ``current`` holds ``wanted`` and none of our stale names."""
        remove = tuple(
            sorted(
                name
                for name, address in self.owned.items()
                if name not in wanted and current.get(name) == address
            )
        )
        return HostsPlan(add=hosts_to_write(wanted, current), remove=remove)

    def settle(self, wanted: Mapping[str, str], current: Mapping[str, str]) -> None:
        """Update ownership from the block as it is after the changes were made.

        Wanted names the block holds correctly are ours; stale names still there (a removal failed) stay
        ours to retry; names gone or re-pointed by someone else are forgotten.
        """
        owned = {name: address for name, address in wanted.items() if current.get(name) == address}
        for name, address in self.owned.items():
            if name not in owned and current.get(name) == address:
                owned[name] = address
        self.owned = dict(sorted(owned.items()))
