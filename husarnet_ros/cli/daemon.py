"""`husarnet-ros daemon`: turn command-line options into a DaemonConfig and run the daemon.

Only options the user actually gave are passed on, so the precedence is: command line, then the
--config YAML file, then the defaults of ``DaemonConfig`` (``core.config.load_config`` merges them).
Field names are the long option names with dashes turned into underscores (``--udp-port`` ->
``udp_port``), except ``--whitelist/--no-whitelist`` -> ``whitelist_enabled`` and ``--config`` ->
``config_file``.
"""

from __future__ import annotations

import gc
import ipaddress
from typing import Any

import click

from ..api import DEFAULT_CONTROL_SOCKET
from ..core.config import (
    DEFAULT_DAEMON_USER,
    DEFAULT_HOSTS_FILE,
    DEFAULT_INTERFACE,
    DEFAULT_STATE_DIR,
    LOG_LEVELS,
    MAX_MTU,
    MIN_MTU,
    load_config,
)
from ..core.constants import DEFAULT_DATA_PLANE_NICE, DEFAULT_MTU, DEFAULT_UDP_PORT
from .state import cli_state, fail


def parse_networks(text: str) -> list[str]:
    """'10.0.0.0/8, fd00::/8' -> canonical CIDRs; ValueError naming the bad entry."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a network in CIDR notation (e.g. 192.168.0.0/16)") from None
    return networks


def daemon_config_from_options(**options: Any) -> dict[str, Any]:
    """Keyword arguments for ``DaemonConfig`` from the `daemon` command's options (None = not given)."""
    renamed = {"config": "config_file", "whitelist": "whitelist_enabled"}
    config: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or (name == "base_servers" and not value):
            continue
        field = renamed.get(name, name)
        if field == "discovery_networks" and isinstance(value, str):
            value = parse_networks(value)
        elif field == "base_servers":
            value = list(value)
        elif field in ("state_dir", "control_socket", "hosts_file", "config_file"):
            value = str(value)
        config[field] = value
    return config


def _networks_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    try:
        return parse_networks(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_path = click.Path(dir_okay=True, file_okay=True)


@click.command()
@click.option(
    "--state-dir", type=_path, help=f"Identity, whitelist and hosts live here. [default: {DEFAULT_STATE_DIR}]"
)
@click.option(
    "--control-socket",
    type=_path,
    help="Unix socket of the control API (default: the global --control-socket, "
    f"$HUSARNET_ROS_CONTROL_SOCKET or {DEFAULT_CONTROL_SOCKET}).",
)
@click.option("--interface", help=f"TUN interface name. [default: {DEFAULT_INTERFACE}]")
@click.option(
    "--udp-port",
    type=click.IntRange(0, 65535),
    help=f"UDP port of the transport; 0 picks a free one. [default: {DEFAULT_UDP_PORT}]",
)
@click.option("--hostname", help="This node's hostname on the overlay. [default: the system hostname]")
@click.option(
    "--user",
    help="Account to run as once set up ('' or root: stay uid 0, capabilities dropped all the same). "
    f"[default: {DEFAULT_DAEMON_USER}]",
)
@click.option(
    "--hosts-file",
    type=_path,
    help=f"Hosts file whose husarnet-ros block is managed. [default: {DEFAULT_HOSTS_FILE}]",
)
@click.option(
    "--config", type=click.Path(exists=True, dir_okay=False), help="YAML file with daemon settings."
)
@click.option(
    "--mtu", type=click.IntRange(MIN_MTU, MAX_MTU), help=f"MTU of the TUN interface. [default: {DEFAULT_MTU}]"
)
@click.option(
    "--offload/--no-offload",
    default=None,
    help="Batch packets through the kernel's offloads (TUN TSO and checksums, UDP GSO/GRO) where the kernel "
    "has them; --no-offload moves one packet per system call. [default: on]",
)
@click.option(
    "--data-plane-nice",
    type=click.IntRange(-20, 19),
    help="Scheduling priority (nice) of the threads that move packets; below 0 they run before busy "
    "applications (as the kernel's networking does), so a sender faster than the overlay is slowed down "
    f"instead of losing packets; 0: like any process. [default: {DEFAULT_DATA_PLANE_NICE}]",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="How much to log. [default: info]",
)
@click.option(
    "--whitelist/--no-whitelist",
    default=None,
    help="Whitelist on or off at a node's very first start; afterwards `whitelist enable|disable` "
    "decides. [default: on]",
)
@click.option(
    "--discovery-networks",
    callback=_networks_option,
    metavar="CIDR[,CIDR...]",
    help="Networks whose LAN discovery beacons are accepted. "
    "[default: RFC 1918, 198.18.0.0/15, IPv6 link-local and ULA]",
)
@click.option(
    "--base-server",
    "base_servers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="A base server (rendezvous and relay for peers on other networks); repeat for several, they fail "
    "over. Replaces the config file's list. [default port: 5582]",
)
@click.option(
    "--base-tcp-port",
    type=click.IntRange(0, 65535),
    help="TCP port of the base servers, used while UDP to one gets no answer; 0: never TCP. [default: 443]",
)
def daemon(**options: Any) -> None:
    """Run the husarnet-ros daemon in the foreground (as root; it drops its capabilities once set up).

    \b
    Examples:
      husarnet-ros daemon
      husarnet-ros --control-socket /run/hr-a.sock daemon --state-dir /tmp/a --interface hnet0 --udp-port 5590
    """
    if options.get("control_socket") is None:
        options["control_socket"] = cli_state().socket_path
    if options.get("log_level"):
        options["log_level"] = options["log_level"].lower()
    config = load_config(overrides=daemon_config_from_options(**options))  # ConfigError: one line
    # Start-up makes ~100,000 objects that live as long as the daemon: collecting while they are made only
    # slows the start (~10 % of the imports). The daemon turns the collector back on once it has started
    # (and in any case when it stops: service.run).
    gc.disable()
    try:
        from ..daemon.service import run
    except ImportError as exc:
        gc.enable()
        fail(f"the daemon is not available in this installation ({exc})")
    code = run(config)
    if code:
        raise SystemExit(code)
