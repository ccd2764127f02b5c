"""ROS 2 (Fast DDS) and Cyclone DDS between two robots over the overlay, with only the generated files.

Two namespaces on one LAN, a real daemon in each, whitelisted to each other; multicast is dropped on the
underlay (nftables, only the daemon's beacons pass) and any DDS packet on the underlay is counted, so a
message that arrives proves discovery was unicast and went through hnet0.

The ROS 2 talker and listener run twice: with this venv's ROS 2 Kilted (Fast DDS 3.x) and with ROS 2 Jazzy
(Fast DDS 2.x) from the venv scripts/setup.sh builds at $HUSARNET_ROS_JAZZY_VENV (default .venv-jazzy).
The two read the profile from differently named variables; the daemons always run from this venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros import dds
from husarnet_ros.testing import chatter
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other
from husarnet_ros.testing.netlab import Host
from husarnet_ros.testing.ros_launch import private_domain_id

pytestmark = [pytest.mark.integration, pytest.mark.ros]

RUN_S = 60.0  # a talker/writer publishes at most this long
LISTEN_S = 45.0  # a listener/reader gives up after this long
DOMAIN_ID = private_domain_id(13)  # own domain per test process: parallel runs never see each other
UNDERLAY_TABLE = "dds_underlay"

# The same plain rclpy nodes a user would run (husarnet_ros/testing/chatter.py), bounded in time.
TALK = ["talk", "--seconds", str(RUN_S)]
LISTEN = ["listen", "--seconds", str(LISTEN_S), "--count", "5"]

REPO = Path(__file__).resolve().parents[2]
JAZZY_VENV_ENV = "HUSARNET_ROS_JAZZY_VENV"
STRICT = os.environ.get("HUSARNET_ROS_STRICT") == "1"
# What this (Kilted) venv's Python puts into the environment of its children; a Jazzy process that inherited
# it would load Kilted's libraries (LD_LIBRARY_PATH, and the marker that stops the Jazzy wheels from setting
# their own) and look for its middleware in Kilted's prefix.
KILTED_VENV_VARIABLES = (
    "LD_LIBRARY_PATH",
    "_ROS_WHEELS_BOOTSTRAP_COMPLETE",
    "AMENT_PREFIX_PATH",
    "PYTHONPATH",
)

CYCLONE_TYPE = textwrap.dedent(
    """
    from dataclasses import dataclass
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.idl import IdlStruct
    from cyclonedds.topic import Topic

    @dataclass
    class Chat(IdlStruct, typename="husarnet_test.Chat"):
        text: str
    """
)

CYCLONE_WRITER = CYCLONE_TYPE + textwrap.dedent(
    f"""
    import time
    from cyclonedds.pub import DataWriter
    participant = DomainParticipant({DOMAIN_ID})
    writer = DataWriter(participant, Topic(participant, "overlay_chat", Chat))
    deadline, count = time.monotonic() + {RUN_S}, 0
    while time.monotonic() < deadline:
        writer.write(Chat(text=f"hello {{count}}"))
        count += 1
        time.sleep(0.05)
    """
)

CYCLONE_READER = CYCLONE_TYPE + textwrap.dedent(
    f"""
    import json, time
    from cyclonedds.sub import DataReader
    participant = DomainParticipant({DOMAIN_ID})
    reader = DataReader(participant, Topic(participant, "overlay_chat", Chat))
    received = []
    deadline = time.monotonic() + {LISTEN_S}
    while time.monotonic() < deadline and len(received) < 5:
        received += [(time.time(), sample.text) for sample in reader.take(N=10)]
        time.sleep(0.02)
    first = received[0][0] if received else None
    summary = {{"first": first, "count": len(received), "data": [d for _, d in received]}}
    print(json.dumps(summary), flush=True)
    """
)


def _count_underlay_udp(host: Host) -> None:
    """Count UDP on the underlay that is not the daemon's (5581 beacons, 5582 tunnel): that would be DDS."""
    daemon_ports = "{ 5581, 5582 }"
    rules = "\n".join(
        f'    {match} "{host.ifname}" meta l4proto udp udp {direction} != {daemon_ports} counter name "leak"'
        for match, direction in (("iifname", "dport"), ("oifname", "dport"))
    )
    ruleset = (
        f"table inet {UNDERLAY_TABLE} {{\n  counter leak {{ }}\n"
        f"  chain watch_in {{\n    type filter hook input priority filter; policy accept;\n"
        f"{rules.splitlines()[0]}\n  }}\n"
        f"  chain watch_out {{\n    type filter hook output priority filter; policy accept;\n"
        f"{rules.splitlines()[1]}\n  }}\n}}\n"
    )
    host.run(["nft", "-f", "-"], input=ruleset)


