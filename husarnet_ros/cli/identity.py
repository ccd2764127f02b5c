"""Identity commands: genid, whoami, import-identity.

The identity file is Husarnet's one-line format (``<ipv6> <hex pubkey> <hex 64-byte secret>``), mode 0600,
always written atomically and never silently replaced: import keeps the previous one as
``identity.previous``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..client import ControlClient
from ..core.address import format_address
from ..core.errors import IdentityError
from ..core.identity import Identity
from ..fileio import atomic_write, atomic_write_text
from .state import cli_state, fail, json_option, print_json

# Where the daemon keeps its identity; must match the daemon's state layout.
DEFAULT_STATE_DIR = "/var/lib/husarnet-ros"
IDENTITY_FILE_NAME = "identity"
PREVIOUS_IDENTITY_FILE_NAME = "identity.previous"
IDENTITY_MODE = 0o600
STATE_DIR_MODE = 0o700
# An identity file is one short line; anything much larger is the wrong file.
_MAX_IDENTITY_FILE_SIZE = 4096


def read_identity_file(path: Path) -> Identity:
    """Load and validate an identity file; IdentityError naming the file on any problem."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_IDENTITY_FILE_SIZE + 1)
    except FileNotFoundError:
        raise IdentityError(f"no identity file at {path}") from None
    except IsADirectoryError:
        raise IdentityError(f"{path} is a directory, not an identity file") from None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_IDENTITY_FILE_SIZE:
        raise IdentityError(f"{path} is too large to be an identity file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IdentityError(f"{path} is not a text identity file") from None
    try:
        return Identity.from_file_text(text)
    except IdentityError as exc:
        raise IdentityError(f"{path}: {exc}") from None


def write_identity_file(path: Path, identity: Identity) -> None:
    try:
        atomic_write_text(path, identity.to_file_text(), IDENTITY_MODE)
    except OSError as exc:
        raise IdentityError(f"cannot write {path}: {exc.strerror or exc}") from None


def _identity_json(identity: Identity) -> dict[str, str]:
    return {"address": format_address(identity.address), "public_key": identity.public_key.hex()}


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the identity to this file (mode 0600) instead of printing it.",
)
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@json_option
def genid(output: Path | None, force: bool) -> None:
    """Generate a new identity (Ed25519 key and its fc94 address), in Husarnet's file format.

    Without --output the identity file text, secret key included, is printed on stdout.

    \b
    Examples:
      husarnet-ros genid --output robot2.identity
      husarnet-ros import-identity robot2.identity
    """
    if output is not None and output.exists() and not force:
        fail(f"{output} exists; pass --force to replace it")
    identity = Identity.generate()
    info: dict[str, str | None] = dict(_identity_json(identity))
    if output is not None:
        write_identity_file(output, identity)
        info["file"] = str(output)
    if cli_state().json:
        if output is None:
            info["identity"] = identity.to_file_text()
        print_json(info)
    elif output is None:
        click.echo(identity.to_file_text(), nl=False)
    else:
        click.echo(f"wrote identity {info['address']} to {output}")


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read the identity from this state directory instead of asking the daemon.",
)
@json_option
def whoami(state_dir: Path | None) -> None:
    """Show this node's overlay address and hostname (from the daemon, or from --state-dir).

    \b
    Examples:
      husarnet-ros whoami
      husarnet-ros whoami --state-dir /var/lib/husarnet-ros --json
    """
    state = cli_state()
    info: dict[str, str | None]
    if state_dir is not None:
        path = state_dir / IDENTITY_FILE_NAME
        info = {**_identity_json(read_identity_file(path)), "source": str(path)}
    else:
        status = state.client().status()
        info = {"address": status.address, "hostname": status.hostname, "source": state.socket_path}
    if state.json:
        print_json(info)
        return
    click.echo(info["address"])
    if info.get("hostname"):
        click.echo(f"hostname {info['hostname']}")


@click.command("import-identity")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="The daemon's state directory.",
)
@click.option("--force", is_flag=True, help="Import even while a daemon answers on the control socket.")
@json_option
def import_identity(file: Path, state_dir: Path, force: bool) -> None:
    """Import an existing Husarnet identity file, keeping its fc94 address.

    The file is checked (key pair, proof of work, address) and written atomically, mode 0600, to
    STATE_DIR/identity; an identity already there is kept as identity.previous. Stop the daemon first;
    it uses the new identity once restarted.

    \b
    Example:
      husarnet-ros import-identity /var/lib/husarnet/id --state-dir /var/lib/husarnet-ros
    """
    state = cli_state()
    identity = read_identity_file(file)
    if not force:
        with ControlClient(state.socket_path, timeout_s=2.0) as client:
            if client.is_alive():
                fail(
                    f"a daemon is running (control socket {state.socket_path}): stop it first, "
                    "or pass --force and restart it afterwards"
                )
    target = state_dir / IDENTITY_FILE_NAME
    try:
        state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create state directory {state_dir}: {exc.strerror}")
    previous: Identity | None = None
    if target.exists():
        try:
            previous = read_identity_file(target)
        except IdentityError:
            previous = None  # a corrupt old file is still kept below, byte for byte
        if previous is None or previous.secret_key != identity.secret_key:
            _keep_previous(target, state_dir / PREVIOUS_IDENTITY_FILE_NAME)
    write_identity_file(target, identity)
    info: dict[str, str | None] = {**_identity_json(identity), "file": str(target)}
    info["previous_address"] = format_address(previous.address) if previous else None
    if state.json:
        print_json(info)
        return
    click.echo(f"imported identity {info['address']} into {target}")
    if previous is not None and previous.address != identity.address:
        click.echo(f"previous identity {info['previous_address']} kept as {PREVIOUS_IDENTITY_FILE_NAME}")
    click.echo("restart the daemon to use it")


def _keep_previous(current: Path, backup: Path) -> None:
    try:
        data = current.read_bytes()
    except OSError as exc:
        fail(f"cannot read the existing identity {current}: {exc.strerror}")
    try:
        atomic_write(backup, data, IDENTITY_MODE)
    except OSError as exc:
        fail(f"cannot keep the existing identity as {backup}: {exc.strerror}")
