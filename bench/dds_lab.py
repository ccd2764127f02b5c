"""The two robots of bench/dds.py and one publisher/subscriber run between them.

Robot-a publishes, robot-b subscribes; each is a lab namespace with its own husarnet-ros daemon. A run of
bench/dds_endpoints.py goes over one path (:data:`PATHS`) with the DDS environment that path needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from husarnet_ros import dds
from husarnet_ros.api import normalize_overlay
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other
from husarnet_ros.testing.netlab import Host, Lab, LabError

ENDPOINTS = Path(__file__).resolve().parent / "dds_endpoints.py"
PATHS = ("raw", "overlay", "overlay-untuned", "raw-default")
# What this change added to the rendered files; ``overlay-untuned`` removes it again (issue 10's profile).
TUNING_ELEMENTS = re.compile(
    r"^\s*<(maxMessageSize|sendBufferSize|receiveBufferSize|MaxMessageSize|MaxRexmitMessageSize|FragmentSize"
    r"|SocketReceiveBufferSize|SocketSendBufferSize|/?Internal)\b.*\n",
    re.MULTILINE,
)
SUBSCRIBER_READY_S = 30.0
PROCESS_SLACK_S = 40.0  # start-up, discovery (at most the endpoints' match timeout) and shutdown
DRAIN_S = 2.0
PATH_UP_S = 20.0
# What this (Kilted) venv's Python puts into its children's environment, which a Python from another venv
# (--ros-python, e.g. .venv-jazzy) must not inherit.
VENV_VARIABLES = ("LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE", "AMENT_PREFIX_PATH", "PYTHONPATH")
DDS_PREFIXES = ("ROS_", "RMW_", "FASTDDS_", "FASTRTPS_", "CYCLONEDDS_")


@dataclass(frozen=True)
class Endpoints:
    """How the publisher and subscriber run: which Python for Fast DDS, which domain, how long per rate."""

    domain: int
    phase_seconds: float
    ros_python: Path | None = None

    def python(self, middleware: str) -> str:
        if middleware == "fastdds" and self.ros_python is not None:
            return str(self.ros_python)
        return sys.executable

    def base_env(self, log_dir: Path) -> dict[str, str]:
        """This process's environment without DDS settings (and without this venv's, for another Python)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(DDS_PREFIXES)}
        if self.ros_python is not None:
            env = {k: v for k, v in env.items() if k not in VENV_VARIABLES}
        return env | {"ROS_LOG_DIR": str(log_dir), "ROS_DOMAIN_ID": str(self.domain)}


@dataclass
class Robots:
    """The two namespaces with their daemons, and where the DDS files go."""

    a: Daemon
    b: Daemon
    overlay: dict[str, str]  # hostname -> fc94 address
    workdir: Path

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a.host, self.b.host

    def overlay_mtu(self) -> int:
        """What the DDS files assume: the daemon's status, else hnet0 as the kernel has it."""
        reported = (self.a.status().get("dataplane") or {}).get("mtu") or 0
        return dds.overlay_mtu(None, int(reported) or interface_mtu(self.a.host, self.a.interface))


def interface_mtu(host: Host, ifname: str) -> int:
    return int(json.loads(host.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0]["mtu"])


def start_robots(lab: Lab, workdir: Path) -> Robots:
    """Two namespaces on a veth pair, a daemon in each, whitelisted to each other with a direct path."""
    hosts = lab.pair(labels=["robot-a", "robot-b"])
    a, b = (Daemon.create(host, name) for host, name in zip(hosts, ("robot-a", "robot-b"), strict=True))
    try:
        for daemon in (a, b):
            daemon.start(wait_ready=False)
        for daemon in (a, b):
            daemon.wait_ready()
        overlay = whitelist_each_other([a, b])
        a.wait_path(overlay["robot-b"], "direct", timeout=PATH_UP_S)
        b.wait_path(overlay["robot-a"], "direct", timeout=PATH_UP_S)
    except Exception:
        for daemon in (a, b):
            print(f"--- log of {daemon.hostname}:\n{daemon.log_tail(40)}", file=sys.stderr)
        raise
    return Robots(a, b, overlay, workdir)


