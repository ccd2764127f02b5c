"""The launch descriptions of launch/robot.launch.py, launch/fleet.launch.py and launch/server.launch.py.

Decisions live in ``husarnet_ros.launch_support`` (plain, unit-tested functions); this module only turns
launch arguments into those calls and their answers into launch actions. Order matters for one reason:
Fast DDS and Cyclone DDS read their configuration when a participant is created, so the DDS files are
written and the environment is set *before* any node starts.

robot.launch.py::

    [daemon]  ExecuteProcess `husarnet-ros daemon ...` (start_daemon true, or auto with no daemon answering)
       |      then poll its control socket (TimerAction, never blocking the launch loop), bounded
    [dds]     write the DDS files for own + peer addresses, SetEnvironmentVariable, log the `export` lines
    [nodes]   peers_node, whitelist_node, hosts_node, dds_node under the namespace
    [join]    with server:=ADDR and/or join_code:=CODE: `husarnet-ros setup-server ADDR`, then `husarnet-ros
              join` (the code in its environment, masked in the log), each only after the previous succeeded

The daemon and the nodes get HUSARNET_ROS_EXIT_WITH_PARENT=<this launch's pid> (see exit_with_parent.py):
they end when the launch ends, also when a SIGTERM (docker stop, kill) ends it without stopping its children.

server.launch.py::

    [check]      every argument (launch_support.base_server_command, control_plane); a bad one: nothing starts
    [base]       ExecuteProcess `husarnet-ros base-server ...`
    [dashboard]  with dashboard:=true: `husarnet-ros dashboard serve ...` (this base server in its license)
    [websetup]   with websetup_address:=FC94: `husarnet-ros websetup ...`, once the Dashboard printed that it
                 serves (its database is migrated by then, so two migrations never race)

Each of them exiting ends the launch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Submodule imports only: for mypy the repository's launch/ directory shadows the package `launch`.
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
    TimerAction,
)
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.events import Shutdown
from launch.events.process import ProcessIO
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from .. import dds as dds_config
from .. import launch_support as support
from ..api import resolve_control_socket
from ..core.fleet import RobotView
from ..exit_with_parent import child_environment
from ..launch_join import EnrolmentStep, enrolment_steps

PACKAGE = "husarnet_ros"
# Both in the source tree and in share/husarnet_ros/, the launch files sit next to config/.
PACKAGE_SHARE = Path(__file__).resolve().parent
LOG_PREFIX = "[husarnet_ros] "
# Default node name of each executable (the names every helper relies on).
NODE_NAMES = {
    "peers_node": "husarnet_peers",
    "whitelist_node": "husarnet_whitelist",
    "hosts_node": "husarnet_hosts",
    "dds_node": "husarnet_dds",
}


@dataclass(frozen=True)
class Argument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None

    def declare(self) -> DeclareLaunchArgument:
        kwargs: dict[str, Any] = {"choices": list(self.choices)} if self.choices else {}
        return DeclareLaunchArgument(
            self.name, default_value=self.default, description=self.description, **kwargs
        )


def share_dir(launch_file: str) -> Path:
    """share/husarnet_ros (or the source tree root) from a launch file's ``__file__``."""
    return Path(launch_file).resolve().parent.parent


