"""The `husarnet-ros` command: ``husarnet-ros [--control-socket PATH] [--json] COMMAND``.

Exit status: 0 success, 1 failure (one ``error: ...`` line on stderr), 2 usage error. No error message
echoes an argument in full: quoted values are shortened (``api.bound_message``).

Each command's module is imported only when that command runs (or when help lists them all): `husarnet-ros
daemon` must not pay for the HTTP client, the doctor's ROS checks or the terminal tables before its data path
is up, and `husarnet-ros status` not for the daemon.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from .. import __version__
from ..api import CONTROL_SOCKET_ENV, DEFAULT_CONTROL_SOCKET, MAX_MESSAGE_CHARS, bound_message, shorten
from ..core.errors import HusarnetError
from .state import CliFailure, CliState, cli_state, json_option, print_json

# Set to get a traceback instead of the one-line message for an unexpected error (a bug).
DEBUG_ENV = "HUSARNET_ROS_DEBUG"


# Command name -> (module in this package, attribute): imported on first use.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("network", "status"),
    "peers": ("network", "peers"),
    "ping": ("network", "ping"),
    "wait": ("network", "wait"),
    "logs": ("network", "logs"),
    "whitelist": ("lists", "whitelist"),
    "hosts": ("lists", "hosts"),
    "base": ("base", "base"),
    "endpoint": ("endpoint", "endpoint"),
    "genid": ("identity", "genid"),
    "whoami": ("identity", "whoami"),
    "import-identity": ("identity", "import_identity"),
    "daemon": ("daemon", "daemon"),
    "doctor": ("doctor", "doctor"),
    "dds": ("dds", "dds_command"),
    "base-server": ("base_server", "base_server"),
    "dashboard": ("dashboard", "dashboard"),
    "setup-server": ("control_plane", "setup_server"),
    "join": ("control_plane", "join"),
    "websetup": ("websetup", "websetup"),
}


class _Root(click.Group):
    """Turns every error the program raises on purpose into one clear line and exit status 1; loads the
    commands of ``LAZY_COMMANDS`` when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        module_name, attribute = LAZY_COMMANDS[cmd_name]
        module = importlib.import_module(f".{module_name}", __package__)
        command = getattr(module, attribute)
        assert isinstance(command, click.Command), cmd_name
        assert command.name == cmd_name, cmd_name
        self.add_command(command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            # Subcommands parse their arguments in here, and click quotes a bad value in full.
            message = exc.format_message()
            if len(message) <= MAX_MESSAGE_CHARS:
                raise
            raise click.UsageError(bound_message(message), ctx=exc.ctx) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except HusarnetError as exc:
            raise CliFailure(str(exc)) from None
        except Exception as exc:  # a bug: say so in one line unless debugging
            if os.environ.get(DEBUG_ENV):
                raise
            raise CliFailure(
                f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)"
            ) from None


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--control-socket",
    metavar="PATH",
    envvar=CONTROL_SOCKET_ENV,
    show_envvar=True,
    help=f"Control socket of the daemon to talk to. [default: {DEFAULT_CONTROL_SOCKET}]",
)
@json_option
@click.pass_context
def cli(ctx: click.Context, control_socket: str | None) -> None:
    """husarnet-ros: encrypted peer-to-peer IPv6 overlay (fc94::/16) for robot fleets.

    \b
    Examples:
      husarnet-ros status
      husarnet-ros --json peers
      husarnet-ros ping robot2
      husarnet-ros --control-socket /run/hr-b.sock whitelist add fc94:b01d:1803:8dd8:b293:5c7d:7639:932a
    """
    state = ctx.ensure_object(CliState)
    state.control_socket = control_socket


@cli.command()
@json_option
def version() -> None:
    """Show the version of this command and of the running daemon, if any.

    \b
    Example:
      husarnet-ros version
    """
    from ..client import ControlClient

    state = cli_state()
    with ControlClient(state.socket_path, timeout_s=2.0) as client:
        try:
            daemon_version: str | None = client.health().version
        except HusarnetError:
            daemon_version = None
    if state.json:
        print_json({"version": __version__, "daemon_version": daemon_version})
        return
    click.echo(f"husarnet-ros {__version__}")
    socket_path = shorten(state.socket_path)
    click.echo(f"daemon {daemon_version}" if daemon_version else f"daemon not running at {socket_path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `husarnet-ros` console script."""
    try:
        cli.main(args=argv, prog_name="husarnet-ros", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