def stop_robots(robots: Robots) -> None:
    for daemon in (robots.a, robots.b):
        daemon.stop()
        daemon.remove_files()


def path_environments(robots: Robots, path: str, middleware: str, mtu: int) -> tuple[dict[str, str], ...]:
    """The DDS environment of the publisher (robot-a) and of the subscriber (robot-b) on ``path``."""
    if path not in PATHS:
        raise LabError(f"unknown path {path!r}")
    if path == "raw-default":
        if middleware == "fastdds":
            # The default UDPv4 transport only: shared memory would carry the data between the namespaces.
            env = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
            return env, dict(env)
        return {}, {}
    envs = []
    for own, peer in (("robot-a", "robot-b"), ("robot-b", "robot-a")):
        directory = robots.workdir / path / middleware / own
        dds.write_files(directory, path_files(robots, path, middleware, mtu, own, peer))
        envs.append(dds.environment(directory, middleware, set_rmw_implementation=middleware == "fastdds"))
    return tuple(envs)


def path_files(robots: Robots, path: str, middleware: str, mtu: int, own: str, peer: str) -> dict[str, str]:
    """The files husarnet_ros.dds renders for robot ``own`` talking to ``peer``, as ``path`` uses them."""
    if path == "overlay":
        return dds.render_files(robots.overlay[own], [robots.overlay[peer]], middleware, mtu=mtu)
    if path == "overlay-untuned":
        files = dds.render_files(robots.overlay[own], [robots.overlay[peer]], middleware, mtu=mtu)
        return {name: TUNING_ELEMENTS.sub("", content) for name, content in files.items()}
    # raw: the very same files, with each robot's underlay address where its fc94 address was.
    underlay = {robots.a.hostname: robots.a.host.ipv6, robots.b.hostname: robots.b.host.ipv6}
    files = dds.render_files(
        robots.overlay[own], [robots.overlay[peer]], middleware, interface=robots.a.host.ifname, mtu=mtu
    )
    for name, content in files.items():
        for host in (own, peer):
            content = content.replace(normalize_overlay(robots.overlay[host]), underlay[host])
        files[name] = content
    return files


def sent_packets(host: Host, ifname: str) -> int:
    """Packets this namespace sent on ``ifname`` so far (hnet0 for the overlay, the veth for the raw paths):
    shows which path the DDS traffic took, and how many packets it cost (retransmissions included)."""
    return int(host.run(["cat", f"/sys/class/net/{ifname}/statistics/tx_packets"]).stdout)


