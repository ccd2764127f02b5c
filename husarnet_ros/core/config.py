"""The daemon's configuration: one validated pydantic model, loaded from YAML plus overrides.

Precedence, highest first: explicit values (command-line options), the YAML config file, the
defaults below. ``None`` means "not given" and never overrides anything.

``whitelist_enabled`` is only the value used on a node's very first start; after that the state
directory remembers what ``whitelist enable|disable`` chose, and that wins.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..api import DEFAULT_CONTROL_SOCKET
from .base_client import DEFAULT_BASE_TCP_PORT, parse_base_server
from .beacon import DEFAULT_SOURCE_NETWORKS
from .constants import DEFAULT_DATA_PLANE_NICE, DEFAULT_MTU, DEFAULT_UDP_PORT, OVERLAY_PREFIX
from .errors import ConfigError
from .hosts import HostnameError, normalize_hostname
from .yamlfile import read_yaml_file

DEFAULT_STATE_DIR = Path("/var/lib/husarnet-ros")
# The unprivileged account the daemon runs as after set-up (scripts/setup.sh creates it; see docs/CLI.md).
DEFAULT_DAEMON_USER = "husarnet-ros"
DEFAULT_HOSTS_FILE = Path("/etc/hosts")
DEFAULT_INTERFACE = "hnet0"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MIN_MTU = 1280  # the IPv6 minimum link MTU
MAX_MTU = 65000  # stays below the 65535-byte UDP datagram limit with our framing overhead
MAX_CONFIG_FILE_SIZE = 1 << 20  # a config file is a few hundred bytes; refuse to parse anything huge
_IFNAMSIZ = 16  # Linux: interface names are at most 15 bytes plus the terminating NUL

_OVERLAY_NETWORK = ipaddress.IPv6Network((OVERLAY_PREFIX + bytes(14), 16))


def default_hostname() -> str:
    """The system hostname made into a valid overlay hostname (lowercase, RFC 1123).

    Characters a hostname cannot hold become '-'; ConfigError if nothing usable is left, so the
    user knows to set ``hostname`` explicitly.
    """
    raw = socket.gethostname()
    labels = [re.sub(r"[^a-z0-9-]", "-", label).strip("-") for label in raw.lower().split(".")]
    candidate = ".".join(label[:63] for label in labels if label)
    try:
        return normalize_hostname(candidate)
    except HostnameError:
        raise ConfigError(
            f"the system hostname {raw!r} cannot be used on the overlay; set 'hostname' in the config "
            "file or pass --hostname"
        ) from None


class DaemonConfig(BaseModel):
    """Every setting of the daemon. Unknown fields are an error (a typo must not pass silently).

    Constructing it with ``config_file`` reads that YAML file for every field not given explicitly
    (see ``load_config``, which also turns validation errors into one ConfigError).
    """

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(DEFAULT_STATE_DIR, description="Identity, whitelist and hosts record live here.")
    control_socket: Path = Field(DEFAULT_CONTROL_SOCKET, description="Unix socket of the control API.")
    interface: str = Field(
        DEFAULT_INTERFACE, description="Name of the TUN interface (at most 15 characters)."
    )
    udp_port: int = Field(
        DEFAULT_UDP_PORT,
        ge=0,
        le=65535,
        description="UDP port of the transport; 0 picks a free port (tests).",
    )
    hostname: str | None = Field(None, description="This node's overlay hostname; default: the system's.")
    hosts_file: Path = Field(
        DEFAULT_HOSTS_FILE, description="Hosts file whose managed block is kept current."
    )
    mtu: int = Field(DEFAULT_MTU, ge=MIN_MTU, le=MAX_MTU, description="MTU of the TUN interface.")
    offload: bool = Field(
        True,
        description="Use the kernel's offloads where it has them (TUN segmentation and checksums, UDP GSO "
        "and GRO); off: one packet per system call.",
    )
    data_plane_nice: int = Field(
        DEFAULT_DATA_PLANE_NICE,
        ge=-20,
        le=19,
        description="Scheduling priority (nice) of the two threads that move packets; 0: like any process. "
        "Below 0 they get the CPU before busy applications, as the kernel's own networking does, so an "
        "application that sends more than the overlay carries is slowed down instead of losing packets.",
    )
    log_level: str = Field("info", description="One of debug, info, warning, error, critical.")
    whitelist_enabled: bool = Field(
        True, description="Whitelist on or off at the very first start; afterwards the saved choice wins."
    )
    discovery_networks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SOURCE_NETWORKS),
        description="CIDR networks whose LAN discovery beacons are believed (overlay sources never are).",
    )
    discovery_enabled: bool = Field(True, description="Send and listen for LAN multicast beacons.")
    base_tcp_port: int = Field(
        DEFAULT_BASE_TCP_PORT,
        ge=0,
        le=65535,
        description="TCP port of the base servers, used while UDP to one gets no answer (a network that lets "
        "no UDP out); 0: never TCP.",
    )
    base_servers: list[str] = Field(
        default_factory=list,
        description="Base servers (host, host:port or [IPv6]:port; port 5582 by default) that introduce and "
        "relay peers on other networks; the daemon registers with all and uses the fastest that answers.",
    )
    user: str = Field(
        DEFAULT_DAEMON_USER,
        description="Account the daemon switches to once set up ('' or 'root': stay uid 0, capabilities "
        "dropped all the same). A missing account is warned about, not fatal.",
    )
    config_file: Path | None = Field(None, description="The YAML file these settings were read from.")

    @model_validator(mode="before")
    @classmethod
    def _merge_config_file(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        given = {key: value for key, value in data.items() if value is not None}
        config_file = given.get("config_file")
        if config_file is None:
            return given
        from_file = read_config_file(Path(config_file))
        return {**from_file, **given}

    @field_validator("state_dir", "control_socket", "hosts_file", "config_file")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("interface")
    @classmethod
    def _check_interface(cls, value: str) -> str:
        # The kernel's dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':' or whitespace.
        if not value:
            raise ValueError("the interface name must not be empty")
        if len(value.encode()) >= _IFNAMSIZ:
            raise ValueError(f"interface name {value!r} is longer than {_IFNAMSIZ - 1} characters")
        if value in (".", ".."):
            raise ValueError(f"{value!r} is not a valid interface name")
        if any(c in "/:" or c.isspace() for c in value):
            raise ValueError(f"interface name {value!r} must not contain '/', ':' or whitespace")
        return value

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str | None) -> str | None:
        return None if value is None else normalize_hostname(value)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level {value!r} is not one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("base_servers")
    @classmethod
    def _check_base_servers(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                parse_base_server(text)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return [text.strip() for text in value]

    @field_validator("discovery_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        networks = []
        for text in value:
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{text!r} is not a network in CIDR notation (e.g. 192.168.0.0/16 or fd00::/8)"
                ) from None
            if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_OVERLAY_NETWORK):
                raise ValueError(
                    f"{text!r} is inside the overlay fc94::/16; discovery beacons come from underlay "
                    "networks (overlay sources are always ignored, even inside a wider network like fc00::/7)"
                )
            networks.append(str(network))
        return list(dict.fromkeys(networks))  # drop duplicates, keep order

    @model_validator(mode="after")
    def _fill_hostname(self) -> DaemonConfig:
        if self.hostname is None:
            self.hostname = default_hostname()
        return self

    @property
    def node_hostname(self) -> str:
        """The hostname, never None (it is filled in on validation)."""
        assert self.hostname is not None
        return self.hostname


FIELD_NAMES = tuple(DaemonConfig.model_fields)


def _unknown_key_error(key: object, where: str) -> ConfigError:
    name = str(key)
    close = difflib.get_close_matches(name.replace("-", "_"), FIELD_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown setting {name!r}{hint}; known settings: {', '.join(FIELD_NAMES)}")


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML config file, as a dict; ConfigError naming the file and the problem.

    Values are not validated here (``DaemonConfig`` does that); keys are: an unknown key is an error.
    """
    data = read_yaml_file(path, "config file", MAX_CONFIG_FILE_SIZE)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of settings (key: value), not a {type(data).__name__}"
        )
    for key in data:
        if key not in FIELD_NAMES or key == "config_file":
            raise _unknown_key_error(key, f"config file {path}")
    return data


def describe_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per problem, ``setting: what is wrong``, without pydantic's internals."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "config"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        problems.append(f"{location}: {message}")
    prefix = f"invalid configuration{f' in {source}' if source else ''}: "
    return prefix + "; ".join(problems)


def load_config(config_file: Path | None = None, overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """The daemon configuration from ``config_file`` (YAML, optional) and ``overrides``.

    ``overrides`` (e.g. command-line options) win over the file; ``None`` values are ignored.
    Every problem - unreadable file, bad YAML, unknown key, invalid value - is a ConfigError
    whose message names the setting and says what is wrong.
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    for key in given:
        if key not in FIELD_NAMES:
            raise _unknown_key_error(key, "overrides")
    if config_file is not None:
        given["config_file"] = config_file
    source = str(given.get("config_file", ""))
    try:
        return DaemonConfig(**given)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None
