"""The ROS nodes' bound control API calls: "already gone" (404, NotFound) is done, other refusals are not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from husarnet_ros.client import ControlClient, ControlError
from husarnet_ros.ros import daemon_calls
from husarnet_ros.testing.memnet_daemon import ServedFleet, served_fleet

Served = tuple[ServedFleet, ControlClient]


@pytest.fixture
def served() -> Iterator[Served]:
    """A client of the real daemon controller (robot1 on the in-memory network, no peers)."""
    with served_fleet("robot1", ()) as fleet, ControlClient(fleet.socket_path) as client:
        yield fleet, client


def test_whitelist_remove_says_whether_the_address_was_there(served: Served) -> None:
    fleet, client = served
    daemon_calls.whitelist_add("fc94::2")(client)
    assert daemon_calls.whitelist_remove("fc94::2")(client) is True
    assert daemon_calls.whitelist_remove("fc94::2")(client) is False
    assert fleet.controller.whitelist().addresses == []


def test_hosts_remove_of_a_missing_entry_returns_the_entries(served: Served) -> None:
    _, client = served
    daemon_calls.hosts_add("robot5", "fc94::5")(client)
    assert daemon_calls.hosts_remove("robot9")(client) == client.hosts()
    assert [entry.hostname for entry in daemon_calls.hosts_remove("robot5")(client)] == []


def test_refusals_other_than_not_found_are_raised(served: Served) -> None:
    _, client = served
    with pytest.raises(ControlError) as info:
        daemon_calls.whitelist_remove("not-an-address")(client)
    assert info.value.status == 422
    with pytest.raises(ControlError) as info:
        daemon_calls.hosts_remove("bad_name")(client)
    assert info.value.status == 422