def receive_buffer_errors(host: Host) -> dict[str, int]:
    """UDP datagrams this namespace dropped so far because a socket's receive buffer was full: over IPv6
    (the DDS sockets, on either path) and over IPv4 (the daemon's underlay socket, on the overlay path)."""
    errors = {"udp6": 0, "udp4": 0}
    for line in host.run(["cat", "/proc/net/snmp6"]).stdout.splitlines():
        name, _, value = line.partition(" ")
        if name == "Udp6RcvbufErrors":
            errors["udp6"] = int(value.strip())
    lines = [line.split() for line in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header[0] == "Udp:":
            errors["udp4"] = int(dict(zip(header, values, strict=True)).get("RcvbufErrors", 0))
    return errors


def ip_fragments(host: Host) -> int:
    """IP fragments this namespace created so far (IPv6 and IPv4): DDS datagrams too big for a link."""
    created = 0
    for line in host.run(["cat", "/proc/net/snmp6"]).stdout.splitlines():
        name, _, value = line.partition(" ")
        if name == "Ip6FragCreates":
            created += int(value.strip())
    header, values = (line.split() for line in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()[:2])
    created += int(dict(zip(header, values, strict=True)).get("FragCreates", 0))
    return created


@dataclass(frozen=True)
class Group:
    """One publisher/subscriber pair: all rates of one size, over one path."""

    middleware: str
    reliability: str
    size: int
    path: str
    rates: tuple[float, ...]

    @property
    def tag(self) -> str:
        return f"{self.middleware}-{self.reliability}-{self.size}-{self.path}"

    def busy_seconds(self, phase_seconds: float) -> float:
        return len(self.rates) * (phase_seconds + DRAIN_S)


def run_group(robots: Robots, endpoints: Endpoints, group: Group, mtu: int) -> dict[str, Any]:
    """Run ``group``: the publisher's report, the subscriber's arrivals, the IP fragments the publisher's
    namespace created, the packets it sent into hnet0 and the receive buffer drops in the subscriber's."""
    pub_env, sub_env = path_environments(robots, group.path, group.middleware, mtu)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{group.tag}-", dir=robots.workdir))
    base = endpoints.base_env(run_dir / "ros-log")
    python = endpoints.python(group.middleware)
    common = [str(ENDPOINTS), "--middleware", group.middleware, "--reliability", group.reliability]
    common += ["--domain", str(endpoints.domain), "--size", str(group.size)]
    busy = group.busy_seconds(endpoints.phase_seconds)
    phases = ",".join(f"{rate:g}:{endpoints.phase_seconds:g}" for rate in group.rates)
    sub_argv = [
        python,
        *common,
        "--seconds",
        f"{busy + PROCESS_SLACK_S:.0f}",
        "--out",
        str(run_dir / "sub.json"),
    ]
    pub_argv = [
        python,
        *common,
        "--phases",
        phases,
        "--drain",
        str(DRAIN_S),
        "--out",
        str(run_dir / "pub.json"),
    ]
    sub_argv.insert(2, "sub")
    pub_argv.insert(2, "pub")
    publisher_host, subscriber_host = robots.hosts
    fragments_before = ip_fragments(publisher_host)
    interface = robots.a.interface if group.path.startswith("overlay") else publisher_host.ifname
    packets_before = sent_packets(publisher_host, interface)
    overlay_before = sent_packets(publisher_host, robots.a.interface)
    drops_before = receive_buffer_errors(subscriber_host)
    with (run_dir / "sub.log").open("wb") as sub_log, (run_dir / "pub.log").open("wb") as pub_log:
        subscriber = subscriber_host.popen(
            sub_argv, env=base | sub_env, stdout=subprocess.PIPE, stderr=sub_log
        )
        try:
            _wait_ready(subscriber)
            publisher = publisher_host.popen(
                pub_argv, env=base | pub_env, stdout=pub_log, stderr=subprocess.STDOUT
            )
            try:
                publisher.wait(timeout=busy + PROCESS_SLACK_S)
            except subprocess.TimeoutExpired:
                raise LabError(f"the publisher of {group.tag} did not finish\n{_logs(run_dir)}") from None
            finally:
                Lab.stop_process(publisher)
            Lab.stop_process(subscriber, timeout=20)  # SIGTERM: it writes what it received, then exits
        finally:
            Lab.stop_process(subscriber)
    try:
        result = {
            "published": json.loads((run_dir / "pub.json").read_text()),
            "arrivals": json.loads((run_dir / "sub.json").read_text()),
            "ip_fragments": ip_fragments(publisher_host) - fragments_before,
            "overlay_packets": sent_packets(publisher_host, robots.a.interface) - overlay_before,
            "path_packets": sent_packets(publisher_host, interface) - packets_before,
            "subscriber_side_drops": {
                name: count - drops_before[name]
                for name, count in receive_buffer_errors(subscriber_host).items()
            },
        }
    except (OSError, ValueError) as exc:
        raise LabError(f"{group.tag}: no result from the endpoints ({exc})\n{_logs(run_dir)}") from None
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _logs(run_dir: Path) -> str:
    tails = []
    for name in ("pub.log", "sub.log"):
        try:
            text = (run_dir / name).read_text(errors="replace")
        except OSError:
            text = "(none)"
        tails.append(f"--- {name}:\n{text[-3000:]}")
    return "\n".join(tails)


def _wait_ready(process: subprocess.Popen[bytes]) -> None:
    """The subscriber prints "ready" once its reader exists; bounded."""
    assert process.stdout is not None
    deadline = time.monotonic() + SUBSCRIBER_READY_S
    os.set_blocking(process.stdout.fileno(), False)
    seen = b""
    while b"ready" not in seen:
        if process.poll() is not None:
            raise LabError(f"the subscriber exited early with {process.returncode}")
        if time.monotonic() > deadline:
            raise LabError("the subscriber did not get ready in time")
        seen += process.stdout.read() or b""
        time.sleep(0.05)
