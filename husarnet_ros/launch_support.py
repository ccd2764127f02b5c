"""Decisions the launch files make, as plain functions (no launch, no rclpy), so they are unit-tested.

``launch/robot.launch.py`` and ``launch/fleet.launch.py`` only turn launch arguments into calls of these
functions and the answers into launch actions:

* whether to start the daemon (``start_daemon`` auto/true/false) and the command that starts it;
* the robot's view of a fleet file (whitelist, hosts, DDS peers) and the namespace / hostname it implies;
* the own overlay address and the peer addresses the DDS configuration lists (daemon first, fleet second);
* the DDS files and the environment variables to set for the nodes (and to print for the user's nodes).

``launch/server.launch.py`` likewise: the base server's command, and with ``dashboard:=true`` the Dashboard's
and Websetup's (control_plane: every argument checked, and the license's base servers, before anything
starts).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from . import dds as dds_config
from .api import Status, Whitelist, quote_input, resolve_control_socket
from .cli.dashboard import DATA_DIR_ENV as DASHBOARD_DATA_DIR_ENV
from .cli.dashboard import DATABASE_URL_ENV as DASHBOARD_DATABASE_URL_ENV
from .cli.dashboard import DEFAULT_DATA_DIR as DASHBOARD_DEFAULT_DATA_DIR
from .client import ClientError, ControlClient
from .core.address import format_address, parse_overlay
from .core.base_client import DEFAULT_BASE_PORT, base_server_name
from .core.constants import DEFAULT_MTU
from .core.errors import AddressError, ConfigError
from .core.fleet import RobotView, load_fleet
from .core.license import DEFAULT_WEBSETUP_PORT
from .dds import export_lines
from .fileio import atomic_write_text

START_DAEMON_MODES = ("auto", "true", "false")
DDS_CHOICES = ("fastdds", "cyclonedds", "none")
# How long one probe of the control socket may take: a daemon that answers at all answers in milliseconds.
PROBE_TIMEOUT_S = 1.0
# How long the launch waits for a daemon it has just started before configuring DDS without it.
DAEMON_START_WAIT_S = 15.0
DAEMON_POLL_PERIOD_S = 0.2


@dataclass(frozen=True)
class DdsPeers:
    """Addresses for the DDS configuration and where they came from (said in the launch log)."""

    own: str | None
    peers: tuple[str, ...]
    source: str


# --- arguments ---------------------------------------------------------------------------------------------


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    normalised = value.strip().lower()
    if normalised not in choices:
        raise ConfigError(f"launch argument {name}:={value!r} must be one of {', '.join(choices)}")
    return normalised


def parse_start_daemon(value: str) -> str:
    """``auto`` / ``true`` / ``false`` (case-insensitive); ConfigError otherwise."""
    return _choice("start_daemon", value, START_DAEMON_MODES)


def parse_dds(value: str) -> str:
    """``fastdds`` / ``cyclonedds`` / ``none``; ConfigError otherwise."""
    return _choice("dds", value, DDS_CHOICES)


def system_hostname() -> str:
    """This machine's hostname as a fleet robot name: lower case, without a domain."""
    return socket.gethostname().split(".", 1)[0].lower()


def normalize_namespace(namespace: str) -> str:
    """'' or '/robot1' form of a ROS namespace ('robot1/' and ' /robot1 ' are accepted)."""
    stripped = namespace.strip().strip("/")
    return f"/{stripped}" if stripped else ""


# --- daemon ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonInfo:
    """What the launch asks a running daemon: its status and its whitelist."""

    status: Status
    whitelist: Whitelist


