"""Demo fleet: four robots on three networks, behind NATs and a firewall, joined through their own Dashboard.

    python -m husarnet_ros.testing.demo [--keep] [--timeout S]

Network namespaces make a small internet (husarnet_ros.testing.natlab) with a base server on it
(``husarnet-ros base-server``), the self-hosted control plane on another host (``husarnet-ros dashboard
serve --websetup`` on TCP 443, Websetup behind that host's own daemon; the Dashboard is also opened on
this machine at http://127.0.0.1:8080, user and password printed) and three sites: robot-a and robot-b share
a LAN behind a port-restricted NAT, robot-c is behind a symmetric NAT, robot-d behind a firewall that lets
only TCP 443 out. Each robot runs its own ``husarnet-ros daemon`` with nothing configured: it runs
``husarnet-ros setup-server`` (pinning the Dashboard's license key by its fingerprint; the base server comes
from the license) and ``husarnet-ros join CODE`` with the join code of one network, so Websetup pushes every
robot's whitelist and hosts. The demo waits until they are peers, prints each robot's status table (which
links are direct, which tunnelled through the base server, over UDP or TCP), pings every other robot over
its fc94 address (with ``husarnet-ros ping`` and with ``ping -6``). Then the ROS 2 part: multicast is
dropped on the LANs (only the daemons' beacons pass), robot-a and robot-b run ``ros2 launch husarnet_ros
fleet.launch.py`` from one fleet file, a plain rclpy talker on robot-a reaches a listener on robot-b through
the overlay with the generated DDS configuration, and robot-b's ``/robot_b/husarnet/peers`` table is shown.
A summary ends it (``--no-ros`` skips the ROS part). Everything is removed on exit, on error and on Ctrl-C.
Needs root.

Each step is a function taking the :class:`Fleet`, so later parts (ROS) can add steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from husarnet_ros.core.errors import HusarnetError
from husarnet_ros.testing.control_lab import ADMIN, ControlStack
from husarnet_ros.testing.lab_base import LabBaseServer
from husarnet_ros.testing.lab_daemon import Daemon, husarnet_ros_command, husarnet_ros_missing
from husarnet_ros.testing.natlab import NatKind, NatLab
from husarnet_ros.testing.netlab import Host, Lab, LabError, cleanup_stale, netns_supported
from husarnet_ros.testing.ros_launch import ROS2, RobotLaunch

# Where each robot is: sites of the demo's small internet, and how each site reaches it.
SITES = {
    "home": (NatKind.PORT_RESTRICTED, ("robot-a", "robot-b")),
    "field": (NatKind.SYMMETRIC, ("robot-c",)),
    "office": (NatKind.UDP_BLOCKED, ("robot-d",)),
}
SITE_WORDS = {
    NatKind.PORT_RESTRICTED: "behind a port-restricted NAT",
    NatKind.SYMMETRIC: "behind a symmetric NAT",
    NatKind.UDP_BLOCKED: "behind a firewall that lets only TCP 443 out",
}
PING_COUNT = 3
ROS_ROBOTS = ("robot-a", "robot-b")  # the ROS part: talker on the first, listener on the second
ROS_DOMAIN_ID = 0  # what a user has by default; the namespaces keep the demo's DDS traffic to itself
LAUNCH_READY_S = 90.0  # bound for a launch to print its DDS environment
LISTEN_S = 45.0
MESSAGES = 5
CHATTER = [sys.executable, "-m", "husarnet_ros.testing.chatter"]
NETWORK_NAME = "demo-fleet"
DASHBOARD_LOCAL_PORT = 8080  # http://127.0.0.1:8080 on this machine, or any free port if that one is taken


@dataclass
class PingOutcome:
    source: str
    target: str
    address: str
    cli_ok: bool
    received: int
    transmitted: int
    rtt_avg_ms: float | None
    path: str = "none"  # direct or tunnelled, as the source's daemon says after the pings
    via: str = ""  # the endpoint (direct) or the base server and its transport (tunnelled)

    @property
    def ok(self) -> bool:
        return self.cli_ok and self.transmitted > 0 and self.received == self.transmitted


@dataclass
class Fleet:
    """The running demo: the lab, one daemon per robot, and what the steps found out."""

    lab: Lab
    base: LabBaseServer | None = None
    control: ControlStack | None = None  # the self-hosted Dashboard, Websetup and Websetup's daemon
    dashboard_devices: int | None = None  # devices the Dashboard lists in the demo's network
    daemons: list[Daemon] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)  # hostname -> fc94 address
    pings: list[PingOutcome] = field(default_factory=list)
    peer_timeout: float = 30.0
    launches: list[RobotLaunch] = field(default_factory=list)
    ros_messages: int | None = None  # messages robot-b heard from robot-a; None when the ROS part did not run
    ros_first_message_s: float | None = None  # from starting the launches to the first message
    ros_peer_rows: int | None = None  # rows of robot-b's /husarnet/peers table

    @property
    def hosts(self) -> list[Host]:
        return [daemon.host for daemon in self.daemons]

    def require_control(self) -> ControlStack:
        if self.control is None:
            raise LabError("the Dashboard is not running")
        return self.control


Step = Callable[[Fleet], None]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def heading(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# --- steps --------------------------------------------------------------------------
def start_robots(fleet: Fleet) -> None:
    """The small internet with a base server and the self-hosted Dashboard, the sites, a daemon per robot."""
    net = NatLab(fleet.lab)
    fleet.base = LabBaseServer.start(net.public_host("base"))
    progress(
        f"base server on the internet: {fleet.base.address} (UDP) and TCP 443, "
        f"namespace {fleet.base.host.netns}"
    )
    control_host = net.public_host("control")
    # TCP 443: the office's firewall lets nothing else out, and its robot must reach the Dashboard too.
    fleet.control = ControlStack.start(
        fleet.lab,
        control_host,
        bases=[fleet.base],
        dashboard_port=443,
        local_port=DASHBOARD_LOCAL_PORT,
        websetup_in_dashboard=True,
    )
    progress(
        f"Dashboard, Websetup and Websetup's daemon on the internet: http://{fleet.control.server_address}, "
        f"namespace {control_host.netns}"
    )
    progress(
        f"Dashboard on this machine: {fleet.control.url} (user {ADMIN}, password {fleet.control.password})"
    )
    for site_name, (kind, robots) in SITES.items():
        site = net.site(site_name, kind, robots=0)
        hosts = [net.add_robot(site, label) for label in robots]
        progress(
            f"{', '.join(robots)}: LAN {site.lan_network} {SITE_WORDS[kind]} (public address {site.wan_ipv4})"
        )
        for host in hosts:
            # No base server given: the Dashboard's license brings it. Beacons only from the robot's own LAN.
            extra = ["--discovery-networks", site.lan_network]
            fleet.daemons.append(Daemon.create(host, host.label, extra_args=extra))
    for daemon in fleet.daemons:
        daemon.start(wait_ready=False)
        progress(f"{daemon.hostname}: daemon started (pid {daemon.pid}, log {daemon.log_path})")
    for daemon in fleet.daemons:
        daemon.wait_ready()
        fleet.addresses[daemon.hostname] = daemon.address
        progress(f"{daemon.hostname}: ready, overlay address {fleet.addresses[daemon.hostname]}")


def join_with_a_code(fleet: Fleet) -> None:
    """Every robot sets the Dashboard up (pinning its license key) and joins one network with its code."""
    control = fleet.require_control()
    fingerprint = json.loads(control.run_dashboard_cli("fingerprint", "--json").stdout)["fingerprint"]
    network_id, code = control.create_network(NETWORK_NAME)
    progress(
        f"Dashboard: network {NETWORK_NAME!r} created; its join code is {code[:4]}... (license {fingerprint})"
    )
    for daemon in fleet.daemons:
        daemon.cli("setup-server", control.server_address, "--fingerprint", fingerprint, timeout=60)
        progress(f"{daemon.hostname}: husarnet-ros setup-server {control.server_address} --fingerprint ...")
    for daemon in fleet.daemons:
        daemon.cli("join", code, daemon.hostname, timeout=90)
        progress(f"{daemon.hostname}: husarnet-ros join <code> {daemon.hostname}")
    for daemon in fleet.daemons:
        daemon.cli("wait", "joined", "--timeout", str(fleet.peer_timeout), timeout=fleet.peer_timeout + 10)
        daemon.cli("wait", "base", "--timeout", str(fleet.peer_timeout), timeout=fleet.peer_timeout + 10)
        base = daemon.status().get("base") or {}
        progress(f"{daemon.hostname}: joined; registered with the base server over {base.get('transport')}")
    members = control.api("GET", f"/networks/{network_id}/devices")
    online = sum(bool(device["online"]) for device in members)
    progress(f"Dashboard: {len(members)} devices in {NETWORK_NAME!r}, {online} online")
    fleet.dashboard_devices = len(members)


def wait_for_peers(fleet: Fleet) -> None:
    for daemon in fleet.daemons:
        for other, address in fleet.addresses.items():
            if other != daemon.hostname:
                daemon.wait_peer(address, timeout=fleet.peer_timeout)
                progress(f"{daemon.hostname}: peer {other} is up")


def show_status(fleet: Fleet) -> None:
    for daemon in fleet.daemons:
        heading(f"status on {daemon.hostname}")
        print(daemon.cli("status").stdout.rstrip(), flush=True)


def ping_each_other(fleet: Fleet) -> None:
    for daemon in fleet.daemons:
        for other, address in fleet.addresses.items():
            if other == daemon.hostname:
                continue
            heading(f"{daemon.hostname} -> {other} ({address})")
            cli = daemon.cli("ping", address, "-c", str(PING_COUNT), check=False, timeout=30.0)
            print(f"$ husarnet-ros ping {address} -c {PING_COUNT}\n{(cli.stdout + cli.stderr).rstrip()}")
            kernel = daemon.host.ping6(address, PING_COUNT)
            print(f"$ ping -6 -c {PING_COUNT} {address}\n{kernel.output.rstrip()}", flush=True)
            path, via = path_of(daemon, address)
            fleet.pings.append(
                PingOutcome(
                    daemon.hostname,
                    other,
                    address,
                    cli.returncode == 0,
                    kernel.received,
                    kernel.transmitted,
                    kernel.rtt_avg_ms,
                    path,
                    via,
                )
            )


def path_of(daemon: Daemon, address: str) -> tuple[str, str]:
    """How ``daemon`` reaches ``address`` now: the path, and the endpoint or base server it goes through."""
    entry = daemon.peer(address) or {}
    path = str(entry.get("path", "none"))
    if path == "tunnelled":
        transport = (daemon.status().get("base") or {}).get("transport", "")
        return path, f"via base server {entry.get('base_server')} ({transport})"
    return path, f"via {entry.get('endpoint')}" if entry.get("endpoint") else ""


def print_summary(fleet: Fleet) -> None:
    heading("summary")
    for name, address in fleet.addresses.items():
        print(f"{name:10} {address}")
    print()
    for outcome in fleet.pings:
        rtt = "-" if outcome.rtt_avg_ms is None else f"{outcome.rtt_avg_ms:.3f} ms"
        verdict = "ok  " if outcome.ok else "FAIL"
        cli = "ok" if outcome.cli_ok else "failed"
        kernel = f"{outcome.received}/{outcome.transmitted}"
        pair = f"{outcome.source} -> {outcome.target}"
        print(
            f"{verdict} {pair}: {outcome.path} {outcome.via}; "
            f"husarnet-ros ping {cli}, ping -6 {kernel}, avg {rtt}"
        )
    good = sum(outcome.ok for outcome in fleet.pings)
    print(f"\n{good}/{len(fleet.pings)} robot pairs reach each other over the overlay", flush=True)
    if fleet.control is not None:
        print(
            f"Dashboard: {fleet.control.url} (user {ADMIN}, password {fleet.control.password}); "
            f"{fleet.dashboard_devices or 0}/{len(fleet.daemons)} robots joined {NETWORK_NAME!r} "
            "with its join code",
            flush=True,
        )
    if fleet.ros_messages is not None:
        first = fleet.ros_first_message_s
        when = "" if first is None else f", the first {first:.1f} s after launch"
        print(
            f"ROS 2: {fleet.ros_messages}/{MESSAGES} messages from robot-a reached robot-b{when}; "
            f"/robot_b/husarnet/peers listed {fleet.ros_peer_rows or 0} peers",
            flush=True,
        )


def write_fleet_file(fleet: Fleet, path: Path) -> None:
    """The fleet described once: every robot's address; ROS namespaces robot_a, robot_b, ..."""
    lines = ["# written by the husarnet_ros demo", "robots:"]
    for name, address in fleet.addresses.items():
        lines.append(f"  {name}: {{address: '{address}', namespace: {name.replace('-', '_')}}}")
    path.write_text("\n".join(lines) + "\n")


