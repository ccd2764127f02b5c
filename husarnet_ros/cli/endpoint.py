"""The `endpoint` command: peers' static endpoints (WireGuard's ``Endpoint``), shown and changed."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from ..core.peer_endpoint import StaticEndpoint
from . import render
from .state import cli_state, json_option, print_json


def _table(entries: list[StaticEndpoint]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("PEER", "ENDPOINT"):
        table.add_column(name, no_wrap=True)
    for entry in entries:
        table.add_row(escape(entry.address), escape(entry.endpoint))
    return table


def _print(entries: list[StaticEndpoint], message: str | None = None) -> None:
    if cli_state().json:
        print_json(entries)
        return
    out = render.console()
    if message:
        out.print(message, highlight=False, markup=False)
    elif not entries:
        out.print(
            "no static endpoints (husarnet-ros endpoint add ADDR HOST[:PORT])", highlight=False, markup=False
        )
    else:
        out.print(_table(entries))


@click.group()
@json_option
def endpoint() -> None:
    """Show or change the peers' static endpoints: where a peer is reached without discovery or a base server.

    Like WireGuard's `Endpoint`: for a robot with a reachable address on another network (a public or routed
    IP address, or a DNS name), no base server needed. HOST is an IP address or a DNS name (the daemon
    resolves it, and again every 30 s while it does not resolve); PORT is the peer daemon's UDP port, 5582
    by default; an IPv6 address with a port is written [ADDR]:PORT. The peer must be allowed: on the
    whitelist (husarnet-ros whitelist add ADDR), or every peer while the whitelist is off. A static
    endpoint of a peer that is not allowed is kept and used once it is.

    Changes apply at once and are saved in the daemon's state directory (static_endpoints.json). A fleet
    file's `endpoint:` entries are added by the husarnet_whitelist node the same way.

    \b
    Examples:
      husarnet-ros whitelist add fc94:b01d:1803:8dd8:b293:5c7d:7639:932a
      husarnet-ros endpoint add fc94:b01d:1803:8dd8:b293:5c7d:7639:932a 198.18.5.20:5582
      husarnet-ros wait peer fc94:b01d:1803:8dd8:b293:5c7d:7639:932a --timeout 30
      husarnet-ros endpoint ls
      husarnet-ros endpoint rm fc94:b01d:1803:8dd8:b293:5c7d:7639:932a 198.18.5.20:5582
    """


@endpoint.command("ls")
@json_option
def endpoint_ls() -> None:
    """List the static endpoints: the peer's overlay address and where it is reached (host:port).

    \b
    Example:
      husarnet-ros endpoint ls --json
    """
    _print(cli_state().client().static_endpoints())


@endpoint.command("add")
@click.argument("address", metavar="ADDR")
@click.argument("where", metavar="HOST[:PORT]")
@json_option
def endpoint_add(address: str, where: str) -> None:
    """Reach the peer with overlay address ADDR at HOST[:PORT] (port 5582 by default; IPv6 as [ADDR]:PORT).

    Adding one already there changes nothing. At most 4 per peer, 1024 in all.

    \b
    Examples:
      husarnet-ros endpoint add fc94:b01d:1803:8dd8:b293:5c7d:7639:932a robot2.example.com
      husarnet-ros endpoint add fc94:b01d:1803:8dd8:b293:5c7d:7639:932a [fd00:98::20]:5582
    """
    client = cli_state().client()
    before = set(client.static_endpoints())
    after = client.static_endpoint_add(address, where)
    added = [entry for entry in after if entry not in before]
    if not added:
        _print(after, f"{where} is already a static endpoint of {address}; nothing changed")
        return
    entry = added[0]
    message = f"added static endpoint {entry.endpoint} of peer {entry.address}"
    whitelist = client.whitelist()
    if whitelist.enabled and entry.address not in whitelist.addresses:
        message += (
            f"\nnote: {entry.address} is not on the whitelist, so it is not used yet "
            f"(husarnet-ros whitelist add {entry.address})"
        )
    _print(after, message)


@endpoint.command("rm")
@click.argument("address", metavar="ADDR")
@click.argument("where", metavar="HOST[:PORT]")
@json_option
def endpoint_rm(address: str, where: str) -> None:
    """Stop using HOST[:PORT] for the peer ADDR (a session on it goes on while it answers).

    \b
    Example:
      husarnet-ros endpoint rm fc94:b01d:1803:8dd8:b293:5c7d:7639:932a 198.18.5.20:5582
    """
    client = cli_state().client()
    before = client.static_endpoints()
    after = client.static_endpoint_remove(address, where)
    removed = [entry for entry in before if entry not in after]
    text = f"{removed[0].endpoint} of peer {removed[0].address}" if removed else where
    _print(after, f"removed static endpoint {text}")
