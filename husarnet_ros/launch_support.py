"""Decisions the launch files make, as plain functions (no launch, no rclpy), so they are unit-tested.

``launch/robot.launch.py`` and ``launch/fleet.launch.py`` only turn launch arguments into calls of these
functions and the answers into launch actions:

* whether to start the daemon (``start_daemon`` auto/true/false) and the command that starts it;
* the robot's view of a fleet file (whitelist, hosts, DDS peers) and the namespace / hostname it implies;
* the own overlay address and the peer addresses the DDS configuration lists (daemon first, fleet second);
* the DDS files and the environment variables to set for the nodes (and to print for the user's nodes).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import dds as dds_config
from .api import Status, Whitelist, resolve_control_socket
from .client import ClientError, ControlClient
from .core.constants import DEFAULT_MTU
from .core.errors import ConfigError
from .core.fleet import RobotView, load_fleet
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