def ros_across_robots(fleet: Fleet) -> None:
    """Two robots launched from one fleet file; a talker on one reaches a listener on the other."""
    heading("ROS 2 over the overlay")
    if not Path(ROS2).exists():
        raise LabError(f"the ROS part needs the ros2 CLI ({ROS2} is missing): run setup.sh, or --no-ros")
    workroot = Path(tempfile.mkdtemp(prefix=f"{fleet.lab.prefix}-ros-", dir="/tmp"))
    fleet_file = workroot / "fleet.yaml"
    write_fleet_file(fleet, fleet_file)
    progress(f"fleet file {fleet_file}: {', '.join(fleet.addresses)}")
    by_name = {daemon.hostname: daemon for daemon in fleet.daemons}
    for host in fleet.hosts:
        host.drop_multicast(keep_discovery=True)
    progress("multicast dropped on the LAN (nftables; only the daemons' beacons pass): DDS must go unicast")
    try:
        for name in ROS_ROBOTS:
            daemon = by_name[name]
            robot = RobotLaunch(name, daemon.host, workroot / name, ROS_DOMAIN_ID)
            fleet.launches.append(robot)
            arguments = {
                "fleet": str(fleet_file),
                "robot": name,
                "start_daemon": "false",
                "control_socket": str(daemon.control_socket),
                "dds_output_dir": str(robot.workdir / "dds"),
            }
            robot.start("fleet.launch.py", arguments)
            shown = " ".join(f"{k}:={arguments[k]}" for k in ("fleet", "robot", "start_daemon"))
            progress(f"{name}: ros2 launch husarnet_ros fleet.launch.py {shown} ...")
        for robot in fleet.launches:
            env = robot.wait_for_exports(LAUNCH_READY_S)
            progress(f"{robot.name}: DDS configured ({env['FASTDDS_DEFAULT_PROFILES_FILE']}), nodes starting")
        talker_robot, listener_robot = fleet.launches
        talker = talker_robot.host.popen(
            [*CHATTER, "talk", "--seconds", str(LISTEN_S + 15)],
            env=talker_robot.user_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        progress(f"{talker_robot.name}: talker publishing std_msgs/String on /chatter")
        try:
            heard = listener_robot.host.run(
                [*CHATTER, "listen", "--seconds", str(LISTEN_S), "--count", str(MESSAGES)],
                env=listener_robot.user_env(),
                check=False,
                timeout=LISTEN_S + 30,
            )
        finally:
            fleet.lab.stop_process(talker)
        lines = heard.stdout.strip().splitlines()
        summary: dict[str, Any] = json.loads(lines[-1]) if lines else {"count": 0}
        fleet.ros_messages = int(summary["count"])
        if summary.get("first"):
            fleet.ros_first_message_s = float(summary["first"]) - min(r.started for r in fleet.launches)
        for data in summary.get("data", []):
            print(f"{listener_robot.name} heard: {data}")
        if not fleet.ros_messages:
            print(f"{listener_robot.name} heard nothing: {heard.stderr[-2000:]}", flush=True)
        topic = f"/{listener_robot.name.replace('-', '_')}/husarnet/peers"
        heading(f"{topic} on {listener_robot.name} (husarnet_ros/msg/PeerArray)")
        print(f"$ ros2 topic echo --once {topic}   # shown as a table:")
        table = listener_robot.host.run(
            [*CHATTER, "peers", "--topic", topic, "--seconds", "30"],
            env=listener_robot.user_env(),
            check=False,
            timeout=60,
        )
        print((table.stdout or table.stderr).rstrip(), flush=True)
        fleet.ros_peer_rows = len(table.stdout.strip().splitlines()) - 1 if table.returncode == 0 else 0
        drops = [host.multicast_drop_count() for host in fleet.hosts]
        progress(f"multicast packets dropped on the LAN meanwhile: {sum(drops)} (DDS never needed multicast)")
    finally:
        for robot in fleet.launches:
            robot.stop()
        if fleet.ros_messages:
            shutil.rmtree(workroot, ignore_errors=True)
        else:
            print(f"ROS part failed: launch logs kept in {workroot}", file=sys.stderr, flush=True)


NETWORK_STEPS: tuple[Step, ...] = (
    start_robots,
    join_with_a_code,
    wait_for_peers,
    show_status,
    ping_each_other,
)
ALL_STEPS: tuple[Step, ...] = (*NETWORK_STEPS, ros_across_robots)


# --- running ----------------------------------------------------------------------------
def prerequisites() -> str | None:
    """None when the demo can run, else what is missing."""
    reason = netns_supported()
    if reason:
        return f"the demo {reason}; run it as root (sudo)"
    missing = husarnet_ros_missing()
    if missing:
        return f"{missing}; install the package into this venv first"
    return None


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def wait_for_enter(fleet: Fleet) -> None:
    heading("fleet left running")
    for daemon in fleet.daemons:
        print(
            f"{daemon.hostname}: ip netns exec {daemon.host.netns} {' '.join(husarnet_ros_command())} "
            f"--control-socket {daemon.control_socket} status"
        )
    print("\nPress Enter to stop the fleet and clean up.", flush=True)
    with contextlib.suppress(OSError, ValueError):  # no terminal: stop at once
        sys.stdin.readline()


def run_demo(steps: Sequence[Step] = ALL_STEPS, *, keep: bool = False, peer_timeout: float = 30.0) -> int:
    """Run ``steps`` on a fresh fleet, print the summary, clean up; returns the exit status."""
    removed = cleanup_stale()
    if removed:
        progress(f"removed leftovers of crashed runs: {', '.join(removed)}")
    fleet: Fleet | None = None
    keep_files = False  # daemon logs stay on disk when something went wrong
    failed = True
    try:
        with Lab() as lab:
            fleet = Fleet(lab, peer_timeout=peer_timeout)
            progress(f"lab {lab.prefix}: building the LAN")
            for step in steps:
                step(fleet)
            print_summary(fleet)
            if keep:
                wait_for_enter(fleet)
            progress("cleaning up")
            for daemon in fleet.daemons:
                daemon.stop()
            if fleet.control is not None:
                fleet.control.close()
            if fleet.base is not None:
                fleet.base.stop()
            failed = fleet.dashboard_devices != len(fleet.daemons)
            failed |= not fleet.pings or not all(outcome.ok for outcome in fleet.pings)
            failed |= ros_across_robots in steps and not (fleet.ros_messages and fleet.ros_peer_rows)
            keep_files = failed
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces, interfaces and processes removed", file=sys.stderr, flush=True)
        return 130
    except HusarnetError as exc:
        keep_files = True
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        if fleet:
            for daemon in fleet.daemons:
                print(f"{daemon.hostname}: log kept in {daemon.log_path}", file=sys.stderr)
        return 1
    finally:
        if fleet and not keep_files:
            for daemon in fleet.daemons:
                daemon.remove_files()
            if fleet.base is not None:
                fleet.base.remove_files()
    progress("done: namespaces, interfaces and processes removed")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m husarnet_ros.testing.demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--keep", action="store_true", help="leave the fleet running until Enter is pressed")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for peers (default 30)")
    parser.add_argument("--no-ros", action="store_true", help="only the overlay part, without ROS 2")
    args = parser.parse_args(argv)
    if not 1 <= args.timeout <= 600:
        parser.error("--timeout must be between 1 and 600 seconds")
    problem = prerequisites()
    if problem:
        print(f"husarnet_ros demo: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    signal.signal(signal.SIGHUP, _terminate_as_interrupt)
    steps = NETWORK_STEPS if args.no_ros else ALL_STEPS
    return run_demo(steps, keep=args.keep, peer_timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
