"""``husarnet-ros dds env|write``: the DDS configuration that keeps ROS 2 on the overlay, for a shell.

Peers come from the fleet file (``--fleet`` / ``--robot``) and, unless ``--no-discovered``, from the running
daemon (its whitelist). The daemon is optional when a fleet file says who this robot is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .. import dds
from ..client import ClientError
from ..core.fleet import load_fleet
from .state import cli_state, fail, json_option, print_json


@dataclass(frozen=True)
class _Plan:
    own: str | None
    peers: list[str]
    output_dir: Path
    mtu: int  # the running daemon's overlay MTU (the default without one): sizes the DDS datagrams


def _plan(fleet_file: Path | None, robot: str | None, output_dir: Path | None, discovered: bool) -> _Plan:
    state = cli_state()
    status = whitelist = None
    daemon_error = ""
    try:
        client = state.client()
        status = client.status()
        whitelist = client.whitelist() if discovered else None
    except ClientError as exc:
        daemon_error = str(exc)
    view = None
    if fleet_file is not None:
        name = robot or (status.hostname if status else None)
        if not name:
            fail(f"--robot is needed to find this robot in {fleet_file} ({daemon_error})")
        view = load_fleet(fleet_file).view(name)
    elif robot:
        fail("--robot needs --fleet")
    elif status is None:
        fail(f"{daemon_error} (or give --fleet FILE --robot NAME)")
    own, peers = dds.own_and_peers(view, status, whitelist)
    namespace = view.me.namespace if view is not None else ""
    return _Plan(own, peers, output_dir or dds.default_output_dir(namespace), dds.overlay_mtu(status))


def _options(command: Any) -> Any:
    options = [
        click.option(
            "--fleet",
            "fleet_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Fleet file: its members this robot may talk to become DDS peers.",
        ),
        click.option(
            "--robot", metavar="NAME", help="This robot's name in the fleet. [default: daemon hostname]"
        ),
        click.option(
            "--output-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Where to write the files. [default: $ROS_HOME/husarnet_ros/dds[/NAMESPACE]]",
        ),
        click.option(
            "--rmw",
            type=click.Choice(["fastdds", "cyclonedds"]),
            help="Configure only this middleware and set RMW_IMPLEMENTATION. [default: both, RMW untouched]",
        ),
        click.option(
            "--discovered/--no-discovered",
            default=True,
            show_default=True,
            help="Also use the peers the running daemon allows (its whitelist).",
        ),
        json_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _write(
    fleet_file: Path | None, robot: str | None, output_dir: Path | None, rmw: str | None, discovered: bool
) -> tuple[_Plan, dict[str, str], list[Path], dict[str, str]]:
    plan = _plan(fleet_file, robot, output_dir, discovered)
    files = dds.render_files(plan.own, plan.peers, rmw or "auto", mtu=plan.mtu)
    changed = dds.write_files(plan.output_dir, files)
    env = dds.environment(plan.output_dir, rmw or "auto", set_rmw_implementation=rmw is not None)
    return plan, files, changed, env


def _json(plan: _Plan, files: dict[str, str], changed: list[Path], env: dict[str, str]) -> None:
    print_json(
        {
            "own_address": plan.own,
            "peers": plan.peers,
            "output_dir": str(plan.output_dir),
            "files": [str(plan.output_dir / name) for name in files],
            "changed": [str(path) for path in changed],
            "environment": env,
        }
    )


@click.group("dds")
def dds_command() -> None:
    """DDS configuration that keeps ROS 2 discovery and data on the overlay, without multicast.

    \b
    Examples:
      eval "$(husarnet-ros dds env)"
      eval "$(husarnet-ros dds env --fleet fleet.yaml --robot robot1 --rmw fastdds)"
      husarnet-ros dds write --json
    """


@dds_command.command("env")
@_options
def dds_env(
    fleet_file: Path | None, robot: str | None, output_dir: Path | None, rmw: str | None, discovered: bool
) -> None:
    """Write the configuration and print `export` lines for the shell.

    Fast DDS and Cyclone DDS read the file when a process starts: export, then start ROS nodes.

    \b
    Example:
      eval "$(husarnet-ros dds env --fleet config/fleet.yaml --robot robot1)"
    """
    plan, files, changed, env = _write(fleet_file, robot, output_dir, rmw, discovered)
    if cli_state().json:
        _json(plan, files, changed, env)
        return
    click.echo(dds.export_lines(env))


@dds_command.command("write")
@_options
def dds_write(
    fleet_file: Path | None, robot: str | None, output_dir: Path | None, rmw: str | None, discovered: bool
) -> None:
    """Write (or refresh) the configuration files and say what changed.

    \b
    Example:
      husarnet-ros dds write --fleet config/fleet.yaml --robot robot1
    """
    plan, files, changed, env = _write(fleet_file, robot, output_dir, rmw, discovered)
    if cli_state().json:
        _json(plan, files, changed, env)
        return
    click.echo(f"own address {plan.own or 'unknown'}, {len(plan.peers)} peer(s)")
    for name in files:
        path = plan.output_dir / name
        click.echo(f"{'wrote' if path in changed else 'unchanged'} {path}")
