"""The overlay interface as the daemon configures it (daemon/tun.py over daemon/rtnetlink.py), in a lab
namespace: MTU, queue length, the fc94 address as a /16, up; with offloads the device hands over TCP
packets of up to 64 KB with a virtio header, without them one plain packet per read."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from husarnet_ros.testing.lab_daemon import husarnet_ros_env
from husarnet_ros.testing.netlab import Host, Lab

pytestmark = pytest.mark.integration

ADDRESS = "fc94:1::abcd"
# Opens the device like the daemon, prints what it negotiated, then reads one packet that a ping makes.
PROGRAM = textwrap.dedent(
    """
    import ipaddress, json, os, subprocess, sys
    from husarnet_ros.daemon.tun import Tun
    address = ipaddress.IPv6Address(sys.argv[1]).packed
    tun = Tun("hnet0", address, int(sys.argv[2]), offload=sys.argv[3] == "1")
    shown = subprocess.run(["ip", "-j", "-d", "addr", "show", "dev", "hnet0"], capture_output=True, text=True)
    link = json.loads(shown.stdout)[0]
    ping = ["ping", "-6", "-c", "1", "-W", "1", "-s", "100", "fc94:1::1"]
    subprocess.Popen(ping, stdout=subprocess.DEVNULL)
    packet = os.read(tun.fd, 65536 + 256)
    print(json.dumps({"offload": tun.offload, "link": link, "read": packet.hex()}))
    """
)


def configure(host: Host, mtu: int, offload: bool) -> dict[str, object]:
    result = host.run(
        [sys.executable, "-c", PROGRAM, ADDRESS, str(mtu), "1" if offload else "0"],
        timeout=30,
        check=False,
        env=husarnet_ros_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


@pytest.fixture
def host(lab: Lab) -> Host:
    (only,) = lab.lan(1, labels=["robot"])
    return only


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
def test_interface_configured_and_packets_framed(host: Host, offload: bool) -> None:
    answer = configure(host, 1400, offload)
    link = answer["link"]
    assert isinstance(link, dict)
    assert link["mtu"] == 1400
    assert link["txqlen"] == 8192
    assert "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["scope"] == "global"] == [
        (ADDRESS, 16)
    ]
    assert answer["offload"] is offload  # this kernel has TUNSETOFFLOAD (Linux >= 2.6.27)
    packet = bytes.fromhex(str(answer["read"]))
    if offload:
        packet = packet[10:]  # the virtio header: this packet is small, so no segmentation
    assert packet[0] >> 4 == 6
    assert packet[6] == 58  # ICMPv6: the echo request to fc94:1::1, routed into hnet0 by the /16


def test_a_refused_request_is_one_clear_error(host: Host) -> None:
    """An MTU the kernel refuses (above a TUN device's 65535): the kernel's reason, device and address."""
    result = host.run(
        [sys.executable, "-c", PROGRAM, ADDRESS, "70000", "1"],
        timeout=30,
        check=False,
        env=husarnet_ros_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "cannot configure hnet0 with fc94:1::abcd/16: Invalid argument" in result.stderr
    assert "Traceback" in result.stderr  # from the test program itself, which does not catch TunError
    gone = subprocess.run(
        ["ip", "netns", "exec", host.netns, "ip", "link", "show", "hnet0"], capture_output=True
    )
    assert gone.returncode != 0  # the device closed with the process: nothing left behind
