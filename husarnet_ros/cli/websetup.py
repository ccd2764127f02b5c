"""`husarnet-ros websetup`: run the Websetup service alone, over the Dashboard's database."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from pathlib import Path

import click

from ..api import quote_input
from ..core.license import DEFAULT_WEBSETUP_PORT
from .state import CliFailure, log_level_option

LISTEN_FORMS = "[ADDR]:PORT, ADDR:PORT (IPv4), :PORT (every address) or [ADDR] (port 5590)"


def parse_listen(text: str) -> tuple[str, int]:
    """``[fc94::1]:5590`` -> ("fc94::1", 5590); ``:5590`` -> ("::", 5590); ``[fc94::1]`` -> port 5590;
    ``192.0.2.1:80`` for IPv4. CliFailure for anything else."""
    value = text.strip()
    host, port_text = "::", str(DEFAULT_WEBSETUP_PORT)
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[1:end], value[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise CliFailure(f"--listen {quote_input(text)}: expected {LISTEN_FORMS}")
        port_text = rest[1:] if rest else port_text
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        host = host or "::"
    else:
        raise CliFailure(
            f"--listen {quote_input(text)}: expected {LISTEN_FORMS}; an IPv6 address goes in brackets"
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise CliFailure(f"--listen {quote_input(text)}: {quote_input(host)} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CliFailure(f"--listen {quote_input(text)}: the port must be a number from 1 to 65535")
    return host, int(port_text)


@click.command("websetup")
@click.option(
    "--listen",
    "listen",
    metavar="[ADDR]:PORT",
    default=f"[::]:{DEFAULT_WEBSETUP_PORT}",
    show_default=True,
    help="Where to listen: normally the server daemon's fc94 address and the license's websetup_port.",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="The Dashboard's database: sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE "
    "[default: the SQLite file in --data-dir]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The Dashboard's data directory (its SQLite database), when no --database-url is given.",
)
@log_level_option
def websetup(listen: str, database_url: str | None, data_dir: Path | None, log_level: str) -> None:
    """Run Websetup: daemons join with a join code, long-poll their whitelist and hosts, and report their
    links, over the overlay. A device is known by the fc94 source address of its connection, so listen on
    the fc94 address of a husarnet-ros daemon running on this machine (with its whitelist off, so that
    unclaimed devices can reach it); requests from other addresses are refused.

    It shares the Dashboard's database; `husarnet-ros dashboard serve --websetup` runs both in one process.

    \b
    Example:
      husarnet-ros websetup --listen [fc94:b01d:1803:8dd8:b293:5c7d:7639:932a]:5590 \\
          --database-url postgresql+psycopg://dashboard@localhost/dashboard
    """
    from ..dashboard import db
    from ..dashboard.websetup import (
        WebsetupSettings,
        bind_listen_socket,
        create_websetup_app,
        serve_together,
        websetup_server,
    )
    from ..exit_with_parent import exit_with_parent_if_asked

    # Started by server.launch.py: end with the launch however it ends (a SIGTERM to it too).
    exit_with_parent_if_asked()
    host, port = parse_listen(listen)
    if database_url is None:
        if data_dir is None:
            raise CliFailure("give --database-url URL, or --data-dir DIR of the Dashboard (its SQLite file)")
        database_url = db.default_url(data_dir)
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The schema is the Dashboard's, but Websetup may start first: migrating is idempotent.
    db.migrate(database_url)
    try:
        sock = bind_listen_socket(host, port)
    except OSError as exc:
        hint = " (is the husarnet-ros daemon with this address running?)" if host.startswith("fc94") else ""
        raise CliFailure(f"cannot listen on [{host}]:{port}: {exc.strerror or exc}{hint}") from None
    server = websetup_server(create_websetup_app(WebsetupSettings(database_url)), log_level)
    logging.getLogger(__name__).info("Websetup listening on [%s]:%d", host, port)
    try:
        asyncio.run(serve_together([(server, [sock])]))
    finally:
        sock.close()
