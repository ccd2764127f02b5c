"""The commands that connect this daemon to a self-hosted Dashboard: `setup-server` and `join`."""

from __future__ import annotations

import click

from ..api import JOIN_CODE_ENV, JoinInfo, LicenseInfo
from .state import cli_state, json_option, print_json


def license_lines(info: LicenseInfo) -> list[tuple[str, str]]:
    """What `status` and `setup-server` show about the Dashboard set up, as (label, value) lines."""
    state = (
        "EXPIRED (not applied: run setup-server again once renewed)" if info.expired else info.websetup_state
    )
    if info.joined:
        joined = f"yes, as {info.dashboard_hostname} (config revision {info.managed_revision})"
    else:
        joined = "no (husarnet-ros join CODE)"
    return [
        ("dashboard", f"{info.name} ({info.dashboard_url})"),
        ("key", info.fingerprint),
        ("websetup", f"[{info.websetup_address}]:{info.websetup_port}, {state}"),
        ("joined", joined),
        ("valid", f"until {info.valid_until}"),
    ]


def _echo_lines(lines: list[tuple[str, str]]) -> None:
    for key, value in lines:
        click.echo(f"{key:<12} {value}")


@click.command("setup-server")
@click.argument("address", metavar="ADDR")
@click.option(
    "--fingerprint",
    metavar="FP",
    help="The license key's fingerprint as the Dashboard shows it (SHA256:...): checked before anything is "
    "pinned. Without it the key is trusted on first use.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the pinned key with another one (the server was reinstalled); needs --fingerprint.",
)
@json_option
def setup_server(address: str, fingerprint: str | None, replace: bool) -> None:
    """Set this daemon up with the Dashboard at ADDR (host, host:port or [IPv6]:port).

    The daemon fetches http://ADDR/license.json, checks its signature and dates, pins its key, and applies
    it at once: the base servers become the license's, the server's Websetup may always reach this node,
    and the daemon starts following its config. It keeps the license in its state directory and applies
    it again at every start, also offline. A license signed by another key than the pinned one is refused
    unless --replace --fingerprint NEW is given.

    \b
    Examples:
      husarnet-ros setup-server 198.18.0.10:8080
      husarnet-ros setup-server dashboard.lan --fingerprint SHA256:q1w2...
      husarnet-ros setup-server dashboard.lan --replace --fingerprint SHA256:new...
    """
    state = cli_state()
    info = state.client().setup_server(address, fingerprint=fingerprint, replace=replace)
    if state.json:
        print_json(info)
        return
    if info.replaced:
        click.echo(f"replaced the pinned key: now set up with {info.name!r}")
    elif info.first_use:
        click.echo(f"set up with {info.name!r} (its key is pinned from now on)")
    else:
        click.echo(f"license of {info.name!r} renewed (same key)")
    _echo_lines(license_lines(info))
    click.echo(
        f"{'base servers':<12} {', '.join(info.base_servers) or '(the license lists none: unchanged)'}"
    )
    if info.first_use and fingerprint is None:
        click.echo(
            "check: compare the key above with the fingerprint the Dashboard shows; if they differ, this is "
            "not your Dashboard: run setup-server again with --replace --fingerprint <the Dashboard's>"
        )
    if not info.joined:
        click.echo("next: husarnet-ros join CODE (a join code from the Dashboard)")


@click.command()
@click.argument("code", metavar="CODE", envvar=JOIN_CODE_ENV)
@click.argument("hostname", metavar="[HOSTNAME]", required=False)
@click.option("--hostname", "hostname_option", metavar="NAME", help="The same as HOSTNAME.")
@json_option
def join(code: str, hostname: str | None, hostname_option: str | None) -> None:
    """Claim this device at the Dashboard set up with `setup-server`, with a join code it gave.

    HOSTNAME is the name other devices will know this one by (default: the daemon's hostname). The device
    gets the whitelist and hosts entries of the networks the code puts it in, and keeps them current from
    then on. The code may come from $HUSARNET_ROS_JOIN_CODE instead (then it shows on no command line).

    \b
    Examples:
      husarnet-ros join 8Kd2-pQ
      husarnet-ros join 8Kd2-pQ robot7 && husarnet-ros wait joined
      HUSARNET_ROS_JOIN_CODE=8Kd2-pQ husarnet-ros join --hostname robot7
    """
    if hostname is not None and hostname_option is not None and hostname != hostname_option:
        raise click.UsageError("give the hostname once: HOSTNAME or --hostname")
    state = cli_state()
    info: JoinInfo = state.client().join(code, hostname_option or hostname)
    if state.json:
        print_json(info)
        return
    where = f"account {info.account}" + (f", network {info.network}" if info.network else "")
    click.echo(
        f"joined as {info.hostname} ({where}): {info.peers} peer(s) on the managed whitelist, "
        f"config revision {info.revision}"
    )