def query_daemon(control_socket: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> DaemonInfo | None:
    """The daemon's status and whitelist, or None when nothing (working) answers; never raises."""
    try:
        with ControlClient(control_socket or None, timeout_s=timeout_s) as client:
            return DaemonInfo(client.status(), client.whitelist())
    except ClientError:
        return None


def should_start_daemon(mode: str, answers: Callable[[], bool]) -> bool:
    """Start a daemon? ``auto``: only when nothing answers on the control socket (``answers`` is asked)."""
    mode = parse_start_daemon(mode)
    if mode == "auto":
        return not answers()
    return mode == "true"


def husarnet_ros_command(python: str = sys.executable) -> list[str]:
    """The `husarnet-ros` CLI of the Python running the launch (installed script, else ``-m``)."""
    script = Path(python).parent / "husarnet-ros"
    return [str(script)] if script.exists() else [python, "-m", "husarnet_ros.cli"]


def base_server_command(
    *,
    listen: str = "::",
    udp_port: str = "",
    tcp_port: str = "",
    max_clients: str = "",
    status_file: str = "",
    status_interval: str = "",
    base: list[str] | None = None,
) -> list[str]:
    """``husarnet-ros base-server ...`` from launch arguments (strings); ``tcp_port`` 0 = no TCP. ConfigError
    for a value that is not a number where one is needed."""
    argv = [*(base or husarnet_ros_command()), "base-server"]
    if listen:
        argv += ["--listen", listen]
    for option, value in (
        ("--udp-port", udp_port),
        ("--max-clients", max_clients),
        ("--status-interval", status_interval),
    ):
        if value:
            argv += [option, _number(option, value)]
    if tcp_port:
        argv += ["--no-tcp"] if _number("--tcp-port", tcp_port) == "0" else ["--tcp-port", tcp_port.strip()]
    if status_file:
        argv += ["--status-file", status_file]
    return argv


def _number(option: str, value: str) -> str:
    text = value.strip()
    try:
        float(text)
    except ValueError:
        raise ConfigError(
            f"launch argument {option.lstrip('-').replace('-', '_')}:={value!r} is not a number"
        ) from None
    return text


def daemon_command(
    *,
    control_socket: str,
    state_dir: str = "",
    hostname: str = "",
    hosts_file: str = "",
    config_file: str = "",
    extra_args: str = "",
    base: list[str] | None = None,
) -> list[str]:
    """``husarnet-ros daemon ...`` with the options that were given (empty = the daemon's default)."""
    socket_path = resolve_control_socket(control_socket or None)
    argv = [*(base or husarnet_ros_command()), "--control-socket", socket_path, "daemon"]
    for option, value in (
        ("--state-dir", state_dir),
        ("--hostname", hostname),
        ("--hosts-file", hosts_file),
        ("--config", config_file),
    ):
        if value:
            argv += [option, value]
    try:
        argv += shlex.split(extra_args)
    except ValueError as exc:
        raise ConfigError(f"launch argument daemon_args:={extra_args!r} cannot be split: {exc}") from None
    return argv


# --- fleet -------------------------------------------------------------------------------------------------


def fleet_view(fleet_file: str, robot: str) -> RobotView | None:
    """The robot's view of the fleet file, or None without a fleet file; ConfigError on any problem."""
    if not fleet_file:
        return None
    return load_fleet(Path(fleet_file).expanduser()).view(robot)


@dataclass(frozen=True)
class FleetRobot:
    """Launch arguments of robot.launch.py that a fleet file decides for one robot."""

    robot: str
    namespace: str
    hostname: str


def fleet_robot(fleet_file: str, robot: str) -> FleetRobot:
    """Namespace and hostname of ``robot`` in the fleet (robot names are hostnames)."""
    if not fleet_file:
        raise ConfigError("fleet.launch.py needs fleet:=PATH (a fleet YAML file, see config/fleet.yaml)")
    view = fleet_view(fleet_file, robot)
    assert view is not None
    namespace = normalize_namespace(view.me.namespace)
    return FleetRobot(robot=view.me.name, namespace=namespace, hostname=view.me.name)


# --- DDS ---------------------------------------------------------------------------------------------------


def dds_peers(view: RobotView | None, daemon: DaemonInfo | None) -> DdsPeers:
    """Own and peer addresses for DDS, by the rule the husarnet_dds node follows (so it keeps the file).

    See :func:`husarnet_ros.dds.own_and_peers`: the daemon's address else the fleet's, and the fleet
    members plus the peers the daemon allows.
    """
    status, whitelist = (daemon.status, daemon.whitelist) if daemon is not None else (None, None)
    own, peers = dds_config.own_and_peers(view, status, whitelist)
    sources = [
        name for name, used in (("fleet file", view is not None), ("daemon", daemon is not None)) if used
    ]
    return DdsPeers(
        own=own,
        peers=tuple(peers),
        source=" and ".join(sources) or "nothing (no daemon answering, no fleet file)",
    )


def address_mismatch(view: RobotView | None, daemon: DaemonInfo | None) -> str | None:
    """A warning when the daemon's address is not the fleet's address of this robot (wrong robot name?)."""
    if view is None or daemon is None or daemon.status.address == view.me.address:
        return None
    return (
        f"the daemon's address {daemon.status.address} is not {view.me.address}, the address of robot "
        f"{view.me.name!r} in the fleet file: wrong robot:= or identity?"
    )


def dds_output_dir(requested: str, namespace: str) -> Path:
    """The directory of the DDS files: the one asked for, else the DDS module's default for the namespace."""
    if requested:
        return Path(requested).expanduser()
    return dds_config.default_output_dir(normalize_namespace(namespace))


def dds_environment(
    dds: str, output_dir: Path, addresses: DdsPeers, mtu: int = DEFAULT_MTU
) -> dict[str, str]:
    """Write the DDS configuration files and return the variables to set; {} for ``dds:=none``. ``mtu``: the
    overlay's (the running daemon's: ``dds.overlay_mtu``), which sizes DDS datagrams.

    Without an own address (no daemon, no fleet) no file can be written: ConfigError saying what to give.
    """
    dds = parse_dds(dds)
    if dds == "none":
        return {}
    if addresses.own is None:
        raise ConfigError(
            "cannot configure DDS: no daemon answers and no fleet file gives this robot's address "
            "(start the daemon, pass fleet:=... robot:=..., or dds:=none)"
        )
    return dds_config.write_config(
        output_dir, addresses.own, list(addresses.peers), rmw=dds, set_rmw_implementation=True, mtu=mtu
    )


def write_env_file(output_dir: Path, env: Mapping[str, str]) -> Path:
    """``output_dir/env.sh`` with the export lines (atomic), so scripts can source it."""
    path = output_dir / "env.sh"
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, export_lines(env) + "\n", 0o644)
    return path