def robot_arguments(share: Path) -> tuple[Argument, ...]:
    return (
        Argument(
            "namespace",
            "",
            "ROS namespace of the nodes, e.g. robot1 ('' = the robot's one in the fleet file, else none; "
            "'/' = none)",
        ),
        Argument(
            "config",
            str(share / "config" / "robot.yaml"),
            "ROS parameter file (ros__parameters) for the nodes",
        ),
        Argument("hostname", "", "this robot's hostname on the overlay ('' = the system hostname)"),
        Argument(
            "start_daemon",
            "auto",
            "start `husarnet-ros daemon` (needs root): auto = only when no daemon answers on control_socket",
            support.START_DAEMON_MODES,
        ),
        Argument(
            "control_socket",
            "",
            "control socket of the daemon ('' = $HUSARNET_ROS_CONTROL_SOCKET or default)",
        ),
        Argument(
            "state_dir", "", "state directory of a daemon this launch starts ('' = the daemon's default)"
        ),
        Argument("hosts_file", "", "hosts file a daemon this launch starts manages ('' = /etc/hosts)"),
        Argument("daemon_config", "", "YAML settings file for a daemon this launch starts ('' = none)"),
        Argument("daemon_args", "", "extra options for a daemon this launch starts, e.g. '--udp-port 5590'"),
        Argument("fleet", "", "fleet YAML file (see config/fleet.yaml; '' = none)"),
        Argument("robot", "", "this robot's name in the fleet ('' = hostname)"),
        Argument("dds", "fastdds", "DDS middleware to configure for the overlay", support.DDS_CHOICES),
        Argument(
            "dds_output_dir", "", "where the DDS files go ('' = $ROS_HOME/husarnet_ros/dds[/namespace])"
        ),
        Argument(
            "server",
            "",
            "a Dashboard to set the daemon up with once the daemon is ready (husarnet-ros setup-server ADDR)",
        ),
        Argument(
            "join_code",
            "",
            "join the Dashboard set up with this code once the daemon is ready (husarnet-ros join; ''=none)",
        ),
    )


@dataclass(frozen=True)
class RobotSettings:
    """The launch arguments of robot.launch.py, resolved and checked."""

    namespace: str
    config: str
    hostname: str
    start_daemon: str
    control_socket: str
    state_dir: str
    hosts_file: str
    daemon_config: str
    daemon_args: str
    fleet: str
    robot: str
    dds: str
    dds_output_dir: Path
    view: RobotView | None  # this robot's view of the fleet file, None without one
    enrolment: tuple[EnrolmentStep, ...] = ()  # setup-server and join, once the daemon is ready

    @classmethod
    def from_context(cls, context: LaunchContext) -> RobotSettings:
        def arg(name: str) -> str:
            return str(LaunchConfiguration(name).perform(context)).strip()

        hostname = arg("hostname") or support.system_hostname()
        fleet = arg("fleet")
        fleet = str(Path(fleet).expanduser().resolve()) if fleet else ""
        robot = arg("robot") or hostname
        view = support.fleet_view(fleet, robot)  # ConfigError (unknown robot, bad file): launch exits 1
        namespace = arg("namespace") or (view.me.namespace if view is not None else "")
        namespace = support.normalize_namespace(namespace)
        return cls(
            namespace=namespace,
            config=arg("config"),
            hostname=hostname,
            start_daemon=support.parse_start_daemon(arg("start_daemon")),
            control_socket=resolve_control_socket(arg("control_socket") or None),
            state_dir=arg("state_dir"),
            hosts_file=arg("hosts_file"),
            daemon_config=arg("daemon_config"),
            daemon_args=arg("daemon_args"),
            fleet=fleet,
            robot=robot,
            dds=support.parse_dds(arg("dds")),
            dds_output_dir=support.dds_output_dir(arg("dds_output_dir"), namespace),
            view=view,
            enrolment=tuple(
                enrolment_steps(
                    resolve_control_socket(arg("control_socket") or None),
                    arg("server"),
                    arg("join_code"),
                    hostname,
                )
            ),
        )


def _log(message: str) -> LogInfo:
    return LogInfo(msg=LOG_PREFIX + message)


