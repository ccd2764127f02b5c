"""The transport settings of the DDS files (husarnet_ros.dds): no datagram IP-fragmented on hnet0, big socket
buffers, sizes that follow the daemon's MTU, and files that Fast DDS 2.x and 3.x and Cyclone DDS accept."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sample_status import make_status

from husarnet_ros import dds
from husarnet_ros.api import DataPlaneStatus
from husarnet_ros.core.constants import DEFAULT_MTU
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.testing.ros_launch import private_domain_id

OWN = "fc94::a"
PEERS = ["fc94::b"]
FASTDDS_NS = "{http://www.eprosima.com}"
CYCLONE_NS = "{https://cdds.io/config}"
IPV6_AND_UDP_HEADERS = 48
MTUS = [1280, DEFAULT_MTU, 1420, 9000, 65000]
REPO = Path(__file__).resolve().parents[2]
STRICT = os.environ.get("HUSARNET_ROS_STRICT") == "1"


def _bytes(text: str | None) -> int:
    """Cyclone sizes carry their unit ("1250B"); Fast DDS sizes are plain numbers."""
    assert text is not None
    return int(text.removesuffix("B"))


def _fastdds_transport(xml: str) -> ET.Element:
    transport = ET.fromstring(xml).find(f".//{FASTDDS_NS}transport_descriptor")
    assert transport is not None
    return transport


@pytest.mark.parametrize("mtu", MTUS)
def test_fastdds_datagrams_fit_one_overlay_packet(mtu: int) -> None:
    transport = _fastdds_transport(dds.render_fastdds_xml(OWN, PEERS, mtu=mtu))
    largest = _bytes(transport.findtext(f"{FASTDDS_NS}maxMessageSize"))
    assert largest <= mtu - IPV6_AND_UDP_HEADERS
    assert largest >= mtu - IPV6_AND_UDP_HEADERS - 100  # not needlessly small: each datagram costs a packet


def test_fastdds_asks_for_big_socket_buffers() -> None:
    transport = _fastdds_transport(dds.render_fastdds_xml(OWN, PEERS))
    largest = _bytes(transport.findtext(f"{FASTDDS_NS}maxMessageSize"))
    for name in ("sendBufferSize", "receiveBufferSize"):
        size = _bytes(transport.findtext(f"{FASTDDS_NS}{name}"))
        # The system default (208 KiB) holds ~90 datagrams: a 1 MB sample is ~840.
        assert size >= 4 * 2**20
        assert size >= largest  # Fast DDS refuses a transport whose buffers cannot hold one datagram


@pytest.mark.parametrize("mtu", MTUS)
def test_cyclone_messages_and_retransmits_fit_one_overlay_packet(mtu: int) -> None:
    general = ET.fromstring(dds.render_cyclonedds_xml(OWN, PEERS, mtu=mtu)).find(
        f"{CYCLONE_NS}Domain/{CYCLONE_NS}General"
    )
    assert general is not None
    largest = _bytes(general.findtext(f"{CYCLONE_NS}MaxMessageSize"))
    assert largest <= mtu - IPV6_AND_UDP_HEADERS
    assert _bytes(general.findtext(f"{CYCLONE_NS}MaxRexmitMessageSize")) <= largest
    fragment = _bytes(general.findtext(f"{CYCLONE_NS}FragmentSize"))
    # One fragment plus the RTPS header and the submessages around it (~90 B) fits one message; and the
    # DDSI minimum fragment size (1025 B), below which other implementations may refuse fragments, holds.
    assert 1025 <= fragment <= largest - 90


def test_cyclone_asks_for_big_socket_buffers_without_requiring_them() -> None:
    internal = ET.fromstring(dds.render_cyclonedds_xml(OWN, PEERS)).find(
        f"{CYCLONE_NS}Domain/{CYCLONE_NS}Internal"
    )
    assert internal is not None
    for name in ("SocketReceiveBufferSize", "SocketSendBufferSize"):
        element = internal.find(f"{CYCLONE_NS}{name}")
        assert element is not None
        assert _bytes(element.get("max")) >= 4 * 2**20
        # A minimum would make participant creation fail where net.core.rmem_max is lower.
        assert element.get("min") == "default"


def test_mtu_below_the_ipv6_minimum_is_refused() -> None:
    with pytest.raises(ConfigError, match="1279"):
        dds.render_fastdds_xml(OWN, PEERS, mtu=1279)
    with pytest.raises(ConfigError, match="1279"):
        dds.render_cyclonedds_xml(OWN, PEERS, mtu=1279)


def test_overlay_mtu_is_the_setting_else_the_daemons_else_the_default() -> None:
    assert dds.overlay_mtu(None) == DEFAULT_MTU
    assert dds.overlay_mtu(make_status(address=OWN)) == DEFAULT_MTU  # a daemon that does not report it: 0
    status = make_status(address=OWN, dataplane=DataPlaneStatus(mtu=1420))
    assert dds.overlay_mtu(status) == 1420
    assert dds.overlay_mtu(status, 9000) == 9000
    assert dds.overlay_mtu(None, 1300) == 1300


def test_written_files_follow_the_mtu(tmp_path: Path) -> None:
    dds.write_config(tmp_path, OWN, PEERS, mtu=9000)
    fast = _fastdds_transport((tmp_path / "fastdds.xml").read_text())
    assert _bytes(fast.findtext(f"{FASTDDS_NS}maxMessageSize")) == dds.max_datagram(9000)
    assert f"<MaxMessageSize>{dds.max_datagram(9000)}B<" in (tmp_path / "cyclonedds.xml").read_text()
    assert dds.max_datagram(9000) > dds.max_datagram(DEFAULT_MTU)


# --- the middlewares accept the files --------------------------------------------------------------------

# A ROS 2 node with a publisher: creating it makes Fast DDS parse the profile (participant and writer).
FASTDDS_NODE = """
import rclpy
from std_msgs.msg import UInt8MultiArray
rclpy.init()
node = rclpy.create_node("husarnet_profile_check")
publisher = node.create_publisher(UInt8MultiArray, "husarnet_profile_check", 10)
publisher.publish(UInt8MultiArray(data=b"x" * 5000))
node.destroy_node()
rclpy.shutdown()
"""
# What the Kilted venv's Python puts into its children's environment, which the Jazzy venv's must not inherit.
KILTED_VENV_VARIABLES = (
    "LD_LIBRARY_PATH",
    "_ROS_WHEELS_BOOTSTRAP_COMPLETE",
    "AMENT_PREFIX_PATH",
    "PYTHONPATH",
)


def _jazzy_python() -> Path:
    return Path(os.environ.get("HUSARNET_ROS_JAZZY_VENV") or REPO / ".venv-jazzy") / "bin" / "python"


def _fastdds_python(distro: str) -> tuple[str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "RMW_", "FASTDDS_", "FASTRTPS_"))}
    if distro == "kilted":
        pytest.importorskip("rclpy", reason="rclpy (ROS 2 Kilted) is not installed")
        return sys.executable, env
    python = _jazzy_python()
    if not python.exists():
        message = f"no ROS 2 Jazzy venv at {python.parent.parent}: scripts/setup.sh builds it"
        if STRICT:
            pytest.fail(f"{message} (HUSARNET_ROS_STRICT=1)", pytrace=False)
        pytest.skip(message)
    return str(python), {k: v for k, v in env.items() if k not in KILTED_VENV_VARIABLES}


def _fastdds_run(distro: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    python, base = _fastdds_python(distro)
    env = base | env | {"ROS_DOMAIN_ID": str(private_domain_id(83)), "ROS_LOG_DIR": str(tmp_path / "log")}
    return subprocess.run(
        [python, "-c", FASTDDS_NODE], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.ros
@pytest.mark.parametrize("distro", ["kilted", "jazzy"])
def test_fastdds_2_and_3_accept_the_profile(distro: str, tmp_path: Path) -> None:
    # No own address: the participant then listens on any address, which works outside the overlay too.
    env = dds.write_config(tmp_path / "ok", None, PEERS, rmw="fastdds", set_rmw_implementation=True)
    accepted = _fastdds_run(distro, env, tmp_path)
    output = accepted.stdout + accepted.stderr  # Fast DDS 2.x logs to stdout, 3.x to stderr
    assert accepted.returncode == 0, output[-3000:]
    assert "Error" not in output, output[-3000:]
    # The check can fail: Fast DDS reports an element it does not know (and then ignores the whole file).
    broken = tmp_path / "broken" / "fastdds.xml"
    broken.parent.mkdir()
    text = (tmp_path / "ok" / "fastdds.xml").read_text()
    broken.write_text(
        text.replace("<maxMessageSize>", "<maxMessageSizeTypo>1</maxMessageSizeTypo><maxMessageSize>")
    )
    env = env | {name: str(broken) for name in dds.FASTDDS_PROFILES_ENVS}
    refused = _fastdds_run(distro, env, tmp_path)
    assert "XMLPARSER" in refused.stdout + refused.stderr, (refused.stdout + refused.stderr)[-3000:]
