"""Whitelist manager (``husarnet_whitelist``): peer services and the fleet file's whitelist and hostnames.

Services (relative names, so a launch namespace applies):

- ``husarnet/add_peer`` (AddPeer): whitelist an address; with a hostname also write ``hostname address`` to
  the managed hosts block; a hostname alone is resolved through the fleet file, then the daemon.
- ``husarnet/remove_peer`` (RemovePeer): take the peer off the whitelist and its names out of the hosts block
  (success when it is not on the whitelist afterwards, also when it was not there).
- ``husarnet/list_peers`` (ListPeers): the daemon's peer table.
- ``husarnet/ping`` (Ping): one authenticated overlay ping; ``timeout_s`` <= 0 means 2 s.

A malformed request (not an fc94::/16 address, bad hostname, both fields empty) or a daemon that is not
running gives ``success=false`` and a message saying why; no exception leaves a callback. Services run in a
reentrant callback group on a multi-threaded executor, so a ping waiting for its reply stalls nothing else.

Fleet file (``fleet_file``, ``robot``): when the daemon first answers, whenever it restarted (its uptime went
back) or came back after an outage, when the file changes on disk and when either parameter changes, every
peer of the robot's view is whitelisted and its name written to the hosts block. Only additions: entries the
user made are never removed, and a robot dropped from the file stays whitelisted until removed by
``remove_peer`` or a daemon restart with a fresh whitelist. The peers' static endpoints (``endpoint:`` in
the file) are synced both ways: missing ones added, and the ones this node added removed once the file no
longer gives them; ones added by hand (``husarnet-ros endpoint add``) are never removed
(``fleet_sync.EndpointLedger``). The fleet's ``base_servers`` are synced the same way (``husarnet-ros base``;
``fleet_sync.BaseServerLedger``). A fleet file that cannot be used (missing, invalid, robot not listed) is
logged as an ERROR, once per change of the file, and the node keeps serving its services: a typo must be
loud, but must not take the peer services down with it. A change the daemon refuses (e.g. a base server over
its limit) is logged as an ERROR too, and tried again when the file, the parameters or the daemon change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter

from husarnet_ros.msg import Peer
from husarnet_ros.srv import AddPeer, ListPeers, Ping, RemovePeer

from ..api import Status
from ..client import ControlClient, NotFound
from ..core.errors import ConfigError
from .common import (
    COMMON_PARAMETERS,
    FLEET_PARAMETERS,
    DaemonLink,
    Reply,
    declare_parameters,
    param_str,
    periodic_timer,
    run_node,
)
from .convert import UNKNOWN_RTT_MS, path_code, peer_to_msg
from .daemon_calls import hosts_add, hosts_remove, whitelist_add, whitelist_remove
from .fleet_sync import (
    BaseServerLedger,
    EndpointLedger,
    FleetState,
    Key,
    OwnershipLedger,
    StaticKey,
    address_mismatch,
    hosts_to_write,
    load_fleet_view,
    whitelist_missing,
)
from .peer_target import InvalidPeerRequest, PeerTarget, parse_peer_target, ping_timeout

NODE_NAME = "husarnet_whitelist"
FileStamp = tuple[int, int] | None


@dataclass(frozen=True)
class _ListCalls(Generic[Key]):
    """The calls that read and change one daemon list the fleet syncs both ways; each gives the keys the list
    holds afterwards."""

    what: str  # for the log: "static endpoints", "base servers"
    listed: Callable[[ControlClient], list[Key]]
    add: Callable[[ControlClient, Key], list[Key]]
    remove: Callable[[ControlClient, Key], list[Key]]  # also when someone else removed it first

    def adding(self, key: Key) -> Callable[[ControlClient], list[Key]]:
        return lambda client: self.add(client, key)

    def removing(self, key: Key) -> Callable[[ControlClient], list[Key]]:
        def remove(client: ControlClient) -> list[Key]:
            try:
                return self.remove(client, key)
            except NotFound:  # already gone: the goal is reached
                return self.listed(client)

        return remove


STATIC_ENDPOINTS = _ListCalls[StaticKey](
    "static endpoints",
    listed=lambda client: [entry.key for entry in client.static_endpoints()],
    add=lambda client, key: [entry.key for entry in client.static_endpoint_add(*key)],
    remove=lambda client, key: [entry.key for entry in client.static_endpoint_remove(*key)],
)
BASE_SERVERS = _ListCalls[str](
    "base servers",
    listed=lambda client: [server.address for server in client.base_servers()],
    add=lambda client, name: [server.address for server in client.base_add(name)],
    remove=lambda client, name: [server.address for server in client.base_remove(name)],
)


def _file_stamp(path: str) -> FileStamp:
    """What tells an edited fleet file from the one already applied (None when it cannot be read)."""
    try:
        info = Path(path).expanduser().stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)


class WhitelistNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self, (*COMMON_PARAMETERS, *FLEET_PARAMETERS))
        self._link = DaemonLink.from_parameters(self)
        self._lock = threading.Lock()
        self._fleet: FleetState | None = None
        # What the fleet was last applied for: (file, robot, file stamp, daemon address); None = apply again.
        self._applied_for: tuple[str, str, FileStamp, str] | None = None
        self._last_error = ""
        self._last_uptime_s: float | None = None
        # What this node added to the daemon's lists (only _apply_fleet uses them).
        self._endpoints = EndpointLedger()
        self._base_servers = BaseServerLedger()

        services = ReentrantCallbackGroup()
        self.create_service(AddPeer, "husarnet/add_peer", self._add_peer, callback_group=services)
        self.create_service(RemovePeer, "husarnet/remove_peer", self._remove_peer, callback_group=services)
        self.create_service(ListPeers, "husarnet/list_peers", self._list_peers, callback_group=services)
        self.create_service(Ping, "husarnet/ping", self._ping, callback_group=services)

        periodic_timer(self, "retry_period_s", self._reconcile, MutuallyExclusiveCallbackGroup())
        self.add_post_set_parameters_callback(self._parameters_changed)
        self._reconcile()

    def close(self) -> None:
        self._link.close()

    def _parameters_changed(self, parameters: list[Parameter[Any]]) -> None:
        if any(parameter.name in ("fleet_file", "robot", "control_socket") for parameter in parameters):
            with self._lock:
                self._applied_for = None

    # --- the fleet file ------------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Apply the fleet file when the daemon, the file or the parameters changed since the last time."""
        status = self._link.call(lambda c: c.status())
        if status is None:
            with self._lock:
                if not self._link.up:
                    self._applied_for = None  # an outage: the daemon may come back with another whitelist
                self._last_uptime_s = None
            return
        fleet_file, robot = param_str(self, "fleet_file"), param_str(self, "robot")
        key = (fleet_file, robot, _file_stamp(fleet_file) if fleet_file else None, status.address)
        with self._lock:
            restarted = self._last_uptime_s is not None and status.uptime_s < self._last_uptime_s
            self._last_uptime_s = status.uptime_s
            if self._applied_for == key and not restarted:
                return
        if self._apply_fleet(fleet_file, robot, status):
            with self._lock:
                self._applied_for = key

    def _apply_fleet(self, fleet_file: str, robot: str, status: Status) -> bool:
        """Whitelist the robot's fleet peers and write their names; False when it should be tried again."""
        try:
            state = load_fleet_view(fleet_file, robot, status.hostname)
        except ConfigError as exc:
            self._fleet = None
            message = f"fleet file not applied: {exc}"
            if message != self._last_error:
                self.get_logger().error(message)
                self._last_error = message
            return True  # retried when the file, the parameters or the daemon change
        self._last_error = ""
        self._fleet = state
        if state is None:
            return True
        warning = address_mismatch(state, status.address)
        if warning:
            self.get_logger().warning(warning)
        whitelist = self._link.request(lambda c: c.whitelist())
        hosts = self._link.request(lambda c: c.hosts())
        if whitelist.value is None or hosts.value is None:
            return not self._failed_to_apply(whitelist.error or hosts.error)
        current_hosts = {entry.hostname: entry.address for entry in hosts.value}
        added: list[str] = []
        for address in whitelist_missing(state.view.whitelist, whitelist.value.addresses):
            reply = self._link.request(whitelist_add(address))
            if not reply.ok:
                return not self._failed_to_apply(reply.error)
            added.append(address)
        written: list[str] = []
        for name, address in hosts_to_write(state.view.hosts, current_hosts).items():
            written_reply = self._link.request(hosts_add(name, address))
            if not written_reply.ok:
                return not self._failed_to_apply(written_reply.error)
            written.append(name)
        # Each list is synced even when the other failed: a refused endpoint must not hold the bases back.
        endpoints, endpoint_error = self._sync(self._endpoints, state.view.static_endpoints, STATIC_ENDPOINTS)
        bases, base_error = self._sync(self._base_servers, list(state.view.base_servers), BASE_SERVERS)
        if endpoints is None or bases is None:
            return not self._failed_to_apply("; ".join(filter(None, (endpoint_error, base_error))))
        self.get_logger().info(
            f"fleet file {state.source} applied as robot {state.robot!r}: {len(state.view.peers)} peer(s) "
            f"({', '.join(p.name for p in state.view.peers) or 'none'}); whitelisted {len(added)} new, "
            f"wrote {len(written)} host name(s), {endpoints}, {bases}"
        )
        return True

    def _sync(
        self, ledger: OwnershipLedger[Key], wanted: list[Key], calls: _ListCalls[Key]
    ) -> tuple[str | None, str]:
        """Add the fleet's missing entries to a daemon list, remove the ones this node owns that the fleet no
        longer gives; (what changed, "") or (None, the daemon's first error)."""
        listed = self._link.request(calls.listed)
        if listed.value is None:
            return None, listed.error
        current = listed.value
        plan = ledger.plan(wanted, current)
        errors: list[str] = []
        added = removed = 0
        for key in plan.add:
            reply = self._link.request(calls.adding(key))
            if reply.value is None:
                # The next ones would meet the same refusal (a limit, most likely). The removals still run:
                # an entry the file replaced makes room, and the next application adds its successor.
                errors.append(reply.error)
                break
            current, added = reply.value, added + 1
        for key in plan.remove:
            gone = self._link.request(calls.removing(key))
            if gone.value is None:
                errors.append(gone.error)
                break
            current, removed = gone.value, removed + 1
        ledger.settle(wanted, current)  # the list as the daemon last gave it, also after a refusal
        if errors:
            return None, errors[0]
        return f"{calls.what}: {added} added, {removed} removed", ""

    def _failed_to_apply(self, error: str) -> bool:
        """Log why the fleet could not be applied; True when trying again later makes sense."""
        if not self._link.up:
            return True  # the outage is logged by the link; applied when the daemon is back
        self.get_logger().error(f"fleet file not fully applied, the daemon refused: {error}")
        return False

    # --- services ------------------------------------------------------------------------------------------

    def _guarded(self, response: Any, work: Callable[[Any], None]) -> Any:
        """Run ``work(response)``; a failure becomes ``success=false`` and a message, never an exception."""
        try:
            work(response)
        except InvalidPeerRequest as exc:
            response.success = False
            response.message = str(exc)
        except Exception as exc:  # a service callback must answer, whatever went wrong
            self.get_logger().error(f"unexpected error in a service call: {exc!r}")
            response.success = False
            response.message = f"internal error: {exc}"
        return response

    def _fleet_address(self, hostname: str) -> str | None:
        state = self._fleet
        if state is None:
            return None
        member = state.fleet.members.get(hostname)
        return member.address if member is not None else None

    def _resolve(self, target: PeerTarget) -> Reply[str]:
        """The address of ``target``: as given, else from the fleet file, else from the daemon."""
        if target.address:
            return Reply(value=target.address)
        assert target.hostname is not None
        from_fleet = self._fleet_address(target.hostname)
        if from_fleet is not None:
            return Reply(value=from_fleet)
        name = target.hostname
        reply = self._link.request(lambda c: c.resolve(name))
        if reply.ok:
            return reply
        if self._link.up:
            return Reply(error=f"cannot resolve hostname {name!r}: {reply.error}; give the peer's address")
        return reply

    def _add_peer(self, request: Any, response: Any) -> Any:
        def work(response: Any) -> None:
            target = parse_peer_target(request.address, request.hostname)
            resolved = self._resolve(target)
            if resolved.value is None:
                response.success, response.message = False, resolved.error
                return
            address = resolved.value
            before = self._link.request(lambda c: c.whitelist())
            added = self._link.request(lambda c: c.whitelist_add(address))
            if added.value is None:
                response.success, response.message = False, added.error
                return
            was_there = before.value is not None and address in before.value.addresses
            described = PeerTarget(address, target.hostname).describe()
            message = f"{described} was already on the whitelist" if was_there else f"whitelisted {described}"
            # A name given with the address, or found only in the fleet file, is written to the hosts block.
            if target.hostname and (target.address or self._fleet_address(target.hostname) == address):
                hosts = self._link.request(hosts_add(target.hostname, address))
                if hosts.ok:
                    message += f"; {target.hostname} resolves to {address}"
                else:
                    message += f"; but the hostname was not written: {hosts.error}"
            if not added.value.enabled:
                message += " (note: the whitelist is disabled on this daemon, every peer is allowed)"
            response.success, response.message = True, message

        return self._guarded(response, work)

    def _remove_peer(self, request: Any, response: Any) -> Any:
        def work(response: Any) -> None:
            target = parse_peer_target(request.address, request.hostname)
            if target.address is None:
                # The daemon knows the name the peer was added under; the fleet file is the fallback.
                assert target.hostname is not None
                name = target.hostname
                resolved = self._link.request(lambda c: c.resolve(name))
                address = resolved.value or self._fleet_address(name)
                if address is None:
                    response.success, response.message = False, resolved.error
                    return
                target = PeerTarget(address, name)
            address = target.address
            assert address is not None
            removed = self._link.request(whitelist_remove(address))
            if removed.value is None:
                response.success, response.message = False, removed.error
                return
            verb = "removed {} from the whitelist" if removed.value else "{} was not on the whitelist"
            message = verb.format(target.describe())
            names = self._names_to_forget(address)
            for name in names:
                self._link.request(hosts_remove(name))
            if names:
                message += f"; removed host name(s) {', '.join(names)}"
            response.success, response.message = True, message

        return self._guarded(response, work)

    def _names_to_forget(self, address: str) -> list[str]:
        """Host entries pointing at a removed peer (a requested name pointing elsewhere stays)."""
        hosts = self._link.request(lambda c: c.hosts())
        if hosts.value is None:
            return []
        return sorted({e.hostname for e in hosts.value if e.address == address})

    def _list_peers(self, request: Any, response: Any) -> Any:
        del request
        status = self._link.request(lambda c: c.status())
        if status.value is None:
            # ListPeers has no success field: an empty table, and the reason in the node's log.
            self.get_logger().warning(f"list_peers: {status.error}")
            return response
        response.peers = [peer_to_msg(peer) for peer in sorted(status.value.peers, key=lambda p: p.address)]
        response.whitelist_enabled = status.value.whitelist_enabled
        return response

    def _ping(self, request: Any, response: Any) -> Any:
        response.rtt_ms = UNKNOWN_RTT_MS
        response.path = Peer.PATH_NONE

        def work(response: Any) -> None:
            target = parse_peer_target(request.address, request.hostname)
            timeout = ping_timeout(float(request.timeout_s))
            # The daemon resolves names itself; the fleet file helps with a name it has not learned.
            where = target.address or self._fleet_address(target.hostname or "") or target.hostname
            assert where is not None

            def ping(client: ControlClient) -> Any:
                return client.ping(where, count=1, interval_s=1.0, timeout_s=timeout)

            reply = self._link.request(ping)
            if reply.value is None:
                response.success, response.message = False, reply.error
                return
            result = reply.value
            response.path = path_code(result.path)
            rtts = [r.rtt_ms for r in result.replies if r.rtt_ms is not None]
            peer = PeerTarget(result.address, result.hostname).describe()
            if rtts:
                response.success, response.rtt_ms = True, float(rtts[0])
                response.message = f"reply from {peer} in {rtts[0]:.3f} ms ({result.path} path)"
            else:
                response.success = False
                response.message = f"no reply from {peer} within {timeout:g} s (path: {result.path})"

        return self._guarded(response, work)


def main(args: list[str] | None = None) -> None:
    run_node(WhitelistNode, args, multi_threaded=True)


if __name__ == "__main__":
    main()