_CONTROL_PLANE = support.CONTROL_PLANE_DEFAULTS
SERVER_ARGUMENTS = (
    Argument("listen", "::", "address the base server listens on (:: = IPv6 and IPv4)"),
    Argument("udp_port", "5582", "UDP port of the base server"),
    Argument("tcp_port", "443", "TCP port for robots whose network lets no UDP out (0 = no TCP)"),
    Argument("max_clients", "10000", "registered robots at most"),
    Argument("status_file", "", "also write the base server's status (JSON) here ('' = log only)"),
    Argument("status_interval", "60", "seconds between status lines in the log"),
    # The self-hosted control plane (husarnet_ros.launch_support.control_plane checks them all).
    Argument(
        "dashboard",
        _CONTROL_PLANE["dashboard"],
        "also run the Dashboard (husarnet-ros dashboard serve), with this base server in its license",
        support.BOOLEAN_CHOICES,
    ),
    Argument("dashboard_listen", _CONTROL_PLANE["dashboard_listen"], "where the Dashboard serves HTTP"),
    Argument(
        "dashboard_data_dir",
        _CONTROL_PLANE["dashboard_data_dir"],
        "the Dashboard's license key and SQLite database ('' = $HUSARNET_ROS_DASHBOARD_DATA_DIR, else "
        "/var/lib/husarnet-ros-dashboard)",
    ),
    Argument(
        "database_url",
        _CONTROL_PLANE["database_url"],
        "postgresql+psycopg://USER@HOST/DB for the Dashboard and Websetup ('' = SQLite in the data dir)",
    ),
    Argument(
        "public_host",
        _CONTROL_PLANE["public_host"],
        "this server's address as robots reach it: the license lists HOST:udp_port as a base server ('' = "
        "public_url's host, else dashboard_listen's address)",
    ),
    Argument(
        "public_url",
        _CONTROL_PLANE["public_url"],
        "how robots and browsers reach the Dashboard ('' = http://public_host:<dashboard_listen's port>)",
    ),
    Argument("name", _CONTROL_PLANE["name"], "the installation's name in the license ('' = husarnet-ros)"),
    Argument(
        "base_servers",
        _CONTROL_PLANE["base_servers"],
        "more base servers for the license, HOST:PORT,HOST:PORT (this launch's own one comes first)",
    ),
    Argument(
        "websetup_address",
        _CONTROL_PLANE["websetup_address"],
        "fc94 address of this server's husarnet-ros daemon (whitelist disabled): Websetup listens on it and "
        "the license names it ('' = no Websetup, so no license.json)",
    ),
    Argument("websetup_port", _CONTROL_PLANE["websetup_port"], "Websetup's TCP port"),
)


def server_launch_description() -> LaunchDescription:
    """launch/server.launch.py: ``husarnet-ros base-server``, and with dashboard:=true the Dashboard (and
    Websetup); the launch ends when any of them exits."""
    return LaunchDescription(
        [*(argument.declare() for argument in SERVER_ARGUMENTS), OpaqueFunction(function=_server)]
    )


def _server(context: LaunchContext) -> list[Any]:
    value = {
        argument.name: str(LaunchConfiguration(argument.name).perform(context))
        for argument in SERVER_ARGUMENTS
    }
    # Every argument is checked before anything starts: a ConfigError here ends the launch with its message.
    base_server_argv = support.base_server_command(
        listen=value["listen"],
        udp_port=value["udp_port"],
        tcp_port=value["tcp_port"],
        max_clients=value["max_clients"],
        status_file=value["status_file"],
        status_interval=value["status_interval"],
    )
    plane = support.control_plane(value)
    server = _ending_process(base_server_argv, "husarnet_base_server", "the base server")
    actions = [
        _log(
            f"starting a base server on UDP port {value['udp_port']}"
            + (f" and TCP port {value['tcp_port']}" if value["tcp_port"] not in ("", "0") else "")
        ),
        *server,
    ]
    if plane is not None:
        actions += _control_plane(plane)
    return actions


def _ending_process(argv: Sequence[str], name: str, what: str) -> list[Any]:
    """``argv`` as a process of this launch that ends the launch when it exits (first its ExecuteProcess)."""
    process = ExecuteProcess(
        cmd=list(argv),
        name=name,
        output="screen",
        sigterm_timeout="10",
        additional_env=child_environment(),
    )
    return [
        process,
        RegisterEventHandler(
            OnProcessExit(
                target_action=process,
                on_exit=[
                    _log(f"{what} exited: stopping this launch"),
                    EmitEvent(event=Shutdown(reason=f"{what} exited")),
                ],
            )
        ),
    ]