def _check_counter_counts(sender: Host, receiver: Host) -> None:
    """One stray datagram on the underlay must show on the counters: they are not blind."""
    before = _underlay_udp_count(sender)
    probe = (
        "import socket; "
        f"socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'x', ('{receiver.ipv6}', 7399))"
    )
    sender.run([sys.executable, "-c", probe])
    assert _underlay_udp_count(sender) > before, "the underlay UDP counter did not count a probe datagram"


def _assert_unicast_over_the_overlay(name: str, a: Daemon, b: Daemon, first_s: float) -> None:
    """Neither robot tried multicast, no DDS packet went over the underlay (``first_s``: only reported)."""
    drops = {d.hostname: d.host.multicast_drop_count() for d in (a, b)}
    leaks = {d.hostname: _underlay_udp_count(d.host) for d in (a, b)}
    print(
        f"\n{name} over the overlay: first sample {first_s:.2f} s after the publisher started; "
        f"multicast dropped: {drops}; DDS packets on the underlay: {leaks}"
    )
    assert drops == {"robot-a": 0, "robot-b": 0}, f"{name} tried multicast: {drops}"
    assert leaks == {"robot-a": 0, "robot-b": 0}, f"{name} traffic bypassed the overlay: {leaks}"


def _underlay_udp_count(host: Host) -> int:
    out = host.run(["nft", "-j", "list", "counter", "inet", UNDERLAY_TABLE, "leak"]).stdout
    for item in json.loads(out).get("nftables", []):
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"no counter {UNDERLAY_TABLE}/leak in {host.netns}")


