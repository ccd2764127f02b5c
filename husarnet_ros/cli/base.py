"""The `base` command: the base servers a running daemon uses, shown and changed at run time."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..api import BaseServerStatus
from . import render
from .state import cli_state, json_option, print_json

_STATE_STYLE = {"registered": "green", "connecting": "yellow", "down": "red", "unresolved": "red"}


def _table(servers: list[BaseServerStatus]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("ADDRESS", "TRANSPORT", "STATE", "HOME", "RTT", "OBSERVED ENDPOINT"):
        table.add_column(name, no_wrap=True, justify="right" if name == "RTT" else "left")
    for server in servers:
        table.add_row(
            escape(server.address),
            server.transport,
            Text(server.state, style=_STATE_STYLE.get(server.state, "")),
            "yes" if server.home else "-",
            render.rtt(server.rtt_ms),
            escape(server.observed_endpoint or "-"),
        )
    return table


def _print(servers: list[BaseServerStatus], message: str | None = None) -> None:
    if cli_state().json:
        print_json(servers)
        return
    out = render.console()
    if message:
        out.print(message, highlight=False, markup=False)
    elif not servers:
        out.print("no base servers (husarnet-ros base add HOST[:PORT])", highlight=False, markup=False)
    else:
        out.print(_table(servers))


@click.group()
@json_option
def base() -> None:
    """Show or change the base servers the daemon uses to reach peers on other networks.

    A base server (`husarnet-ros base-server`) introduces this node to peers behind other NATs and relays,
    still end-to-end encrypted, while no direct path works. The daemon registers with every one listed and
    uses the fastest that answers.

    Changes apply at once and are saved in the daemon's state directory: from the first change on, the
    saved list is used at every start, and the configuration's base_servers (or daemon --base-server) no
    longer is. Move base_servers.json out of the state directory to go back to the configured list.

    \b
    Examples:
      husarnet-ros base ls
      husarnet-ros base add base.example.com
      husarnet-ros base add 198.18.0.100:5582
      husarnet-ros base rm base.example.com
      husarnet-ros base add base.example.com && husarnet-ros wait base --timeout 30
    """


@base.command("ls")
@json_option
def base_ls() -> None:
    """List the base servers: address, transport, state (connecting, registered, down, or unresolved while
    the name resolves to no address), the one in use (home), its RTT and this node's endpoint as it sees
    it (the NAT's public side).

    \b
    Example:
      husarnet-ros base ls --json
    """
    _print(cli_state().client().base_servers())


@base.command("add")
@click.argument("address", metavar="HOST[:PORT]")
@json_option
def base_add(address: str) -> None:
    """Use the base server HOST[:PORT] (port 5582 by default; IPv6 as [ADDR]:PORT) from now on.

    Adding one already listed changes nothing. At most 16 are used.

    \b
    Examples:
      husarnet-ros base add base.example.com
      husarnet-ros base add [fd00:98::100]:5582
    """
    client = cli_state().client()
    before = {server.address for server in client.base_servers()}
    after = client.base_add(address)
    added = [server.address for server in after if server.address not in before]
    if added:
        _print(after, f"added base server {added[0]}")
    else:
        _print(after, f"{address} is already a base server; nothing changed")


@base.command("rm")
@click.argument("address", metavar="HOST[:PORT]")
@json_option
def base_rm(address: str) -> None:
    """Stop using the base server HOST[:PORT] (peers relayed through it move to the next registered one).

    \b
    Example:
      husarnet-ros base rm base.example.com
    """
    client = cli_state().client()
    before = [server.address for server in client.base_servers()]
    after = client.base_remove(address)
    remaining = {server.address for server in after}
    removed = [name for name in before if name not in remaining]
    _print(after, f"removed base server {removed[0] if removed else address}")