def _control_plane(plane: support.ControlPlane) -> list[Any]:
    """The Dashboard, then Websetup once the Dashboard has migrated the database they share."""
    dashboard = _ending_process(plane.dashboard.argv, "husarnet_dashboard", "the Dashboard")
    actions = [_log("starting " + plane.dashboard.what), *dashboard]
    websetup = plane.websetup
    if websetup is None:
        return actions
    ready = support.ReadyLine(support.DASHBOARD_READY_PREFIX)

    def start_websetup(event: ProcessIO) -> list[Any] | None:
        if not ready.feed(event.text.decode(errors="replace")):
            return None
        return [
            _log("starting " + websetup.what),
            *_ending_process(websetup.argv, "husarnet_websetup", "Websetup"),
        ]

    return [*actions, RegisterEventHandler(OnProcessIO(target_action=dashboard[0], on_stdout=start_websetup))]


def robot_launch_description(share: Path) -> LaunchDescription:
    return LaunchDescription(
        [*(argument.declare() for argument in robot_arguments(share)), OpaqueFunction(function=_robot)]
    )


def _robot(context: LaunchContext) -> list[Any]:
    settings = RobotSettings.from_context(context)
    # One probe both tells whether a daemon runs and gives DDS its addresses (none needed when told to start).
    daemon = None if settings.start_daemon == "true" else support.query_daemon(settings.control_socket)
    if not support.should_start_daemon(settings.start_daemon, lambda: daemon is not None):
        return _configure_and_start(settings, daemon)
    daemon = ExecuteProcess(
        cmd=support.daemon_command(
            control_socket=settings.control_socket,
            state_dir=settings.state_dir,
            hostname=settings.hostname,
            hosts_file=settings.hosts_file,
            config_file=settings.daemon_config,
            extra_args=settings.daemon_args,
        ),
        name="husarnet_daemon",
        output="screen",
        sigterm_timeout="10",
        additional_env=child_environment(),
    )
    deadline = time.monotonic() + support.DAEMON_START_WAIT_S
    return [
        _log(f"starting the daemon (control socket {settings.control_socket})"),
        daemon,
        RegisterEventHandler(
            OnProcessExit(
                target_action=daemon,
                on_exit=[
                    _log("the husarnet daemon exited: stopping this launch"),
                    EmitEvent(event=Shutdown(reason="husarnet daemon exited")),
                ],
            )
        ),
        OpaqueFunction(function=_wait_for_daemon, args=[settings, deadline]),
    ]


def _wait_for_daemon(_context: LaunchContext, settings: RobotSettings, deadline: float) -> list[Any]:
    # Polled through timers: a blocking wait here would stall the launch loop, which has not even spawned
    # the daemon process yet (ExecuteProcess spawns from an asyncio task).
    daemon = support.query_daemon(settings.control_socket, timeout_s=0.5)
    if daemon is not None:
        return _configure_and_start(settings, daemon)
    if time.monotonic() >= deadline:
        return [
            _log(
                f"the daemon did not answer at {settings.control_socket} within "
                f"{support.DAEMON_START_WAIT_S:.0f} s; starting the nodes anyway (they retry)"
            ),
            *_configure_and_start(settings, None),
        ]
    retry = OpaqueFunction(function=_wait_for_daemon, args=[settings, deadline])
    return [TimerAction(period=support.DAEMON_POLL_PERIOD_S, actions=[retry])]


def _configure_and_start(settings: RobotSettings, daemon: support.DaemonInfo | None) -> list[Any]:
    actions: list[Any] = []
    mismatch = support.address_mismatch(settings.view, daemon)
    if mismatch:
        actions.append(_log("WARNING: " + mismatch))
    if settings.dds != "none":
        addresses = support.dds_peers(settings.view, daemon)
        mtu = dds_config.overlay_mtu(daemon.status if daemon is not None else None)
        env = support.dds_environment(settings.dds, settings.dds_output_dir, addresses, mtu)
        env_file = support.write_env_file(settings.dds_output_dir, env)
        actions += [SetEnvironmentVariable(name, value) for name, value in sorted(env.items())]
        actions.append(
            _log(
                f"DDS ({settings.dds}) over the overlay: own {addresses.own}, peers "
                f"{', '.join(addresses.peers) or 'none yet'} (from {addresses.source}). For your own nodes:\n"
                f"{support.export_lines(env)}\n(or: . {env_file})"
            )
        )
    actions += _nodes(settings)
    actions += _enrolment(list(settings.enrolment))
    return actions