def write_parameter_overrides(node_name: str, values: Mapping[str, str]) -> Path:
    """A ROS parameter file setting ``values`` for ``node_name`` in any namespace (``/**/<node_name>``).

    In a temporary file that outlives the launch, as launch_ros does with the parameter dicts it is given.
    """
    document = {f"/**/{node_name}": {"ros__parameters": dict(values)}}
    handle, name = tempfile.mkstemp(prefix=f"husarnet_ros_{node_name}_", suffix=".yaml")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        yaml.safe_dump(document, file, default_flow_style=False)
    return Path(name)


# --- server.launch.py: the self-hosted control plane --------------------------------------------------------

# The control plane's launch arguments and their defaults. An argument changed from its default while
# dashboard is false would be silently ignored, so it is refused instead (see control_plane).
DEFAULT_DASHBOARD_LISTEN = "[::]:8080"
CONTROL_PLANE_DEFAULTS: dict[str, str] = {
    "dashboard": "false",
    "dashboard_listen": DEFAULT_DASHBOARD_LISTEN,
    "dashboard_data_dir": "",
    "database_url": "",
    "public_url": "",
    "name": "",
    "public_host": "",
    "base_servers": "",
    "websetup_address": "",
    "websetup_port": str(DEFAULT_WEBSETUP_PORT),
}
BOOLEAN_CHOICES = ("true", "false")
# What `husarnet-ros dashboard serve` prints once its database is migrated and it is about to serve: Websetup,
# which migrates the same database, starts only then, so that two migrations never race.
DASHBOARD_READY_PREFIX = "Dashboard on "


@dataclass(frozen=True)
class ServerProcess:
    """One process server.launch.py starts: its command line and the log line saying what and where."""

    argv: tuple[str, ...]
    what: str


@dataclass(frozen=True)
class ControlPlane:
    """The Dashboard, and Websetup when the server daemon's fc94 address was given."""

    dashboard: ServerProcess
    websetup: ServerProcess | None
    license_base_servers: tuple[str, ...]
    setup_address: str  # what a robot gives `husarnet-ros setup-server`


def parse_boolean(name: str, value: str) -> bool:
    """``true`` / ``false`` (case-insensitive); ConfigError naming the argument otherwise."""
    return _choice(name, value, BOOLEAN_CHOICES) == "true"


