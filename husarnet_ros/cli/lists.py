"""The whitelist and hosts commands: small lists the daemon keeps and applies at once."""

from __future__ import annotations

import click

from ..api import HostEntry, Whitelist, normalize_overlay
from .state import cli_state, json_option, print_json


def _print_whitelist(answer: Whitelist, message: str | None = None) -> None:
    if cli_state().json:
        print_json(answer)
        return
    if message:
        click.echo(message)
        return
    state = "enabled" if answer.enabled else "disabled (any peer may connect)"
    click.echo(f"whitelist {state}, {len(answer.addresses)} address(es)")
    for address in answer.addresses:
        click.echo(f"  {address}")


@click.group()
@json_option
def whitelist() -> None:
    """Show or change which peers may talk to this node (on by default).

    Changes apply at once and survive daemon restarts.

    \b
    Examples:
      husarnet-ros whitelist ls
      husarnet-ros whitelist add fc94:b01d:1803:8dd8:b293:5c7d:7639:932a
      husarnet-ros whitelist disable
    """


@whitelist.command("ls")
@json_option
def whitelist_ls() -> None:
    """List whitelisted addresses and whether the whitelist is enforced.

    \b
    Example:
      husarnet-ros whitelist ls --json
    """
    _print_whitelist(cli_state().client().whitelist())


@whitelist.command("add")
@click.argument("address", metavar="ADDR")
@json_option
def whitelist_add(address: str) -> None:
    """Allow the peer with overlay address ADDR.

    \b
    Example:
      husarnet-ros whitelist add fc94:b01d:1803:8dd8:b293:5c7d:7639:932a
    """
    answer = cli_state().client().whitelist_add(address)
    _print_whitelist(answer, f"added {normalize_overlay(address)} to the whitelist")


@whitelist.command("rm")
@click.argument("address", metavar="ADDR")
@json_option
def whitelist_rm(address: str) -> None:
    """Forbid the peer with overlay address ADDR (its session is closed at once).

    \b
    Example:
      husarnet-ros whitelist rm fc94:b01d:1803:8dd8:b293:5c7d:7639:932a
    """
    answer = cli_state().client().whitelist_remove(address)
    _print_whitelist(answer, f"removed {normalize_overlay(address)} from the whitelist")


@whitelist.command("enable")
@json_option
def whitelist_enable() -> None:
    """Enforce the whitelist: only listed peers may connect.

    \b
    Example:
      husarnet-ros whitelist enable
    """
    answer = cli_state().client().whitelist_set_enabled(True)
    _print_whitelist(answer, "whitelist enabled: only listed peers may connect")


@whitelist.command("disable")
@json_option
def whitelist_disable() -> None:
    """Stop enforcing the whitelist: any peer with a valid identity may connect.

    \b
    Example:
      husarnet-ros whitelist disable
    """
    answer = cli_state().client().whitelist_set_enabled(False)
    _print_whitelist(answer, "whitelist disabled: any peer may connect")


def _print_hosts(entries: list[HostEntry], message: str | None = None) -> None:
    if cli_state().json:
        print_json(entries)
        return
    if message:
        click.echo(message)
        return
    if not entries:
        click.echo("no host entries")
        return
    width = max(len(entry.address) for entry in entries)
    for entry in entries:
        click.echo(f"{entry.address:<{width}}  {entry.hostname}")


@click.group()
@json_option
def hosts() -> None:
    """Show or change the husarnet-ros block of the hosts file (other lines are never touched).

    \b
    Examples:
      husarnet-ros hosts ls
      husarnet-ros hosts add robot2 fc94:b01d:1803:8dd8:b293:5c7d:7639:932a
      husarnet-ros hosts rm robot2
    """


@hosts.command("ls")
@json_option
def hosts_ls() -> None:
    """List host names the daemon maps to overlay addresses.

    \b
    Example:
      husarnet-ros hosts ls
    """
    _print_hosts(cli_state().client().hosts())


@hosts.command("add")
@click.argument("hostname")
@click.argument("address", metavar="ADDR")
@json_option
def hosts_add(hostname: str, address: str) -> None:
    """Map HOSTNAME to overlay address ADDR (replacing an earlier mapping of that name).

    \b
    Example:
      husarnet-ros hosts add robot2 fc94:b01d:1803:8dd8:b293:5c7d:7639:932a
    """
    entries = cli_state().client().hosts_add(hostname, address)
    _print_hosts(entries, f"{hostname.lower()} -> {normalize_overlay(address)}")


@hosts.command("rm")
@click.argument("hostname")
@json_option
def hosts_rm(hostname: str) -> None:
    """Remove the mapping of HOSTNAME.

    \b
    Example:
      husarnet-ros hosts rm robot2
    """
    entries = cli_state().client().hosts_remove(hostname)
    _print_hosts(entries, f"removed {hostname}")
