"""Node ``husarnet_peers``: the daemon's peer table and status as ROS topics, and REP 107 diagnostics.

Publishes (relative names, so a launch namespace applies):

- ``husarnet/peers`` (husarnet_ros/msg/PeerArray) and ``husarnet/status`` (husarnet_ros/msg/Status), latched
  (RELIABLE, TRANSIENT_LOCAL, depth 1): both at once, when anything but the stamps and the per-packet values
  (rx/tx bytes, last_seen, rtt) changed, and every ``publish_period_s`` in any case.
- ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period_s``: see ros/diagnostics.py.

The daemon is polled every ``poll_period_s`` (one GET /status gives the status and the table). While it
does not answer: Status.daemon_running is false, the peer table is empty (nothing live is known), the
diagnostics say ERROR (never answered) or STALE (stopped answering), and the daemon is asked again every
``retry_period_s``; the node never exits because of it.

Parameters: ``control_socket``, ``retry_period_s`` (ros/common.py) and PEERS_PARAMETERS below.
"""

from __future__ import annotations

import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Header

from husarnet_ros.msg import PeerArray
from husarnet_ros.msg import Status as StatusMsg

from ..api import Status
from ..client import ControlClient
from .common import (
    COMMON_PARAMETERS,
    DIAGNOSTICS_QOS,
    LATCHED_QOS,
    DaemonLink,
    LinkState,
    ParamSpec,
    declare_parameters,
    param_float,
    periodic_timer,
    run_node,
)
from .convert import daemon_down_status, peer_table_key, peers_to_msg, status_key, status_to_msg
from .diagnostics import DaemonHealth, PeerTracker, build_diagnostics

NODE_NAME = "husarnet_peers"
PEERS_TOPIC = "husarnet/peers"
STATUS_TOPIC = "husarnet/status"
DIAGNOSTICS_TOPIC = "/diagnostics"

PEERS_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "publish_period_s",
        2.0,
        "Seconds between publications of husarnet/peers and husarnet/status when nothing changed",
        min_value=0.1,
        max_value=3600.0,
    ),
    ParamSpec(
        "poll_period_s",
        0.5,
        "Seconds between two reads of the daemon's status and peer table (how fast a change is seen)",
        min_value=0.05,
        max_value=60.0,
    ),
    ParamSpec(
        "latency_warn_ms",
        200.0,
        "Round-trip time in ms above which a peer's diagnostic status is WARN",
        min_value=0.0,
        min_exclusive=True,
    ),
    ParamSpec(
        "diagnostics_period_s",
        1.0,
        "Seconds between two publications on /diagnostics",
        min_value=0.1,
        max_value=60.0,
    ),
)


def _read_status(client: ControlClient) -> Status:
    return client.status()


class PeersNode(Node):
    def __init__(self, **node_options: Any) -> None:
        super().__init__(NODE_NAME, **node_options)
        declare_parameters(self, (*COMMON_PARAMETERS, *PEERS_PARAMETERS))
        self._link = DaemonLink.from_parameters(self)
        self._tracker = PeerTracker()
        self._last_status: Status | None = None
        self._published_keys: tuple[object, object] | None = None
        self._last_publish = -float("inf")

        self._peers_pub = self.create_publisher(PeerArray, PEERS_TOPIC, LATCHED_QOS)
        self._status_pub = self.create_publisher(StatusMsg, STATUS_TOPIC, LATCHED_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        periodic_timer(self, "poll_period_s", self._poll)
        periodic_timer(self, "diagnostics_period_s", self._publish_diagnostics)
        self.add_post_set_parameters_callback(self._parameters_changed)
        # Subscribers (and a launch test) get the state at once rather than after the first period.
        self._poll()
        self._publish_diagnostics()

    def close(self) -> None:
        self._link.close()

    def _parameters_changed(self, parameters: list[Parameter[Any]]) -> None:
        if any(parameter.name == "control_socket" for parameter in parameters):
            # Another daemon: what was known about the old one does not describe it.
            self._last_status = None
            self._tracker = PeerTracker()

    def _poll(self) -> None:
        status = self._link.call(_read_status)
        stamp = self.get_clock().now().to_msg()
        if status is not None:
            self._last_status = status
            self._tracker.update(status.peers, time.time())
            peers_msg = peers_to_msg(status.peers, stamp)
            status_msg = status_to_msg(status, stamp)
            table_key: object = peer_table_key(status.peers)
        elif self._link.state is LinkState.DOWN:
            peers_msg = peers_to_msg([], stamp)
            status_msg = daemon_down_status(stamp, self._last_status)
            table_key = "daemon down"
        else:
            return  # the daemon answered but refused (logged by the link): keep what was published
        keys = (table_key, status_key(status_msg))
        due = time.monotonic() - self._last_publish >= param_float(self, "publish_period_s")
        if due or keys != self._published_keys:
            self._peers_pub.publish(peers_msg)
            self._status_pub.publish(status_msg)
            self._published_keys = keys
            self._last_publish = time.monotonic()

    def _publish_diagnostics(self) -> None:
        health = DaemonHealth(
            answering=self._link.up,
            ever_answered=self._link.ever_answered,
            socket_path=self._link.socket_path,
            error=self._link.last_error,
            status=self._last_status,
        )
        statuses = build_diagnostics(health, self._tracker, param_float(self, "latency_warn_ms"), time.time())
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id="")
        self._diagnostics_pub.publish(DiagnosticArray(header=header, status=statuses))


def main(args: list[str] | None = None) -> None:
    run_node(PeersNode, args)


if __name__ == "__main__":
    main()
