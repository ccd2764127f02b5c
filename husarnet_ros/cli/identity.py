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
from ..core.config import DEFAULT_STATE_DIR
from ..core.errors import IdentityError
from ..core.identity import Identity, read_identity_file
from ..daemon.state import IDENTITY_FILE, MAX_STATE_FILE_SIZE, StateDir, StateError
from ..fileio import FileReadError, atomic_write, atomic_write_text, read_bounded
from .state import cli_state, fail, json_option, print_json

PREVIOUS_IDENTITY_FILE_NAME = "identity.previous"
IDENTITY_MODE = 0o600


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
        path = state_dir / IDENTITY_FILE
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
@click.option("--force", is_flag=True, help="Import even while a daemon is running.")
@json_option
def import_identity(file: Path, state_dir: Path, force: bool) -> None:
    """Import an existing Husarnet identity file, keeping its fc94 address.

    The file is checked (key pair, proof of work, address) and written atomically, mode 0600, to
    STATE_DIR/identity; an identity already there is kept as identity.previous. Stop the daemon first
    (a daemon answering on the control socket or holding the state directory makes this refuse, unless
    --force); it uses the new identity once restarted.

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
    store = StateDir(state_dir)
    try:
        store.lock()
    except StateError as exc:
        if not force:
            fail(f"{exc} (or pass --force and restart it afterwards)")
    try:
        previous = _replace_identity(store, identity)
    finally:
        store.unlock()
    info: dict[str, str | None] = {**_identity_json(identity), "file": str(store.identity_path)}
    info["previous_address"] = format_address(previous.address) if previous else None
    if state.json:
        print_json(info)
        return
    click.echo(f"imported identity {info['address']} into {store.identity_path}")
    if previous is not None and previous.address != identity.address:
        click.echo(f"previous identity {info['previous_address']} kept as {PREVIOUS_IDENTITY_FILE_NAME}")
    click.echo("restart the daemon to use it")


def _replace_identity(store: StateDir, identity: Identity) -> Identity | None:
    """Save ``identity``, first copying a different existing one (even a corrupt one) aside."""
    current = store.identity_path
    if not current.exists():
        store.save_identity(identity)
        return None
    try:
        previous: Identity | None = read_identity_file(current)
    except (IdentityError, FileReadError):
        previous = None  # not readable as an identity, still kept byte for byte below
    if previous is None or previous.secret_key != identity.secret_key:
        try:
            # Bounded like every state file: a damaged one may be larger than an identity, not unbounded.
            kept = read_bounded(current, MAX_STATE_FILE_SIZE, "identity file")
            atomic_write(store.path / PREVIOUS_IDENTITY_FILE_NAME, kept, IDENTITY_MODE)
        except FileReadError as exc:
            fail(f"cannot keep the existing identity as {PREVIOUS_IDENTITY_FILE_NAME}: {exc}")
        except OSError as exc:
            fail(
                f"cannot keep the existing identity {current} as {PREVIOUS_IDENTITY_FILE_NAME}: "
                f"{exc.strerror or exc}"
            )
    store.save_identity(identity)
    return previous