@dataclass(frozen=True)
class RosDistro:
    """Where the ROS 2 talker and listener come from: which Python, with which environment."""

    name: str
    python: str
    fastdds_distribution: str  # the pip distribution of Fast DDS in that venv (its version is checked)
    fastdds_major: str
    inherited: dict[str, str]  # the environment the DDS processes start from, before the DDS settings

    @property
    def chatter(self) -> list[str]:
        # By file, not as a module: the Jazzy venv has rclpy and std_msgs, not husarnet_ros.
        return [self.python, chatter.__file__]

    def fastdds_version(self) -> str:
        probe = f"import importlib.metadata as m; print(m.version({self.fastdds_distribution!r}))"
        result = subprocess.run(
            [self.python, "-c", probe], env=self.inherited, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"no {self.fastdds_distribution} in {self.name}: {result.stderr}"
        return result.stdout.strip()


def jazzy_venv() -> Path:
    return Path(os.environ.get(JAZZY_VENV_ENV) or REPO / ".venv-jazzy")


@pytest.fixture(params=["kilted", "jazzy"])
def ros_distro(request: pytest.FixtureRequest) -> RosDistro:
    """This venv's ROS 2 Kilted (Fast DDS 3.x), or the Jazzy venv's (Fast DDS 2.x); checked before the lab."""
    if request.param == "kilted":
        distro = RosDistro("ROS 2 Kilted", sys.executable, "ros-fastdds", "3", dict(os.environ))
    else:
        python = jazzy_venv() / "bin" / "python"
        if not python.exists():
            message = (
                f"no ROS 2 Jazzy venv at {jazzy_venv()} (${JAZZY_VENV_ENV}): scripts/setup.sh builds it; "
                "without it Fast DDS 2.x goes untested"
            )
            if STRICT:
                pytest.fail(f"{message} (HUSARNET_ROS_STRICT=1)", pytrace=False)
            pytest.skip(message)
        inherited = {k: v for k, v in os.environ.items() if k not in KILTED_VENV_VARIABLES}
        distro = RosDistro("ROS 2 Jazzy", str(python), "ros-fastrtps", "2", inherited)
    version = distro.fastdds_version()
    assert version.split(".")[0] == distro.fastdds_major, f"{distro.name} has Fast DDS {version}"
    return distro


@pytest.fixture
def robots(fleet: Any) -> tuple[Daemon, Daemon, dict[str, str]]:
    """Two whitelisted robots with a direct path; the lab removes namespaces, nftables and processes."""
    a, b = fleet(2)
    addresses = whitelist_each_other([a, b])
    a.wait_path(addresses["robot-b"], "direct", timeout=20)
    b.wait_path(addresses["robot-a"], "direct", timeout=20)
    for daemon in (a, b):
        daemon.host.drop_multicast(keep_discovery=True)
        _count_underlay_udp(daemon.host)
    return a, b, addresses


def _env(base: dict[str, str], log_dir: Path, inherited: dict[str, str] | None = None) -> dict[str, str]:
    """``inherited`` (default: this process's environment) without DDS settings, plus ``base``."""
    foreign = ("ROS_", "RMW_", "FASTDDS_", "FASTRTPS_", "CYCLONEDDS_")
    source = os.environ if inherited is None else inherited
    env = {k: v for k, v in source.items() if not k.startswith(foreign)}
    return env | base | {"ROS_LOG_DIR": str(log_dir), "ROS_DOMAIN_ID": str(DOMAIN_ID)}


def _listen(host: Host, program: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = host.run(program, env=env, check=False, timeout=LISTEN_S + 30)
    assert result.returncode == 0, f"listener in {host.label} failed: {result.stderr[-3000:]}"
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def _start(host: Host, program: list[str], env: dict[str, str]) -> subprocess.Popen[Any]:
    return host.popen(
        program, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_ros2_topic_crosses_the_overlay_with_multicast_dropped(
    ros_distro: RosDistro, robots: Any, tmp_path: Path
) -> None:
    a, b, addresses = robots
    # Exactly what `husarnet-ros dds env --rmw fastdds` and the launch export (both profile variable names).
    a_address, b_address = addresses["robot-a"], addresses["robot-b"]
    fastdds: dict[str, Any] = {"rmw": "fastdds", "set_rmw_implementation": True}
    env_a = dds.write_config(tmp_path / "a", a_address, [b_address], **fastdds)
    env_b = dds.write_config(tmp_path / "b", b_address, [a_address], **fastdds)
    env_a = _env(env_a, tmp_path / "log", ros_distro.inherited)
    env_b = _env(env_b, tmp_path / "log", ros_distro.inherited)
    talker, listener = [*ros_distro.chatter, *TALK], [*ros_distro.chatter, *LISTEN]

    started = time.time()
    talk = _start(a.host, talker, env_a)
    try:
        remote = _listen(b.host, listener, env_b)
        assert remote["count"] > 0, f"no message from robot-a reached robot-b ({ros_distro.name})"
        assert remote["data"][0].startswith("hello ")
        # Two nodes on the same robot find each other too (the own address is an initial peer).
        local = _listen(a.host, listener, env_a)
        assert local["count"] > 0, f"a listener on robot-a did not hear its talker ({ros_distro.name})"
    finally:
        a.host.lab.stop_process(talk)
    which = f"Fast DDS {ros_distro.fastdds_version()} ({ros_distro.name})"
    _assert_unicast_over_the_overlay(which, a, b, remote["first"] - started)
    _check_counter_counts(a.host, b.host)


def test_cyclone_dds_crosses_the_overlay_with_multicast_dropped(robots: Any, tmp_path: Path) -> None:
    # A dev dependency (setup.py): missing it is an installation error, not a reason to skip.
    import cyclonedds  # noqa: F401
    a, b, addresses = robots
    env_a = _env(
        dds.write_config(tmp_path / "a", addresses["robot-a"], [addresses["robot-b"]], rmw="cyclonedds"),
        tmp_path / "log",
    )
    env_b = _env(
        dds.write_config(tmp_path / "b", addresses["robot-b"], [addresses["robot-a"]], rmw="cyclonedds"),
        tmp_path / "log",
    )
    started = time.time()
    writer = _start(a.host, [sys.executable, "-c", CYCLONE_WRITER], env_a)
    try:
        remote = _listen(b.host, [sys.executable, "-c", CYCLONE_READER], env_b)
        assert remote["count"] > 0, "no Cyclone DDS sample from robot-a reached robot-b over the overlay"
        local = _listen(a.host, [sys.executable, "-c", CYCLONE_READER], env_a)
        assert local["count"] > 0, "a Cyclone DDS reader on robot-a did not hear the writer on robot-a"
    finally:
        a.host.lab.stop_process(writer)
    _assert_unicast_over_the_overlay("Cyclone DDS", a, b, remote["first"] - started)