def control_plane(
    values: Mapping[str, str],
    *,
    environ: Mapping[str, str] | None = None,
    base: list[str] | None = None,
) -> ControlPlane | None:
    """What server.launch.py starts beside its base server, from its launch arguments (``values``: argument
    name -> text; a missing one has its default, ``udp_port`` is the base server's); None without
    ``dashboard:=true``. Every bad value or combination is a ConfigError saying what to give, raised before
    anything starts. ``environ``: where the Dashboard's own environment variables are read (os.environ)."""
    environ = os.environ if environ is None else environ
    given = {name: values.get(name, default).strip() for name, default in CONTROL_PLANE_DEFAULTS.items()}
    if not parse_boolean("dashboard", given["dashboard"]):
        stray = [
            name
            for name, default in CONTROL_PLANE_DEFAULTS.items()
            if name != "dashboard" and given[name] != default
        ]
        if stray:
            names = ", ".join(f"{name}:=" for name in stray)
            plural = len(stray) > 1
            raise ConfigError(
                f"launch argument{'s' if plural else ''} {names} {'are' if plural else 'is'} for the "
                "Dashboard: add dashboard:=true (or leave them out)"
            )
        return None

    listen_host, listen_port = _listen_address("dashboard_listen", given["dashboard_listen"])
    public_url = given["public_url"]
    if public_url and not public_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"launch argument public_url:={quote_input(public_url)}: give an http:// or https:// URL, e.g. "
            "http://198.18.0.10:8080"
        )
    public_host = _public_host(given["public_host"], public_url, listen_host)
    udp_port = _port("udp_port", values.get("udp_port", ""), default=DEFAULT_BASE_PORT)
    own_base = base_server_name(f"{_url_host(public_host)}:{udp_port}")
    license_bases = _unique([own_base, *_base_server_list(given["base_servers"])])
    public_url = public_url or f"http://{_url_host(public_host)}:{listen_port}"

    data_dir = Path(
        given["dashboard_data_dir"] or environ.get(DASHBOARD_DATA_DIR_ENV, "") or DASHBOARD_DEFAULT_DATA_DIR
    )
    data_dir = data_dir.expanduser().resolve()
    database_url = given["database_url"] or environ.get(DASHBOARD_DATABASE_URL_ENV, "").strip()
    database_shown = _check_database_url(database_url) if database_url else None
    storage = ["--database-url", database_url] if database_url else ["--data-dir", str(data_dir)]
    database_text = database_shown or f"SQLite in {data_dir}"

    husarnet_ros = base or husarnet_ros_command()
    dashboard_argv = [*husarnet_ros, "dashboard", "serve", "--listen", _listen_text(listen_host, listen_port)]
    dashboard_argv += ["--data-dir", str(data_dir)]
    dashboard_argv += ["--database-url", database_url] if database_url else []
    dashboard_argv += ["--public-url", public_url]
    dashboard_argv += ["--name", given["name"]] if given["name"] else []
    for server in license_bases:
        dashboard_argv += ["--base-server", server]

    websetup: ServerProcess | None = None
    websetup_text = "no Websetup (websetup_address:=), so no license.json yet"
    if given["websetup_address"]:
        address = _overlay_argument("websetup_address", given["websetup_address"])
        port = _port("websetup_port", given["websetup_port"], default=DEFAULT_WEBSETUP_PORT)
        dashboard_argv += ["--websetup-address", address, "--websetup-port", str(port)]
        websetup_text = f"Websetup [{address}]:{port}"
        websetup = ServerProcess(
            argv=(*husarnet_ros, "websetup", "--listen", f"[{address}]:{port}", *storage),
            what=f"Websetup on [{address}]:{port} (the Dashboard's database: {database_text})",
        )
    elif given["websetup_port"] != CONTROL_PLANE_DEFAULTS["websetup_port"]:
        raise ConfigError(
            "launch argument websetup_port:= needs websetup_address:=FC94 (the fc94 address of this "
            "server's husarnet-ros daemon, `husarnet-ros whoami`)"
        )
    setup_address = urlsplit(public_url).netloc
    dashboard_what = (
        f"the Dashboard on {_listen_text(listen_host, listen_port)} (public URL {public_url}; license base "
        f"servers {', '.join(license_bases)}; {websetup_text}; data dir {data_dir}; database "
        f"{database_text}); robots run: husarnet-ros setup-server {setup_address}"
    )
    return ControlPlane(
        dashboard=ServerProcess(tuple(dashboard_argv), dashboard_what),
        websetup=websetup,
        license_base_servers=tuple(license_bases),
        setup_address=setup_address,
    )


