"""Hosts sync (``husarnet_hosts``): keeps the names of this robot's peers in the daemon's managed hosts block.

Every ``sync_period_s`` (and at start) the block is made to hold:

- the names of the fleet peers of this robot (``fleet_file``, ``robot``; the file is read again on every
  sync, so an edit takes effect without a restart; while it is unusable the last good view is kept and the
  problem logged once), and
- when ``include_discovered`` is true, the hostnames the daemon learned for the peers this robot may talk to
  (whitelisted ones, or every peer while the whitelist is off). The fleet file wins a name both claim; a
  name two peers claim is left out.

Names this node put there (or found there as it wanted them) are removed once no longer wanted; entries it
never wanted are never touched (the ownership rule is in ``fleet_sync``). Every change goes through the
daemon's control API, whose privileged helper writes the hosts file.
"""

from __future__ import annotations

from typing import Any

from rclpy.node import Node

from ..api import HostEntry, Status
from ..core.errors import ConfigError
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
from .daemon_calls import hosts_add, hosts_remove
from .fleet_sync import (
    FleetState,
    HostsLedger,
    discovered_hosts,
    load_fleet_view,
    reachable_peers,
    wanted_hosts,
)

NODE_NAME = "husarnet_hosts"
HOSTS_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "sync_period_s",
        5.0,
        "Seconds between two syncs of the managed hosts block",
        min_value=0.1,
        max_value=3600.0,
    ),
    ParamSpec(
        "include_discovered",
        True,
        "Also keep the hostnames the daemon learned for whitelisted peers (PeerStatus.hostname)",
    ),
)


def _as_map(entries: list[HostEntry]) -> dict[str, str]:
    return {entry.hostname: entry.address for entry in entries}


class HostsNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self, (*COMMON_PARAMETERS, *FLEET_PARAMETERS, *HOSTS_PARAMETERS))
        self._link = DaemonLink.from_parameters(self)
        self.ledger = HostsLedger()
        self._fleet: FleetState | None = None
        self._fleet_key: tuple[str, str] | None = None
        self._adopted = False
        self._last_error = ""
        periodic_timer(self, "sync_period_s", self.sync)
        self.sync()

    def close(self) -> None:
        self._link.close()

    def _fleet_state(self, status: Status) -> FleetState | None:
        """The fleet as this robot sees it now; the last good one while the file is unusable."""
        fleet_file, robot = param_str(self, "fleet_file"), param_str(self, "robot")
        key = (fleet_file, robot)
        if key != self._fleet_key:
            # Other parameters: the view read for the old ones is not a fallback any more.
            self._fleet, self._fleet_key, self._adopted = None, key, False
        try:
            self._fleet = load_fleet_view(fleet_file, robot, status.hostname)
        except ConfigError as exc:
            kept = " (keeping the names of the last valid fleet file)" if self._fleet is not None else ""
            message = f"fleet file not used: {exc}{kept}"
            if message != self._last_error:
                self.get_logger().error(message)
                self._last_error = message
            return self._fleet
        if self._last_error:
            self.get_logger().info(f"fleet file {fleet_file} is valid again")
        self._last_error = ""
        return self._fleet

    def sync(self) -> None:
        """One pass: read the daemon's state, work out the wanted names, add and remove what differs."""
        status = self._link.call(lambda c: c.status())
        if status is None:
            return
        entries = self._link.call(lambda c: c.hosts())
        if entries is None:
            return
        current = _as_map(entries)
        state = self._fleet_state(status)
        fleet_hosts = state.view.hosts if state is not None else {}
        discovered: dict[str, str] = {}
        if param_bool(self, "include_discovered"):
            discovered = discovered_hosts(reachable_peers(status.peers, status.whitelist_enabled))
        wanted = wanted_hosts(fleet_hosts, discovered, reserved=(status.hostname,))
        if state is not None and not self._adopted:
            # Names a previous run wrote for robots of this fleet are ours to clean up.
            self.ledger.adopt({m.name: m.address for m in state.fleet.members.values()}, current)
            self._adopted = True
        plan = self.ledger.plan(wanted, current)
        for name, address in plan.add.items():
            written = self._link.call(hosts_add(name, address))
            if written is None:
                break
            current = _as_map(written)
            self.get_logger().info(f"hosts: {name} -> {address}")
        else:
            for name in plan.remove:
                left = self._link.call(hosts_remove(name))
                if left is None:
                    break
                current = _as_map(left)
                self.get_logger().info(f"hosts: removed {name} (no longer a peer)")
        self.ledger.settle(wanted, current)


def main(args: list[str] | None = None) -> None:
    run_node(HostsNode, args)


if __name__ == "__main__":
    main()
