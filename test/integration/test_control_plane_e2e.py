"""The self-hosted control plane end to end, in namespaces: a server runs the Dashboard, Websetup (behind its
own daemon) and two base servers; three robots set the server up and join with join codes. The REST API
decides who is in which network, and the robots' whitelists and hosts follow within seconds, pushed by
Websetup."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from husarnet_ros.testing.control_lab import ControlStack, self_hosted_fleet
from husarnet_ros.testing.lab_daemon import Daemon
from husarnet_ros.testing.netlab import Host, Lab, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

ROBOTS = ("robot-1", "robot-2", "robot-3")
PUSH_S = 15.0  # "within a few seconds": bound for a change in the Dashboard to reach a robot


@pytest.fixture
def stack_and_robots(lab: Lab) -> Iterator[tuple[ControlStack, list[Daemon]]]:
    with self_hosted_fleet(lab, ROBOTS) as fleet:
        yield fleet


def whitelist(robot: Daemon) -> set[str]:
    return set(robot.json("whitelist", "ls")["addresses"])


def ping_by_name(host: Host, name: str) -> bool:
    """``ping -6 NAME`` inside the robot's namespace, resolved through its /etc/hosts."""
    result = host.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", name], check=False)
    return result.returncode == 0


def test_robots_join_and_follow_the_dashboard(stack_and_robots: tuple[ControlStack, list[Daemon]]) -> None:
    stack, robots = stack_and_robots
    one, two, three = robots
    fingerprint = json.loads(stack.run_dashboard_cli("fingerprint", "--json").stdout)["fingerprint"]

    # setup-server: the license is fetched, checked against the fingerprint, pinned and applied at once.
    for robot in robots:
        answer = robot.json("setup-server", stack.server_address, "--fingerprint", fingerprint)
        assert answer["fingerprint"] == fingerprint
        assert sorted(answer["base_servers"]) == sorted(base.address for base in stack.bases)

    fleet_a, code_a = stack.create_network("fleet-a")
    fleet_b, code_b = stack.create_network("fleet-b")
    one.cli("join", code_a, "robot-1", timeout=60)
    two.cli("join", code_a, "robot-2", timeout=60)
    three.cli("join", code_b, "robot-3", timeout=60)
    for robot in robots:
        robot.cli("wait", "joined", "--timeout", "30", timeout=40)

    # 1 and 2 share a network: each has the other on its whitelist and in its hosts, and reaches it by name.
    wait_until(
        lambda: two.address in whitelist(one) and one.address in whitelist(two), PUSH_S, what="1 and 2 in"
    )
    assert three.address not in whitelist(one) | whitelist(two)
    wait_until(lambda: ping_by_name(one.host, "robot-2"), 30.0, interval=0.5, what="robot-1 pings robot-2")
    assert ping_by_name(two.host, "robot-1")
    # 3 is in another network: it cannot reach them, by address or name.
    assert not three.host.ping6(one.address, 2).ok
    assert not ping_by_name(three.host, "robot-1")

    # Moving 3 into fleet-a lets it in within seconds.
    three_id = stack.device_id(three.address)
    stack.api("PUT", f"/networks/{fleet_a}/devices/{three_id}", expect=204)
    wait_until(lambda: three.address in whitelist(one), PUSH_S, interval=0.2, what="robot-3 allowed by 1")
    wait_until(lambda: ping_by_name(three.host, "robot-1"), 30.0, interval=0.5, what="robot-3 pings robot-1")

    # Taking it out cuts it off again (it stays in fleet-b, alone).
    stack.api("DELETE", f"/networks/{fleet_a}/devices/{three_id}", expect=204)
    wait_until(
        lambda: three.address not in whitelist(one) and three.address not in whitelist(two),
        PUSH_S,
        interval=0.2,
        what="robot-3 removed from 1 and 2",
    )
    wait_until(lambda: not three.host.ping6(one.address, 1).ok, 15.0, interval=0.5, what="robot-3 cut off")

    # A new hostname in the Dashboard reaches the other robots' hosts within seconds; the old name goes.
    two_id = stack.device_id(two.address)
    stack.api("PATCH", f"/devices/{two_id}", {"hostname": "arm-2"})
    wait_until(lambda: ping_by_name(one.host, "arm-2"), PUSH_S, interval=0.5, what="robot-1 pings arm-2")
    assert not ping_by_name(one.host, "robot-2")

    # Restarting the Dashboard loses nothing: networks, devices, memberships, and the robots keep working.
    before = {
        "networks": sorted(n["name"] for n in stack.api("GET", "/networks")),
        "devices": sorted((d["hostname"], d["address"]) for d in stack.api("GET", "/devices")),
        "fleet-a": sorted(d["hostname"] for d in stack.api("GET", f"/networks/{fleet_a}/devices")),
    }
    stack.stop_dashboard()
    stack.start_dashboard()
    after = {
        "networks": sorted(n["name"] for n in stack.api("GET", "/networks")),
        "devices": sorted((d["hostname"], d["address"]) for d in stack.api("GET", "/devices")),
        "fleet-a": sorted(d["hostname"] for d in stack.api("GET", f"/networks/{fleet_a}/devices")),
    }
    assert after == before
    assert before["fleet-a"] == ["arm-2", "robot-1"]
    assert fleet_b in {n["id"] for n in stack.api("GET", "/networks")}
    assert ping_by_name(one.host, "arm-2")
    # ... and a change after the restart is pushed again.
    stack.api("PUT", f"/networks/{fleet_a}/devices/{three_id}", expect=204)
    wait_until(lambda: three.address in whitelist(two), PUSH_S, interval=0.2, what="push after restart")
