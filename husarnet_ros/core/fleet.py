"""A fleet described once: robots, their overlay addresses, groups, and who may talk to whom.

The fleet file is YAML (reference: docs/ROS.md, example: config/fleet.yaml)::

    robots:
      robot1:
        address: fc94:...          # or `identity_file: ids/robot1` (path relative to this file)
        groups: [arms]
        namespace: robot1          # ROS namespace; defaults to the robot's name
      robot2:
        address: fc94:...
        endpoint: 198.18.5.20:5582 # optional: where the others reach it (or `endpoints: [...]`)
    links:                         # optional; absent means every robot may talk to every other
      - [arms, robot2]             # members of `arms` and robot2 may talk, in both directions
      - ["*", base]                # "*" is every robot
    base_servers:                  # optional: the base servers every robot of the fleet uses
      - base.example.com           # host[:port] or [IPv6]:port, port 5582 by default

Each robot launches with its own name and gets from ``Fleet.view(name)`` its whitelist (the peers it may
talk to), the hosts entries to keep (those peers' names and addresses), the static endpoints of those peers
(WireGuard's ``Endpoint``: ``host:port`` or ``[IPv6]:port``, host an IP address or a DNS name), its DDS
initial peers and the fleet's base servers (the same for every robot).

Pure: parsing and computing only; ``load_fleet`` reads the file, nothing here writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .address import format_address, parse_overlay
from .base_client import MAX_BASE_SERVERS, base_server_name
from .errors import AddressError, ConfigError, HusarnetError
from .hosts import normalize_hostname
from .identity import read_identity_file
from .peer_endpoint import MAX_STATIC_ENDPOINTS_PER_PEER, endpoint_name
from .yamlfile import read_yaml_file

# A fleet file is a few KiB; a bigger one is a mistake (or an attack on whoever parses it).
MAX_FLEET_FILE_SIZE = 1 << 20
EVERY_ROBOT = "*"
# A ROS namespace: tokens of letters, digits and underscores separated by "/", none starting with a digit.
_NAMESPACE_RE = re.compile(r"/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")
# A base server's host name as the daemon accepts it (daemon/node_controller.py): DNS labels, dots between.


def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.fullmatch(namespace) or "__" in namespace:
        raise ValueError(
            f"{namespace!r} is not a ROS namespace (letters, digits and '_' in '/'-separated tokens, "
            "no token starting with a digit, no '__')"
        )
    return namespace


def _base_server_name(text: str) -> str:
    """base_client.base_server_name, with its ConfigError as the ValueError pydantic reports."""
    try:
        return base_server_name(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def default_namespace(name: str) -> str:
    """The ROS namespace of a robot named ``name``: ROS names allow no '-' or '.', hostnames do."""
    return name.replace("-", "_").replace(".", "_")


class RobotSpec(BaseModel):
    """One robot as written in the fleet file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(default=None, description="overlay address (fc94::/16)")
    identity_file: str | None = Field(
        default=None, description="identity file to take the address from, relative to the fleet file"
    )
    groups: tuple[str, ...] = ()
    namespace: str | None = Field(default=None, description="ROS namespace; defaults to the robot's name")
    endpoint: str | None = Field(
        default=None, description="static endpoint: where the others reach it (host:port or [IPv6]:port)"
    )
    endpoints: tuple[str, ...] = Field(default=(), description="several static endpoints")

    @field_validator("endpoint")
    @classmethod
    def _one_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else endpoint_name(value)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(endpoint_name(value) for value in values))

    @property
    def all_endpoints(self) -> tuple[str, ...]:
        """``endpoint`` and ``endpoints`` together, each once, in the order written."""
        return tuple(dict.fromkeys((*((self.endpoint,) if self.endpoint else ()), *self.endpoints)))

    @field_validator("address")
    @classmethod
    def _canonical_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return format_address(parse_overlay(value))

    @field_validator("namespace")
    @classmethod
    def _ros_namespace(cls, value: str | None) -> str | None:
        return None if value is None else _check_namespace(value)

    @model_validator(mode="after")
    def _one_source_of_address(self) -> RobotSpec:
        if self.address is None and self.identity_file is None:
            raise ValueError("needs `address` or `identity_file`")
        # Both would be two truths that may disagree; the fleet file must say one thing.
        if self.address is not None and self.identity_file is not None:
            raise ValueError("has both `address` and `identity_file`: give only one")
        if len(self.all_endpoints) > MAX_STATIC_ENDPOINTS_PER_PEER:
            raise ValueError(f"has more than {MAX_STATIC_ENDPOINTS_PER_PEER} endpoints")
        return self