class ReadyLine:
    """Watches a process's output, in chunks as they come, for a complete line starting with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen = False
        self._partial = ""

    def feed(self, chunk: str) -> bool:
        """True the first time a whole line starting with the prefix has been fed, False otherwise."""
        if self.seen:
            return False
        *lines, self._partial = (self._partial + chunk).split("\n")
        # An endless line with no newline is not kept whole: its start is all the prefix test needs.
        self._partial = self._partial[: len(self.prefix) + 1]
        self.seen = any(line.startswith(self.prefix) for line in lines)
        return self.seen


def _listen_address(name: str, value: str) -> tuple[str, int]:
    """``[IPv6]:PORT`` or ``IPv4:PORT`` -> (address, port); ConfigError saying how to write it."""
    how = "write [IPv6]:PORT or IPv4:PORT, e.g. [::]:8080 or 198.18.0.10:8080"
    host, sep, port_text = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"launch argument {name}:={quote_input(value)}: {how}") from None
    if not sep or (address.version == 6) != bracketed:
        raise ConfigError(f"launch argument {name}:={quote_input(value)}: {how}")
    return str(address), _port(name, port_text, what=value)


def _listen_text(host: str, port: int) -> str:
    return f"{_url_host(host)}:{port}"


def _url_host(host: str) -> str:
    """A host as written before ``:port`` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _port(name: str, value: str, *, default: int | None = None, what: str | None = None) -> int:
    """A port from 1 to 65535 (``default`` when empty, if there is one); ConfigError naming the argument."""
    text = value.strip() or (str(default) if default is not None else "")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(
            f"launch argument {name}:={quote_input(what if what is not None else value)}: the port must be a "
            "number from 1 to 65535"
        )
    return int(text)


def _public_host(public_host: str, public_url: str, listen_host: str) -> str:
    """The host robots reach this server at: public_host, else public_url's host, else the Dashboard's
    listen address when it is one address (not [::] or 0.0.0.0)."""
    candidates = (
        ("public_host", public_host.strip("[]") if public_host.startswith("[") else public_host),
        ("public_url", urlsplit(public_url).hostname or "" if public_url else ""),
        ("dashboard_listen", "" if ipaddress.ip_address(listen_host).is_unspecified else listen_host),
    )
    for name, host in candidates:
        if not host:
            continue
        try:
            unspecified = ipaddress.ip_address(host).is_unspecified
        except ValueError:
            unspecified = False
        if unspecified:
            raise ConfigError(
                f"launch argument {name}: {quote_input(host)} is no address robots can reach: give this "
                "server's address with public_host:=HOST"
            )
        try:
            base_server_name(f"{_url_host(host)}:{DEFAULT_BASE_PORT}")
        except ConfigError:
            raise ConfigError(
                f"launch argument {name}: {quote_input(host)} is neither an IP address nor a host name"
            ) from None
        return host
    raise ConfigError(
        "dashboard:=true needs public_host:=HOST, the address robots reach this server at (the launch's base "
        "server goes into the license as HOST:udp_port), or a public_url:=http://HOST:PORT"
    )


def _base_server_list(text: str) -> list[str]:
    servers = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            servers.append(base_server_name(item))
        except ConfigError as exc:
            raise ConfigError(f"launch argument base_servers:=: {exc} (give HOST:PORT,HOST:PORT)") from None
    return servers


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _overlay_argument(name: str, value: str) -> str:
    try:
        return format_address(parse_overlay(value))
    except AddressError:
        raise ConfigError(
            f"launch argument {name}:={quote_input(value)} is not an fc94 overlay address: give the address "
            "of this server's husarnet-ros daemon (`husarnet-ros whoami`)"
        ) from None


def _check_database_url(url: str) -> str:
    """The URL as it may be logged (no password); ConfigError if the Dashboard could not use it."""
    from .dashboard.db import DatabaseError, parse_url  # sqlalchemy: only when a Dashboard is wanted

    try:
        return parse_url(url).render_as_string(hide_password=True)
    except DatabaseError as exc:
        raise ConfigError(f"launch argument database_url:=: {exc}") from None
