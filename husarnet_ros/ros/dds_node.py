"""``husarnet_dds``: keeps the DDS configuration files current as the fleet and the daemon's peers change.

Every ``poll_period_s`` it computes this robot's overlay address (from the daemon, else from the fleet
file) and its DDS peers: the fleet members this robot may talk to (``fleet_file`` / ``robot``) and, with
``include_discovered``, the peers the daemon allows (its whitelist; every known peer when the whitelist is
off). It then writes the Fast DDS and/or Cyclone DDS files (husarnet_ros.dds: atomic, only when the content
changed) and logs the environment to export, once and again whenever it changes.

Middleware reads these files when a participant is created: a running process keeps its peers, a process
started later gets the new ones. The node publishes nothing; the files and the log are its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rclpy.node import Node

from .. import dds
from ..api import Status, Whitelist
from ..client import ControlClient
from ..core.errors import HusarnetError
from ..core.fleet import Fleet, RobotView, load_fleet
from .common import (
    COMMON_PARAMETERS,
    FLEET_PARAMETERS,
    DaemonLink,
    ParamSpec,
    declare_parameters,
    param_bool,
    param_str,
    periodic_timer,
    run_node,
)

NODE_NAME = "husarnet_dds"

DDS_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "output_dir",
        "",
        "Directory of the generated DDS files; empty = $ROS_HOME/husarnet_ros/dds (or "
        "~/.ros/husarnet_ros/dds), in a subdirectory named after the node's namespace",
    ),
    ParamSpec(
        "rmw",
        "auto",
        "Which middleware to configure: fastdds, cyclonedds or auto (both files)",
        choices=dds.RMW_CHOICES,
    ),
    ParamSpec(
        "poll_period_s", 2.0, "Seconds between checks of the fleet file and the daemon's peers", 0.1, 3600.0
    ),
    ParamSpec(
        "include_discovered",
        True,
        "Also use the peers the daemon allows (its whitelist), not only the fleet file's members",
    ),
)


@dataclass(frozen=True)
class _DaemonView:
    status: Status
    whitelist: Whitelist


def _daemon_view(client: ControlClient) -> _DaemonView:
    return _DaemonView(client.status(), client.whitelist())


class _FleetCache:
    """The parsed fleet file, re-read only when the file changes; errors are logged once per message."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._key: tuple[str, int, int] | None = None
        self._fleet: Fleet | None = None
        self._last_error = ""

    def get(self, path: str) -> Fleet | None:
        if not path:
            return None
        try:
            info = Path(path).expanduser().stat()
            key = (path, info.st_mtime_ns, info.st_size)
            if key != self._key:
                self._fleet, self._key = load_fleet(Path(path).expanduser()), key
                self._last_error = ""
            return self._fleet
        except (OSError, HusarnetError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._error(f"fleet file {path}: {message}" if isinstance(exc, OSError) else message)
            self._key, self._fleet = None, None
            return None

    def _error(self, message: str) -> None:
        if message != self._last_error:
            self._node.get_logger().error(f"{message}; using the daemon's peers only until it is fixed")
            self._last_error = message


class DdsNode(Node):
    def __init__(self, **node_options: Any) -> None:
        """``node_options`` go to rclpy's Node (e.g. ``parameter_overrides``, ``namespace``, ``context``)."""
        super().__init__(NODE_NAME, **node_options)
        declare_parameters(self, (*COMMON_PARAMETERS, *FLEET_PARAMETERS, *DDS_PARAMETERS))
        self.link = DaemonLink.from_parameters(self)
        self._fleet = _FleetCache(self)
        self._written: tuple[Path, str, str | None, tuple[str, ...], int] | None = None
        self._exported: dict[str, str] | None = None
        self._last_problem = ""
        periodic_timer(self, "poll_period_s", self.poll)
        self.poll()

    # --- parameters --------------------------------------------------------------------------------------
    def output_dir(self) -> Path:
        configured = param_str(self, "output_dir")
        if configured:
            return Path(configured).expanduser()
        return dds.default_output_dir(self.get_namespace())

    # --- the work --------------------------------------------------------------------------------------
    def _problem(self, message: str) -> None:
        """Say why nothing can be written yet, once per distinct reason."""
        if message != self._last_problem:
            self.get_logger().warning(message)
            self._last_problem = message

    def desired(self) -> tuple[str | None, list[str], int] | None:
        """(own address, peers, overlay MTU) to write now, or None when there is nothing to go on yet."""
        view = self.link.call(_daemon_view)
        fleet = self._fleet.get(param_str(self, "fleet_file"))
        me: RobotView | None = None
        if fleet is not None:
            robot = param_str(self, "robot") or (view.status.hostname if view else "")
            if not robot:
                self._problem(
                    "robot is empty and the daemon is not answering: cannot tell who I am in the fleet"
                )
            else:
                try:
                    me = fleet.view(robot)
                except HusarnetError as exc:
                    self._problem(str(exc))
        discovered = view is not None and param_bool(self, "include_discovered")
        own, peers = dds.own_and_peers(
            me, view.status if view else None, view.whitelist if view and discovered else None
        )
        if own is None and not peers:
            self._problem(
                "no DDS peers yet: the daemon is not answering and no fleet file gives any "
                f"(control socket {self.link.socket_path})"
            )
            return None
        return own, peers, dds.overlay_mtu(view.status if view else None)

    def poll(self) -> None:
        wanted = self.desired()
        if wanted is None:
            return
        own, peers, mtu = wanted
        output_dir = self.output_dir()
        rmw = param_str(self, "rmw")
        key = (output_dir, rmw, own, tuple(peers), mtu)
        try:
            # Every poll: costs a read of two small files, and puts back a file someone removed.
            env = dds.write_config(output_dir, own, peers, rmw=rmw, mtu=mtu)
        except HusarnetError as exc:
            self._problem(f"cannot write the DDS configuration: {exc}")
            return
        self._last_problem = ""
        if key == self._written:
            return
        self._written = key
        self.get_logger().info(
            f"DDS configuration in {output_dir}: own address {own or 'unknown'}, "
            f"{len(peers)} peer(s): {', '.join(peers) or 'none'}"
        )
        if env != self._exported:
            self._exported = env
            # The same lines as `husarnet-ros dds env` and the launch's env.sh (both Fast DDS variable names).
            self.get_logger().info(f"for ROS processes on this robot:\n{dds.export_lines(env)}")

    def close(self) -> None:
        self.link.close()


def main(args: list[str] | None = None) -> None:
    run_node(DdsNode, args)


if __name__ == "__main__":
    main()
