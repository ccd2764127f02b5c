"""Commands that ask the running daemon about the overlay: status, peers, ping, wait, logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import NoReturn

import click

from ..api import (
    MAX_LOG_LINES,
    MAX_PING_COUNT,
    MAX_PING_INTERVAL_S,
    MAX_PING_TIMEOUT_S,
    MAX_WAIT_TIMEOUT_S,
    MIN_PING_INTERVAL_S,
    MIN_PING_TIMEOUT_S,
    PingReply,
    shorten,
)
from ..client import ClientError, DaemonUnavailable, WaitTimedOut
from . import render
from .state import cli_state, fail, json_option, print_json

DEFAULT_WAIT_TIMEOUT_S = 30.0


@click.command()
@json_option
def status() -> None:
    """Show this node's address, hostname, whitelist state and every peer.

    For each peer: path (direct, tunnelled through a base server, or none), endpoint, RTT, age of the last
    handshake, bytes.

    \b
    Examples:
      husarnet-ros status
      husarnet-ros status --json | jq '.peers[] | {hostname, path, rtt_ms}'
    """
    state = cli_state()
    answer = state.client().status()
    if state.json:
        print_json(answer)
    else:
        render.print_status(answer)


@click.command()
@json_option
def peers() -> None:
    """List peers: address, hostname, path (direct, tunnelled or none), endpoint, RTT, last handshake, rx/tx.

    \b
    Example:
      husarnet-ros peers
    """
    state = cli_state()
    answer = state.client().peers()
    if state.json:
        print_json(answer)
    else:
        render.print_peers(answer)


@click.command()
@click.argument("target", metavar="ADDR|HOSTNAME")
@click.option(
    "-c",
    "--count",
    type=click.IntRange(1, MAX_PING_COUNT),
    default=3,
    show_default=True,
    help="Number of probes.",
)
@click.option(
    "-i",
    "--interval",
    type=click.FloatRange(MIN_PING_INTERVAL_S, MAX_PING_INTERVAL_S),
    default=1.0,
    show_default=True,
    help="Seconds between probes.",
)
@click.option(
    "-W",
    "--timeout",
    type=click.FloatRange(MIN_PING_TIMEOUT_S, MAX_PING_TIMEOUT_S),
    default=2.0,
    show_default=True,
    help="Seconds to wait for each reply.",
)
@json_option
def ping(target: str, count: int, interval: float, timeout: float) -> None:
    """Ping a peer with authenticated probes and say how it was reached.

    Each reply line shows the RTT and the path it took ("direct via ENDPOINT" or "tunnelled"). Exits 0
    if any reply came back, 1 otherwise.

    \b
    Examples:
      husarnet-ros ping robot2
      husarnet-ros ping fc94:b01d:1803:8dd8:b293:5c7d:7639:932a -c 10 -i 0.2
    """
    state = cli_state()
    client = state.client()
    if state.json:
        result = client.ping(target, count=count, interval_s=interval, timeout_s=timeout)
        print_json(result)
        if result.received == 0:
            raise SystemExit(1)
        return
    address = client.resolve(target)
    click.echo(render.ping_header(target, address))
    sent = received = 0
    try:
        # One probe per request so each line appears as its reply arrives, as with ping(8).
        for seq in range(1, count + 1):
            if seq > 1:
                time.sleep(interval)
            result = client.ping(address, count=1, interval_s=interval, timeout_s=timeout)
            reply = result.replies[0] if result.replies else PingReply(seq=seq, rtt_ms=None)
            sent += 1
            received += reply.rtt_ms is not None
            click.echo(render.ping_reply_line(result, seq, reply.rtt_ms))
    except KeyboardInterrupt:
        click.echo()
    for line in render.ping_summary(target, sent, received):
        click.echo(line)
    if received == 0:
        raise SystemExit(1)


@click.group()
@json_option
def wait() -> None:
    """Block until the daemon is ready, a peer is reachable, a base server answers or it joined (scripts).

    Both commands first wait for a daemon to answer on the control socket: a missing socket (the daemon
    is still starting) or one nobody answers on (left behind by a killed daemon) is retried until the
    timeout, so they can follow the command that starts the daemon. Exits 0 when reached, 1 on timeout.

    \b
    Examples:
      husarnet-ros daemon & husarnet-ros wait ready --timeout 20 && husarnet-ros status
      husarnet-ros wait peer robot2 --timeout 60
    """


_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(0, MAX_WAIT_TIMEOUT_S),
    default=DEFAULT_WAIT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait.",
)


@wait.command("ready")
@_timeout_option
@json_option
def wait_ready(timeout: float) -> None:
    """Wait until a daemon answers on the control socket with its interface up and transport bound.

    A missing or stale control socket is waited for too (see `husarnet-ros wait --help`).

    \b
    Example:
      husarnet-ros wait ready --timeout 20
    """
    state = cli_state()
    client = state.client()
    what = "waiting for the daemon to be ready"
    try:
        reached = client.wait_ready(timeout, on_retry=_progress(state.socket_path))
    except WaitTimedOut as exc:
        _never_answered(f"timed out after {timeout:g} s {what}: {exc}")
    _report_wait(reached, "daemon ready", f"timed out after {timeout:g} s {what}")


@wait.command("peer")
@click.argument("target", metavar="ADDR|HOSTNAME")
@_timeout_option
@json_option
def wait_peer(target: str, timeout: float) -> None:
    """Wait until the daemon has a working path to a peer.

    Waits for a daemon to answer on the control socket first (see `husarnet-ros wait --help`), and for a
    host name the daemon does not know yet (a peer's name may be learnt only when it connects).

    \b
    Example:
      husarnet-ros wait peer robot2 --timeout 60
    """
    state = cli_state()
    client = state.client()
    shown = shorten(target)
    what = f"waiting for a path to {shown}"
    try:
        reached = client.wait_peer(target, timeout, on_retry=_progress(state.socket_path))
    except WaitTimedOut as exc:
        _never_answered(f"timed out after {timeout:g} s {what}: {exc}")
    _report_wait(reached, f"{shown} reachable", f"timed out after {timeout:g} s {what}")


@wait.command("base")
@_timeout_option
@json_option
def wait_base(timeout: float) -> None:
    """Wait until the daemon is registered with a base server (peers on other networks can then be reached).

    Fails at once when the daemon has no base server configured. Waits for a daemon to answer on the
    control socket first (see `husarnet-ros wait --help`).

    \b
    Example:
      husarnet-ros wait base --timeout 30
    """
    state = cli_state()
    client = state.client()
    what = "waiting for a base server"
    deadline = time.monotonic() + timeout
    try:
        ready = client.wait_ready(timeout, on_retry=_progress(state.socket_path))
    except WaitTimedOut as exc:
        _never_answered(f"timed out after {timeout:g} s {what}: {exc}")
    reached = False
    while ready:
        status = client.status()
        if not status.base_servers:
            fail(
                "the daemon has no base server configured "
                "(husarnet-ros base add HOST[:PORT], or daemon --base-server)"
            )
        if status.base is not None and status.base.state == "registered":
            reached = True
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(min(_BASE_POLL_S, max(0.0, deadline - time.monotonic())))
    in_use = f"base server {status.base.address} ({status.base.transport})" if reached and status.base else ""
    _report_wait(reached, f"registered with {in_use}", f"timed out after {timeout:g} s {what}")


_BASE_POLL_S = 0.2


@wait.command("joined")
@_timeout_option
@json_option
def wait_joined(timeout: float) -> None:
    """Wait until the daemon holds a config from the Dashboard it is set up with (after `husarnet-ros join`).

    Waits for a daemon to answer on the control socket first (see `husarnet-ros wait --help`). Fails at once
    when no Dashboard is set up (husarnet-ros setup-server ADDR).

    \b
    Example:
      husarnet-ros join 8Kd2-pQ && husarnet-ros wait joined --timeout 30
    """
    state = cli_state()
    client = state.client()
    what = "waiting for a config from the Dashboard"
    try:
        reached = client.wait_joined(timeout, on_retry=_progress(state.socket_path))
    except WaitTimedOut as exc:
        _never_answered(f"timed out after {timeout:g} s {what}: {exc}")
    if not reached:
        license_ = client.status().license
        if license_ is None:
            fail("no Dashboard is set up: run husarnet-ros setup-server ADDR, then husarnet-ros join CODE")
        if license_.expired:
            fail(f"the license of {license_.name!r} expired: run husarnet-ros setup-server ADDR once renewed")
    _report_wait(reached, "joined", f"timed out after {timeout:g} s {what}")


def _progress(socket_path: str) -> Callable[[ClientError], None]:
    """Says once on stderr that the wait is for a daemon to answer, when a person is watching."""
    told: list[bool] = []

    def tell(exc: ClientError) -> None:
        if not told and isinstance(exc, DaemonUnavailable) and sys.stderr.isatty():
            click.echo(f"waiting for a daemon to answer on {shorten(socket_path)} ...", err=True)
            told.append(True)

    return tell


def _report_wait(reached: bool, reached_message: str, timeout_message: str) -> None:
    if cli_state().json:
        print_json({"reached": reached})
        if not reached:
            raise SystemExit(1)
        return
    if not reached:
        fail(timeout_message)
    click.echo(reached_message)


def _never_answered(message: str) -> NoReturn:
    """A wait that timed out before the daemon could answer it: for scripts the same timeout as any
    other (``{"reached": false}``, exit status 1), with the reason on stderr."""
    if cli_state().json:
        print_json({"reached": False})
        click.echo(f"error: {message}", err=True)
        raise SystemExit(1)
    fail(message)


@click.command()
@click.option(
    "-n",
    "--lines",
    "limit",
    type=click.IntRange(1, MAX_LOG_LINES),
    default=50,
    show_default=True,
    help="How many of the most recent lines.",
)
@json_option
def logs(limit: int) -> None:
    """Show the daemon's most recent log lines.

    \b
    Example:
      husarnet-ros logs -n 200
    """
    state = cli_state()
    lines = state.client().logs(limit)
    if state.json:
        print_json({"lines": lines})
        return
    for line in lines:
        click.echo(line)
