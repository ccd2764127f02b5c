"""What every CLI command shares: the global options, the `--json` flag and the one way to fail."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from pydantic import BaseModel

from ..api import bound_message, resolve_control_socket

if TYPE_CHECKING:
    from ..client import ControlClient

F = TypeVar("F", bound=Callable[..., Any])


class CliFailure(click.ClickException):
    """A failure reported as one line on stderr, ``error: <message>``, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {bound_message(self.format_message())}", err=True)


def fail(message: str) -> NoReturn:
    raise CliFailure(message)


@dataclass
class CliState:
    """Global options, shared with every subcommand through ``ctx.obj``."""

    control_socket: str | None = None
    json: bool = False

    @property
    def socket_path(self) -> str:
        return resolve_control_socket(self.control_socket)

    def client(self) -> ControlClient:
        """A client closed when the command ends."""
        from ..client import ControlClient  # not at import: `husarnet-ros daemon` needs no HTTP client

        client = ControlClient(self.socket_path)
        click.get_current_context().call_on_close(client.close)
        return client


def cli_state() -> CliState:
    ctx = click.get_current_context()
    state = ctx.find_object(CliState)
    if state is None:  # a command invoked on its own, e.g. from a test
        state = ctx.ensure_object(CliState)
    return state


def _enable_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        state = ctx.find_object(CliState) or ctx.ensure_object(CliState)
        state.json = True
    return value


def log_level_option(command: F) -> F:
    """``--log-level`` of the servers (base server, Dashboard, Websetup): info unless asked otherwise."""
    option = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default="info",
        show_default=True,
        help="How much to log.",
    )
    return option(command)


def json_option(command: F) -> F:
    """``--json`` on a subcommand, equivalent to the global ``husarnet-ros --json``."""
    option = click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        callback=_enable_json,
        help="Print machine-readable JSON instead of text.",
    )
    return option(command)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False))
