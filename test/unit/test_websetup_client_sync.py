"""The Websetup client's decisions (daemon/websetup_sync.py), with the time given: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from husarnet_ros.api import PeerStatus, Status
from husarnet_ros.core.websetup import DeviceConfig, HostRecord
from husarnet_ros.daemon.websetup_sync import (
    BACKOFF_MAX_S,
    NOT_CLAIMED_RECHECK_S,
    REPORT_INTERVAL_S,
    Backoff,
    ConfigFollower,
    ReportSchedule,
    peer_links,
)

WEBSETUP = "fc94::10"


def config(revision: int, whitelist: list[str], hosts: dict[str, str] | None = None) -> DeviceConfig:
    return DeviceConfig(
        revision=revision,
        hostname="robot1",
        whitelist=whitelist,
        hosts=[HostRecord(hostname=n, address=a) for n, a in (hosts or {}).items()],
    )


def test_backoff_doubles_from_one_second_to_thirty_and_resets() -> None:
    backoff = Backoff()
    assert [backoff.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_a_fresh_follower_asks_at_once_with_no_revision() -> None:
    follower = ConfigFollower(None, now=100.0)
    assert follower.poll_due_at() == 100.0
    assert follower.request().after == -1
    assert follower.request().wait_s == 25.0
    assert not follower.claimed


def test_a_restarted_daemon_asks_for_changes_after_the_revision_it_kept() -> None:
    follower = ConfigFollower(config(7, ["fc94::2"]), now=0.0)
    assert follower.claimed
    assert follower.request().after == 7


def test_a_new_config_says_what_changed_and_the_next_poll_is_due_at_once() -> None:
    follower = ConfigFollower(config(1, ["fc94::2", "fc94::3"], {"robot2": "fc94::2"}), now=0.0)
    change = follower.on_config(config(2, ["fc94::3", "fc94::4"], {"robot2": "fc94::2"}), now=5.0)
    assert change is not None
    assert change.allowed == ("fc94::4",)
    assert change.disallowed == ("fc94::2",)
    assert not change.hosts_changed
    assert change.changes_anything
    assert follower.request().after == 2
    assert follower.poll_due_at() == 5.0
    assert follower.state == "connected"


def test_only_hosts_changing_is_a_change_and_the_same_config_is_none() -> None:
    follower = ConfigFollower(config(1, ["fc94::2"], {"robot2": "fc94::2"}), now=0.0)
    renamed = follower.on_config(config(2, ["fc94::2"], {"arm": "fc94::2"}), now=1.0)
    assert renamed is not None
    assert renamed.hosts_changed
    assert not renamed.allowed
    assert follower.on_config(config(2, ["fc94::2"], {"arm": "fc94::2"}), now=2.0) is None
    # A long poll's timeout answers with the same config under the same revision: nothing to apply.
    assert follower.on_config(config(2, ["fc94::2"], {"arm": "fc94::2"}), now=27.0) is None


def test_a_database_restored_to_an_older_revision_is_followed_from_there() -> None:
    follower = ConfigFollower(config(5, ["fc94::2"]), now=0.0)
    change = follower.on_config(config(4, ["fc94::3"]), now=26.0)  # after a held request: the current one
    assert change is not None
    assert change.allowed == ("fc94::3",)
    assert change.disallowed == ("fc94::2",)
    assert follower.request().after == 4  # no loop: Websetup holds the next request until a change


def test_errors_back_off_one_second_doubling_to_thirty_and_a_success_resets() -> None:
    follower = ConfigFollower(None, now=0.0)
    delays = []
    now = 0.0
    for _ in range(8):
        delays.append(follower.on_error("cannot connect", now))
        due = follower.poll_due_at()
        assert due is not None
        now = due
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert max(delays) == BACKOFF_MAX_S
    assert follower.state == "backing off (cannot connect)"
    follower.on_config(config(1, []), now)
    assert follower.on_error("again", now) == 1


def test_not_claimed_waits_for_a_join_instead_of_spinning() -> None:
    follower = ConfigFollower(None, now=0.0)
    assert follower.on_not_claimed(now=1.0) is False  # nothing held: nothing to drop
    assert follower.state == "not claimed"
    due = follower.poll_due_at()
    assert due is not None
    assert due >= 1.0 + NOT_CLAIMED_RECHECK_S
    follower.on_joined(config(3, ["fc94::2"]), now=2.0)
    assert follower.poll_due_at() == 2.0
    assert follower.request().after == 3
    assert follower.claimed


def test_a_device_released_in_the_dashboard_drops_what_it_held() -> None:
    follower = ConfigFollower(config(3, ["fc94::2"]), now=0.0)
    assert follower.on_not_claimed(now=1.0) is True
    assert not follower.claimed
    assert follower.request().after == -1


def test_a_join_never_goes_back_to_an_older_revision() -> None:
    follower = ConfigFollower(config(9, ["fc94::2"]), now=0.0)
    follower.on_joined(config(8, []), now=1.0)
    assert follower.held is not None
    assert follower.held.revision == 9


def test_reports_every_thirty_seconds_back_off_on_errors_and_come_soon_after_a_join() -> None:
    reports = ReportSchedule(now=0.0)
    assert reports.due_at() == 0.0
    reports.on_sent(0.0)
    assert reports.due_at() == REPORT_INTERVAL_S
    assert reports.on_error(30.0) == 1
    assert reports.on_error(31.0) == 2
    assert reports.due_at() == 33.0
    reports.on_sent(33.0)
    assert reports.on_error(63.0) == 1
    reports.on_not_claimed(64.0)
    assert reports.due_at() == 64.0 + REPORT_INTERVAL_S
    reports.soon(70.0)
    assert reports.due_at() == 70.0


def status_with(*peers: PeerStatus) -> Status:
    return Status(
        address="fc94::1",
        hostname="robot1",
        interface="hnet0",
        udp_port=5582,
        whitelist_enabled=True,
        version="test",
        uptime_s=1.0,
        peers=list(peers),
    )


def test_peer_links_map_paths_and_leave_websetup_out() -> None:
    status = status_with(
        PeerStatus(address="fc94::2", path="direct", endpoint="198.18.0.2:5582", rtt_ms=0.8),
        PeerStatus(address="fc94::3", path="tunnelled", base_server="198.18.0.10:5582", rtt_ms=21.0),
        PeerStatus(address="fc94::4", path="none", rtt_ms=None),
        PeerStatus(address=WEBSETUP, path="direct", rtt_ms=0.5),
    )
    links = {link.address: link for link in peer_links(status, "FC94:0::10")}
    assert set(links) == {"fc94::2", "fc94::3", "fc94::4"}
    assert (links["fc94::2"].path, links["fc94::2"].base_server, links["fc94::2"].rtt_ms) == (
        "direct",
        None,
        0.8,
    )
    assert (links["fc94::3"].path, links["fc94::3"].base_server) == ("tunnelled", "198.18.0.10:5582")
    assert (links["fc94::4"].path, links["fc94::4"].rtt_ms) == ("down", None)


def test_peer_links_are_bounded_by_what_a_report_may_hold() -> None:
    many = [PeerStatus(address=f"fc94::{i + 100:x}", path="direct", rtt_ms=1.0) for i in range(1100)]
    assert len(peer_links(status_with(*many), WEBSETUP)) == 1024


@pytest.mark.parametrize("after", [0, 41])
def test_the_request_carries_the_held_revision(after: int) -> None:
    follower = ConfigFollower(config(after, []), now=0.0, wait_s=3.0)
    assert (follower.request().after, follower.request().wait_s) == (after, 3.0)