class FleetSpec(BaseModel):
    """The whole fleet file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    robots: dict[str, RobotSpec]
    links: tuple[tuple[str, str], ...] | None = None
    base_servers: tuple[str, ...] = Field(
        default=(), description="base servers every robot uses: host[:port] or [IPv6]:port"
    )

    @field_validator("base_servers")
    @classmethod
    def _base_servers(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        written: dict[str, str] = {}  # one spelling -> as written
        for value in values:
            name = _base_server_name(value)
            if name in written:
                same = "is listed twice" if written[name] == value else f"is the same as {written[name]!r}"
                raise ValueError(f"base server {value!r} {same} ({name})")
            written[name] = value
        if len(written) > MAX_BASE_SERVERS:
            raise ValueError(f"{len(written)} base servers: at most {MAX_BASE_SERVERS} are used")
        return tuple(written)

    @field_validator("robots")
    @classmethod
    def _hostnames(cls, robots: dict[str, RobotSpec]) -> dict[str, RobotSpec]:
        if not robots:
            raise ValueError("a fleet needs at least one robot")
        for name, robot in robots.items():
            if normalize_hostname(name) != name:
                raise ValueError(f"robot name {name!r} must be a lower-case hostname")
            if robot.namespace is None:
                try:
                    _check_namespace(default_namespace(name))
                except ValueError:
                    raise ValueError(
                        f"robot name {name!r} does not make a ROS namespace: give it a `namespace`"
                    ) from None
        return robots


@dataclass(frozen=True)
class Member:
    """A robot of the fleet with its resolved address."""

    name: str
    address: str
    groups: tuple[str, ...]
    namespace: str
    endpoints: tuple[str, ...] = ()  # static endpoints, in their one spelling (core.peer_endpoint)


@dataclass(frozen=True)
class RobotView:
    """What one robot needs to know about the fleet."""

    me: Member
    peers: tuple[Member, ...]
    base_servers: tuple[str, ...] = ()  # the fleet's, in their one spelling (base_server_name)

    @property
    def whitelist(self) -> list[str]:
        return [peer.address for peer in self.peers]

    @property
    def hosts(self) -> dict[str, str]:
        """Hostname -> address of every peer this robot may talk to."""
        return {peer.name: peer.address for peer in self.peers}

    @property
    def static_endpoints(self) -> list[tuple[str, str]]:
        """(address, endpoint) of every static endpoint of the peers this robot may talk to."""
        return [(peer.address, endpoint) for peer in self.peers for endpoint in peer.endpoints]


@dataclass(frozen=True)
class Fleet:
    members: dict[str, Member]
    links: tuple[tuple[str, str], ...] | None
    base_servers: tuple[str, ...] = ()  # every robot uses them; in their one spelling (base_server_name)

    def _selects(self, selector: str, member: Member) -> bool:
        return selector in (EVERY_ROBOT, member.name) or selector in member.groups

    def may_talk(self, a: str, b: str) -> bool:
        """Whether robots ``a`` and ``b`` may exchange packets (symmetric; a robot never lists itself)."""
        if a == b:
            return False
        first, second = self.members[a], self.members[b]
        if self.links is None:
            return True
        return any(
            (self._selects(x, first) and self._selects(y, second))
            or (self._selects(x, second) and self._selects(y, first))
            for x, y in self.links
        )

    def view(self, name: str) -> RobotView:
        """The fleet as robot ``name`` sees it; ConfigError naming the known robots when it is not there."""
        if name not in self.members:
            known = ", ".join(sorted(self.members))
            raise ConfigError(f"robot {name!r} is not in the fleet (robots: {known})")
        peers = tuple(m for other, m in sorted(self.members.items()) if self.may_talk(name, other))
        return RobotView(me=self.members[name], peers=peers, base_servers=self.base_servers)

    def by_address(self, address: str) -> Member | None:
        for member in self.members.values():
            if member.address == address:
                return member
        return None


def _describe(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "fleet"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "tuple_type":
            message = "must be a list"
        problems.append(f"{location}: {message}")
    return f"invalid fleet file {source}: " + "; ".join(problems)


def _address_from_identity(path: Path) -> str:
    try:
        return format_address(read_identity_file(path).address)
    except HusarnetError as exc:  # unreadable (FileReadError) or not an identity (IdentityFileError)
        raise ConfigError(str(exc)) from None


def parse_fleet(data: Any, base_dir: Path, source: str = "<fleet>") -> Fleet:
    """A ``Fleet`` from the parsed YAML ``data``; every problem is a ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"fleet file {source} must be a mapping with a `robots:` key")
    try:
        spec = FleetSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    except AddressError as exc:
        raise ConfigError(f"invalid fleet file {source}: {exc}") from None
    members: dict[str, Member] = {}
    for name, robot in spec.robots.items():
        if robot.address is not None:
            address = robot.address
        else:
            assert robot.identity_file is not None
            address = _address_from_identity(base_dir / robot.identity_file)
        members[name] = Member(
            name, address, robot.groups, robot.namespace or default_namespace(name), robot.all_endpoints
        )
    seen: dict[str, str] = {}
    for member in members.values():
        if member.address in seen:
            raise ConfigError(
                f"invalid fleet file {source}: robots {seen[member.address]!r} and {member.name!r} "
                f"have the same address {member.address}"
            )
        seen[member.address] = member.name
    known = set(members) | {g for m in members.values() for g in m.groups} | {EVERY_ROBOT}
    for index, link in enumerate(spec.links or ()):
        for selector in link:
            if selector not in known:
                raise ConfigError(
                    f"invalid fleet file {source}: links.{index}: {selector!r} is neither a robot nor a group"
                )
    return Fleet(members, spec.links, spec.base_servers)


def load_fleet(path: Path) -> Fleet:
    """Read and parse a fleet file; ConfigError (naming the file, line and key) on any problem."""
    data = read_yaml_file(path, "fleet file", MAX_FLEET_FILE_SIZE)
    return parse_fleet(data, path.parent, str(path))