def _enrolment(steps: list[EnrolmentStep]) -> list[Any]:
    """Run ``steps`` one after the other, each only when the one before succeeded; a failure is logged (what
    the CLI said is on screen above it) and the launch goes on without the Dashboard."""
    if not steps:
        return []
    step, rest = steps[0], steps[1:]
    process = ExecuteProcess(
        cmd=step.argv,
        name="husarnet_enrolment",
        output="screen",
        additional_env={**child_environment(), **step.env},
    )

    def after(event: Any, _context: LaunchContext) -> list[Any]:
        if event.returncode != 0:
            return [_log(f"{step.what} failed (exit status {event.returncode}); the nodes go on without it")]
        return [_log(f"{step.what}: done"), *_enrolment(rest)]

    return [
        _log(f"{step.what} (the daemon is ready)"),
        process,
        RegisterEventHandler(OnProcessExit(target_action=process, on_exit=after)),
    ]


def _nodes(settings: RobotSettings) -> list[Node]:
    config = Path(settings.config) if settings.config else None
    parameter_files: list[Any] = [str(config)] if config is not None and config.is_file() else []
    common: dict[str, str] = {"control_socket": settings.control_socket}
    fleet: dict[str, str] = {"fleet_file": settings.fleet, "robot": settings.robot}

    def node(executable: str, overrides: dict[str, str]) -> Node:
        # What the launch decided must beat the parameter file, also its node-specific entries
        # (`/**/husarnet_dds:` wins over `/**`, whatever the order): same key, in a file given after it.
        values = {**common, **overrides}
        override_file = support.write_parameter_overrides(NODE_NAMES[executable], values)
        return Node(
            package=PACKAGE,
            executable=executable,
            namespace=settings.namespace,
            parameters=[*parameter_files, str(override_file)],
            output="screen",
            additional_env=child_environment(),
        )

    nodes = [
        node("peers_node", {}),
        node("whitelist_node", fleet),
        node("hosts_node", fleet),
    ]
    if settings.dds != "none":
        nodes.append(
            node("dds_node", {**fleet, "output_dir": str(settings.dds_output_dir), "rmw": settings.dds})
        )
    return nodes


# --- fleet.launch.py ----------------------------------------------------------------------------------------


def fleet_arguments(share: Path) -> tuple[Argument, ...]:
    passed_on = {"config", "start_daemon", "control_socket", "state_dir", "hosts_file", "daemon_config"}
    passed_on |= {"daemon_args", "dds", "dds_output_dir"}
    inherited = tuple(a for a in robot_arguments(share) if a.name in passed_on)
    return (
        Argument("fleet", str(share / "config" / "fleet.yaml"), "fleet YAML file describing every robot"),
        Argument("robot", "", "which robot of the fleet this launch is ('' = the system hostname)"),
        *inherited,
    )


def fleet_launch_description(share: Path) -> LaunchDescription:
    def include(context: LaunchContext) -> list[Any]:
        fleet = str(LaunchConfiguration("fleet").perform(context))
        robot = str(LaunchConfiguration("robot").perform(context)).strip() or support.system_hostname()
        member = support.fleet_robot(fleet, robot)  # ConfigError names the robots of the fleet
        arguments = {a.name: LaunchConfiguration(a.name) for a in fleet_arguments(share)}
        arguments |= {
            "fleet": str(Path(fleet).expanduser().resolve()),
            "robot": member.robot,
            "namespace": member.namespace,
            "hostname": member.hostname,
        }
        source = PythonLaunchDescriptionSource(str(share / "launch" / "robot.launch.py"))
        return [
            _log(f"robot {member.robot} of fleet {fleet} (namespace {member.namespace or '/'})"),
            IncludeLaunchDescription(source, launch_arguments=list(arguments.items())),
        ]

    return LaunchDescription(
        [*(argument.declare() for argument in fleet_arguments(share)), OpaqueFunction(function=include)]
    )
