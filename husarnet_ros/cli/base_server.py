"""`husarnet-ros base-server` (also the `husarnet-ros-base-server` command): run a base server."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ..core.base_client import DEFAULT_BASE_PORT, DEFAULT_BASE_TCP_PORT
from .state import log_level_option


@click.command("base-server")
@click.option("--listen", default="::", show_default=True, help="Address to listen on (:: is IPv6 and IPv4).")
@click.option(
    "--udp-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_BASE_PORT,
    show_default=True,
    help="UDP port.",
)
@click.option(
    "--tcp-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_BASE_TCP_PORT,
    show_default=True,
    help="TCP port for clients whose network lets no UDP out (the same messages, length-prefixed).",
)
@click.option("--no-tcp", is_flag=True, help="Do not listen on TCP.")
@click.option(
    "--max-clients",
    type=click.IntRange(1, 10_000_000),
    default=10_000,
    show_default=True,
    help="Registered clients at most; registrations beyond it are refused (and counted).",
)
@click.option(
    "--status-interval",
    type=click.FloatRange(0.1, 86400),
    default=60.0,
    show_default=True,
    help="Seconds between status lines in the log.",
)
@click.option(
    "--status-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the status (clients, relayed frames and bytes, drop counters) to this JSON file.",
)
@click.option("--json", "json_log", is_flag=True, help="Status lines as JSON.")
@log_level_option
def base_server(
    listen: str,
    udp_port: int,
    tcp_port: int,
    no_tcp: bool,
    max_clients: int,
    status_interval: float,
    status_file: Path | None,
    json_log: bool,
    log_level: str,
) -> None:
    """Run a base server: registration of daemons, rendezvous for NAT traversal, and an encrypted relay
    for peers that cannot reach each other directly (the relay never holds session keys).

    It keeps only soft state (what registered daemons tell it), so it can be restarted, replaced or run
    several times for failover; daemons list them with `husarnet-ros daemon --base-server HOST[:PORT]`.

    \b
    Example:
      husarnet-ros base-server --udp-port 5582 --tcp-port 443 --status-file /run/husarnet-ros-base.json
    """
    from ..exit_with_parent import exit_with_parent_if_asked
    from ..server.service import BaseServerConfig, run

    # Started by server.launch.py: end with the launch however it ends (a SIGTERM to it too).
    exit_with_parent_if_asked()
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = BaseServerConfig(
        listen, udp_port, None if no_tcp else tcp_port, max_clients, status_interval, status_file, json_log
    )
    raise SystemExit(run(config))


def main() -> int:
    """Entry point of the `husarnet-ros-base-server` console script."""
    from .main import main as cli_main

    return cli_main(["base-server", *sys.argv[1:]])
