"""`husarnet-ros dashboard` (also the `husarnet-ros-dashboard` command): run the Dashboard and manage its
accounts from the server's shell."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..core.license import DEFAULT_WEBSETUP_PORT
from .state import cli_state, fail, json_option, log_level_option, print_json

if TYPE_CHECKING:
    from ..dashboard.db import SessionFactory

# Kept in step with husarnet_ros.dashboard.settings (not imported: `husarnet-ros --help` must stay light).
DEFAULT_DATA_DIR = "/var/lib/husarnet-ros-dashboard"
DEFAULT_LISTEN = "127.0.0.1:8080"
DATA_DIR_ENV = "HUSARNET_ROS_DASHBOARD_DATA_DIR"
DATABASE_URL_ENV = "HUSARNET_ROS_DASHBOARD_DATABASE_URL"
MAX_PASSWORD_INPUT = 4096


def _storage_options(command: Any) -> Any:
    command = click.option(
        "--database-url",
        metavar="URL",
        envvar=DATABASE_URL_ENV,
        show_envvar=True,
        help="sqlite:///PATH or postgresql+psycopg://USER@HOST/DB. [default: the SQLite file in --data-dir]",
    )(command)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        envvar=DATA_DIR_ENV,
        show_envvar=True,
        show_default=True,
        help="Where the license key (and the SQLite database, unless --database-url) live.",
    )(command)


def _prepare_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        fail(
            f"cannot create the data directory {data_dir}: {exc.strerror or exc}; choose one with --data-dir"
        )


def _open_database(data_dir: Path, database_url: str | None) -> SessionFactory:
    """The migrated database, as a session factory closed when the command ends."""
    from ..dashboard.db import create_db_engine, default_url, migrate, session_factory

    if database_url is None:
        _prepare_data_dir(data_dir)
    url = database_url or default_url(data_dir)
    migrate(url)
    engine = create_db_engine(url)
    click.get_current_context().call_on_close(engine.dispose)
    return session_factory(engine)


@click.group("dashboard")
def dashboard() -> None:
    """The self-hosted Dashboard: accounts, devices, networks, join codes, and the license daemons pin.

    \b
    Examples:
      husarnet-ros dashboard create-user alice
      husarnet-ros dashboard serve --listen [::]:8080 --public-url http://dash.lan:8080 \\
          --base-server dash.lan:5582 --websetup-address fc94:...
      husarnet-ros dashboard fingerprint
    """


@dashboard.command()
@click.option(
    "--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT", help="Where to serve HTTP."
)
@_storage_options
@click.option(
    "--name", default="husarnet-ros", show_default=True, help="The installation's name (in the license)."
)
@click.option(
    "--public-url",
    metavar="URL",
    help="How daemons and browsers reach this Dashboard (in the license). [default: http://LISTEN]",
)
@click.option(
    "--base-server",
    "base_servers",
    multiple=True,
    metavar="HOST:PORT",
    help="A base server daemons should use (repeatable; in the license).",
)
@click.option(
    "--websetup-address", metavar="FC94", help="The fc94 address of Websetup (the server's daemon)."
)
@click.option(
    "--websetup-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_WEBSETUP_PORT,
    show_default=True,
    help="Websetup's port.",
)
@click.option(
    "--websetup",
    "run_websetup",
    is_flag=True,
    help="Also run Websetup in this process, on [--websetup-address]:--websetup-port (that address must be "
    "up: start the server's daemon first).",
)
@click.option(
    "--max-devices", type=click.IntRange(0, 10**9), default=1000, show_default=True, help="Devices at most."
)
@click.option(
    "--license-days",
    type=click.IntRange(1, 3650),
    default=365,
    show_default=True,
    help="How long a license fetched now stays valid.",
)
@log_level_option
def serve(
    listen: str,
    data_dir: Path,
    database_url: str | None,
    name: str,
    public_url: str | None,
    base_servers: tuple[str, ...],
    websetup_address: str | None,
    websetup_port: int,
    run_websetup: bool,
    max_devices: int,
    license_days: int,
    log_level: str,
) -> None:
    """Migrate the database, then serve the web UI, the REST API (/api/v1) and /license.json.

    \b
    Example:
      husarnet-ros dashboard serve --data-dir /var/lib/husarnet-ros-dashboard --listen 0.0.0.0:8080 \\
          --public-url http://198.18.0.10:8080 --base-server 198.18.0.10:5582 --websetup-address fc94:...
    """
    from ..dashboard.app import create_app, create_context
    from ..dashboard.server import bind_socket, parse_listen, serve_forever
    from ..dashboard.settings import DashboardSettings
    from ..exit_with_parent import exit_with_parent_if_asked

    # Started by server.launch.py: end with the launch however it ends (a SIGTERM to it too).
    exit_with_parent_if_asked()
    host, port = parse_listen(listen)
    url_host = f"[{host}]" if ":" in host else host
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        fail(f"--public-url {public_url!r}: give an http:// or https:// URL")
    _check_license_fields(name, base_servers)
    if run_websetup and websetup_address is None:
        fail("--websetup needs --websetup-address: the fc94 address of the server's daemon")
    _prepare_data_dir(data_dir)
    sock = bind_socket(host, port)
    websetup_sock = _bind_websetup(websetup_address, websetup_port, sock) if run_websetup else None
    # The port the system chose when asked for 0 is the one the default public URL must name.
    port = sock.getsockname()[1]
    settings = DashboardSettings(
        data_dir=data_dir,
        database_url=database_url,
        name=name,
        public_url=public_url or f"http://{url_host}:{port}",
        base_servers=base_servers,
        websetup_address=websetup_address,
        websetup_port=websetup_port,
        max_devices=max_devices,
        license_validity=timedelta(days=license_days),
    )
    try:
        ctx = create_context(settings)
    except BaseException:
        for bound in (sock, websetup_sock):
            if bound is not None:
                bound.close()
        raise
    app = create_app(settings, ctx)
    click.echo(f"Dashboard on http://{url_host}:{port} (public URL {settings.public_url})")
    click.echo(f"license key fingerprint {ctx.fingerprint}")
    if websetup_address is None:
        click.echo(
            "warning: no --websetup-address: /license.json cannot be issued, so daemons cannot be set up yet",
            err=True,
        )
    if websetup_sock is None:
        sys.stdout.flush()
        serve_forever(app, sock, log_level.lower())
        return
    import asyncio

    from ..dashboard.server import dashboard_server
    from ..dashboard.websetup import create_websetup_app, serve_together, websetup_server

    click.echo(f"Websetup on [{websetup_address}]:{websetup_port}")
    sys.stdout.flush()
    servers = [
        (dashboard_server(app, log_level.lower()), [sock]),
        (websetup_server(create_websetup_app(ctx.sessions), log_level), [websetup_sock]),
    ]
    asyncio.run(serve_together(servers))


def _check_license_fields(name: str, base_servers: tuple[str, ...]) -> None:
    """What goes into the license, checked at start even before a Websetup address makes one."""
    from ..core.base_client import parse_base_server
    from ..core.license import MAX_BASE_SERVERS, MAX_NAME_LENGTH

    if not name.strip() or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        fail(f"--name: give 1 to {MAX_NAME_LENGTH} printable characters")
    if len(base_servers) > MAX_BASE_SERVERS:
        fail(f"--base-server: at most {MAX_BASE_SERVERS}")
    for server in base_servers:
        parse_base_server(server)  # ConfigError: one line saying how to write it


def _bind_websetup(address: str | None, port: int, dashboard_sock: Any) -> Any:
    from ..dashboard.websetup import bind_listen_socket

    assert address is not None
    try:
        return bind_listen_socket(address, port)
    except OSError as exc:
        dashboard_sock.close()
        fail(
            f"Websetup cannot listen on [{address}]:{port}: {exc.strerror or exc} (is the server's daemon, "
            "with that address, running?)"
        )


@dashboard.command("create-user")
@click.argument("username")
@_storage_options
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@json_option
def create_user(username: str, data_dir: Path, database_url: str | None, password_stdin: bool) -> None:
    """Create an account (there is no default account or password).

    \b
    Examples:
      husarnet-ros dashboard create-user alice
      printf '%s\\n' "$PASSWORD" | husarnet-ros dashboard create-user alice --password-stdin
    """
    from ..dashboard import service
    from ..dashboard.accounts import check_password, check_username
    from ..dashboard.clock import utc_now
    from ..dashboard.db import transaction

    check_username(username)
    if password_stdin:
        password = sys.stdin.readline(MAX_PASSWORD_INPUT).rstrip("\r\n")
        if not password:
            fail("--password-stdin: stdin gave no password (one line expected)")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    check_password(password)
    sessions = _open_database(data_dir, database_url)
    with transaction(sessions) as session:
        account = service.create_account(session, username, password, utc_now())
        code = service.account_join_code(session, account)
    if cli_state().json:
        print_json({"username": username, "join_code": code})
        return
    click.echo(f"created account {username}; its join code is {code}")


@dashboard.command("create-token")
@click.argument("username")
@click.argument("name")
@_storage_options
@json_option
def create_token(username: str, name: str, data_dir: Path, database_url: str | None) -> None:
    """Create an API token for an account (scripts send Authorization: Bearer TOKEN); shown only once.

    \b
    Example:
      husarnet-ros dashboard create-token alice ci
    """
    from ..dashboard import service
    from ..dashboard.clock import utc_now
    from ..dashboard.db import transaction

    sessions = _open_database(data_dir, database_url)
    with transaction(sessions) as session:
        account = service.account_by_username(session, username)
        if account is None:
            fail(f"no account named {username!r}: create it with husarnet-ros dashboard create-user")
        token, secret = service.create_token(session, account, name, utc_now())
        token_id = token.id
    if cli_state().json:
        print_json({"id": token_id, "username": username, "name": name, "token": secret})
        return
    click.echo(secret)
    click.echo(f"(token {token_id} {name!r} of {username}: shown only now, keep it)", err=True)


@dashboard.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    envvar=DATA_DIR_ENV,
    show_default=True,
    help="Where the license key lives.",
)
@json_option
def fingerprint(data_dir: Path) -> None:
    """Show the license key's fingerprint (give it to husarnet-ros setup-server --fingerprint).

    \b
    Example:
      husarnet-ros dashboard fingerprint
    """
    from ..core.license import fingerprint as key_fingerprint
    from ..dashboard.license_key import load_license_key

    value = key_fingerprint(bytes(load_license_key(data_dir).verify_key))
    if cli_state().json:
        print_json({"fingerprint": value})
        return
    click.echo(value)


def main() -> int:
    """Entry point of the `husarnet-ros-dashboard` console script."""
    from .main import main as cli_main

    return cli_main(["dashboard", *sys.argv[1:]])
