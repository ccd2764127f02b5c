"""A daemon whose interface or port is taken says so in one line, naming Husarnet as the likely holder.

husarnet_ros uses Husarnet's defaults (interface hnet0, UDP 5582 for peers, UDP 5581 for LAN discovery)
but not its wire protocol, so the two daemons cannot share them. In a lab namespace, each resource is taken
for real (a bound socket, an open TUN device, a running husarnet-ros daemon) before `husarnet-ros daemon`
starts; it must exit 1 with one `error: ...` line that says what is taken, who probably holds it and what to
do, print no traceback, and leave no hnet0 behind. Holders are lab processes, stopped by PID on cleanup.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from husarnet_ros.testing.lab_daemon import Daemon
from husarnet_ros.testing.netlab import Host, Lab, wait_until

pytestmark = pytest.mark.integration

EXIT_WITHIN_S = 30.0  # a daemon that cannot start exits long before this
HOLDER_S = 120  # a holder process lives at most this long (the lab stops it sooner)
HINT = "is Husarnet (husarnet-daemon) or another husarnet-ros daemon running? Stop it or "

# Binds a UDP port the way a program that does not share it would (no SO_REUSEADDR), then waits.
UDP_HOLDER = textwrap.dedent(
    f"""
    import socket, sys, time
    family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(sys.argv[2])))
    print("holding", flush=True)
    time.sleep({HOLDER_S})
    """
)
# Keeps a TUN device named hnet0 open, as Husarnet's daemon does.
TUN_HOLDER = textwrap.dedent(
    f"""
    import time, pytun
    device = pytun.TunTapDevice(name="hnet0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    print("holding", flush=True)
    time.sleep({HOLDER_S})
    """
)


def _hold(host: Host, program: str, *args: str) -> None:
    holder = host.popen(
        [sys.executable, "-c", program, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    line = holder.stdout.readline().strip()  # bounded: the holder prints at once or exits
    assert line == "holding", f"the holder did not start: {holder.stderr.read() if holder.stderr else ''}"


def _start_and_expect_failure(daemon: Daemon) -> str:
    """Start ``daemon``; it must exit 1 within EXIT_WITHIN_S. Returns its one error line."""
    daemon.start(wait_ready=False)
    assert daemon.process is not None
    try:
        status = daemon.process.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon did not give up within {EXIT_WITHIN_S:.0f} s:\n{daemon.log_tail()}")
    log = daemon.log_tail(200)
    assert status == 1, log
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log
    return errors[0]


@pytest.fixture
def host(lab: Lab) -> Host:
    (only,) = lab.lan(1, labels=["robot"])
    return only


def test_udp_port_5582_taken(host: Host, daemon_factory: Callable[..., Daemon]) -> None:
    _hold(host, UDP_HOLDER, "6", "5582")
    daemon = daemon_factory(host, "robot-a", start=False)
    line = _start_and_expect_failure(daemon)
    assert line == f"error: UDP port 5582 is in use — {HINT}choose another port with --udp-port"
    assert not host.interface_exists("hnet0"), "the failed daemon left hnet0 behind"


def test_discovery_port_5581_taken(host: Host, daemon_factory: Callable[..., Daemon]) -> None:
    _hold(host, UDP_HOLDER, "4", "5581")
    daemon = daemon_factory(host, "robot-a", start=False)
    line = _start_and_expect_failure(daemon)
    assert line.startswith(f"error: UDP port 5581 (LAN discovery) is in use — {HINT}"), line
    assert "discovery_enabled: false" in line  # the way out
    assert not host.interface_exists("hnet0"), "the failed daemon left hnet0 behind"


def test_interface_hnet0_held_by_another_program(host: Host, daemon_factory: Callable[..., Daemon]) -> None:
    _hold(host, TUN_HOLDER)
    daemon = daemon_factory(host, "robot-a", start=False)
    line = _start_and_expect_failure(daemon)
    assert line == f"error: interface hnet0 is in use — {HINT}choose another interface name with --interface"


def test_a_second_daemon_on_the_same_defaults_leaves_the_first_working(
    host: Host, daemon_factory: Callable[..., Daemon]
) -> None:
    first = daemon_factory(host, "robot-a")
    address = first.address
    second = daemon_factory(host, "robot-b", start=False)
    assert "interface hnet0 is in use" in _start_and_expect_failure(second)
    # Another interface name, same UDP port: the port is the next thing that collides.
    third = daemon_factory(host, "robot-c", start=False, interface="hnet1")
    assert "UDP port 5582 is in use" in _start_and_expect_failure(third)
    assert not host.interface_exists("hnet1"), "the failed daemon left hnet1 behind"
    # The running daemon lost nothing: same address, its interface still up, still answering.
    status: dict[str, Any] = wait_until(first.status, 10.0, what="the first daemon's status")
    assert status["address"] == address
    assert host.interface_exists("hnet0")
