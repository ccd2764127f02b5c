"""The daemon's controller (whitelist, hosts, status, ping, waits) on the in-memory network: the real
``NodeController`` and ``Node``, real state directories, no TUN device."""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path

import pytest
from fixed_identities import fixed_identity

from husarnet_ros.client import ControlClient
from husarnet_ros.core.address import format_address
from husarnet_ros.daemon import state as state_module
from husarnet_ros.daemon.controller import Conflict, InvalidRequest, NotFound, StorageError
from husarnet_ros.daemon.node_controller import NodeController
from husarnet_ros.testing.memnet_daemon import MemNetFleet, serve


def pair(fleet: MemNetFleet) -> tuple[NodeController, NodeController]:
    a = fleet.add("robot-a", fixed_identity("node a"))
    b = fleet.add("robot-b", fixed_identity("node b"))
    return a, b


def address(controller: NodeController) -> str:
    return format_address(controller.identity.address)


def both_direct(fleet: MemNetFleet) -> bool:
    return fleet.path("robot-a", "robot-b") == fleet.path("robot-b", "robot-a") == "direct"


def test_whitelisted_peers_become_direct_and_status_says_how(fleet: MemNetFleet) -> None:
    a, b = pair(fleet)
    assert fleet.path("robot-a", "robot-b") is None  # heard (beacons), but not allowed: not even listed
    fleet.connect("robot-a", "robot-b")
    entry = next(p for p in a.status().peers if p.address == address(b))
    assert entry.hostname == "robot-b"  # from its signed beacon
    assert entry.endpoint == "198.18.0.11:5582"
    assert entry.whitelisted
    assert entry.state == "established"


def test_whitelist_changes_are_persisted_and_applied(fleet: MemNetFleet) -> None:
    a, b = pair(fleet)
    fleet.connect("robot-a", "robot-b")
    saved = json.loads((fleet.member("robot-a").state_dir / "whitelist.json").read_text())
    assert saved["addresses"] == [address(b)]
    a.whitelist_remove(address(b))
    # Forgotten at once, not at the next timer.
    assert a._on_node(lambda: a.node.peer(b.identity.address)) is None
    assert json.loads((fleet.member("robot-a").state_dir / "whitelist.json").read_text())["addresses"] == []
    with pytest.raises(NotFound):
        a.whitelist_remove(address(b))
    with pytest.raises(InvalidRequest, match="own address"):
        a.whitelist_add(address(a))


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EROFS])
def test_a_whitelist_change_that_cannot_be_saved_changes_nothing(
    fleet: MemNetFleet, monkeypatch: pytest.MonkeyPatch, failure: int
) -> None:
    a, b = pair(fleet)
    state_file = fleet.member("robot-a").state_dir / "whitelist.json"
    before = state_file.read_text()

    def full_disk(path: Path, text: str, mode: int) -> None:
        raise OSError(
            failure, "test: " + ("No space left on device" if failure == errno.ENOSPC else "Read-only")
        )

    monkeypatch.setattr(state_module, "atomic_write_text", full_disk)
    with pytest.raises(StorageError, match=r"whitelist\.json") as caught:
        a.whitelist_add(address(b))
    assert "nothing was changed" in str(caught.value)
    assert a.whitelist().addresses == []
    assert not a.acl.allows(b.identity.address)
    with pytest.raises(StorageError):
        a.whitelist_set_enabled(False)
    assert a.whitelist().enabled
    assert state_file.read_text() == before
    monkeypatch.undo()
    a.whitelist_add(address(b))  # once the disk has room again, it works
    assert a.whitelist().addresses == [address(b)]


def test_a_hosts_change_that_cannot_reach_the_hosts_file_is_rolled_back(fleet: MemNetFleet) -> None:
    a, _ = pair(fleet)
    member = fleet.member("robot-a")
    a.hosts_add("robot-b", "fc94::b")
    record = (member.state_dir / "hosts.json").read_text()
    member.hosts_file.fail = True
    with pytest.raises(Conflict, match="nothing was changed"):
        a.hosts_add("robot-c", "fc94::c")
    assert [e.hostname for e in a.hosts()] == ["robot-b"]
    assert (member.state_dir / "hosts.json").read_text() == record
    assert [e.hostname for e in member.hosts_file.entries] == ["robot-b"]


def test_ping_measures_and_leaves_no_waiter_behind(fleet: MemNetFleet) -> None:
    a, b = pair(fleet)
    fleet.connect("robot-a", "robot-b")
    result = asyncio.run(a.ping(address(b), 3, 0.05, 1.0))
    assert result.received == 3
    assert result.path == "direct"
    assert all(r.rtt_ms is not None and r.rtt_ms >= 0 for r in result.replies)
    assert a.pending_pings == 0
    fleet.set_online("robot-b", False)
    result = asyncio.run(a.ping(address(b), 2, 0.05, 0.3))
    assert result.received == 0
    assert a.pending_pings == 0  # the probes that timed out are forgotten


def test_wait_peer_and_the_path_going_away(fleet: MemNetFleet) -> None:
    a, b = pair(fleet)
    a.whitelist_add(address(b))
    b.whitelist_add(address(a))
    assert asyncio.run(a.wait_peer(address(b), 10.0))
    fleet.set_online("robot-b", False)
    # Without traffic, the next latency probe finds the path dead (about 5 s + 1 s).
    assert fleet.wait(lambda: fleet.path("robot-a", "robot-b") == "none", timeout_s=10)
    entry = next(p for p in a.status().peers if p.address == address(b))
    assert entry.state == "no path (probing)"
    assert entry.endpoint is None
    fleet.set_online("robot-b", True)
    assert fleet.wait(lambda: fleet.path("robot-a", "robot-b") == "direct", timeout_s=5)


def test_served_by_the_real_control_server(fleet: MemNetFleet) -> None:
    a, b = pair(fleet)
    with serve(a) as socket_path, ControlClient(socket_path) as client:
        client.whitelist_add(address(b))
        b.whitelist_add(address(a))
        assert fleet.wait(lambda: fleet.path("robot-a", "robot-b") == "direct")
        status = client.status()
        assert status.address == address(a)
        assert [p.path for p in status.peers] == ["direct"]
        assert client.ping(address(b), count=2, interval_s=0.05).received == 2


def test_a_robot_rebooting_with_its_clock_set_back_is_accepted_at_once(fleet: MemNetFleet) -> None:
    """No real-time clock, no NTP yet: after a reboot the wall clock is a day behind and the robot has a new
    address. Peers accept only inits and beacons newer than the last they saw; the timestamp floor kept in
    the state directory (clock.json) is what makes them newer anyway."""
    a, _ = pair(fleet)
    fleet.connect("robot-a", "robot-b")
    day = 86_400.0
    fleet.restart("robot-b", clock_set_back_s=day, endpoint=("198.18.0.50", 5582))
    assert fleet.wait(lambda: both_direct(fleet))
    assert a.status().counters.get("drop_stale_init", 0) == 0
    assert a.status().counters.get("drop_stale_beacon", 0) == 0
    # Without the floor (the file lost), the same reboot is refused: what the floor is for.
    (fleet.member("robot-b").state_dir / "clock.json").unlink()
    fleet.restart("robot-b", clock_set_back_s=2 * day, endpoint=("198.18.0.51", 5582))
    assert not fleet.wait(lambda: fleet.path("robot-b", "robot-a") == "direct", timeout_s=3)
    assert a.status().counters.get("drop_stale_beacon", 0) > 0
