"""Pure planning of whitelist and hosts changes (ros/fleet_sync.py) and service request checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from husarnet_ros.api import PeerStatus
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.ros.fleet_sync import (
    BaseServerLedger,
    BaseServersPlan,
    EndpointLedger,
    EndpointsPlan,
    HostsLedger,
    HostsPlan,
    address_mismatch,
    discovered_hosts,
    hosts_to_write,
    load_fleet_view,
    reachable_peers,
    wanted_hosts,
    whitelist_missing,
)
from husarnet_ros.ros.peer_target import (
    DEFAULT_PING_TIMEOUT_S,
    InvalidPeerRequest,
    PeerTarget,
    parse_peer_target,
    ping_timeout,
)

FLEET = """\
robots:
  robot1: {address: fc94::1}
  robot2: {address: fc94::2}
  robot3: {address: fc94::3}
links:
  - [robot1, robot2]
"""


@pytest.fixture
def fleet_file(tmp_path: Path) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    return str(path)


def peer(address: str, hostname: str | None = None, whitelisted: bool = True) -> PeerStatus:
    return PeerStatus(address=address, hostname=hostname, whitelisted=whitelisted)


# --- the fleet view ------------------------------------------------------------------------------------


def test_no_fleet_file_is_no_view() -> None:
    assert load_fleet_view("", "robot1", "robot1") is None


def test_robot_parameter_wins_over_daemon_hostname(fleet_file: str) -> None:
    state = load_fleet_view(fleet_file, "robot2", "robot1")
    assert state is not None
    assert state.robot == "robot2"
    assert state.view.whitelist == ["fc94::1"]


def test_daemon_hostname_is_the_default_robot(fleet_file: str) -> None:
    state = load_fleet_view(fleet_file, "", "robot1")
    assert state is not None
    assert state.view.hosts == {"robot2": "fc94::2"}
    assert state.source == fleet_file


def test_unknown_robot_says_where_the_name_came_from(fleet_file: str) -> None:
    with pytest.raises(ConfigError, match=r"'ghost' is not in the fleet.*daemon's hostname; set the `robot`"):
        load_fleet_view(fleet_file, "", "ghost")
    with pytest.raises(ConfigError, match=r"'ghost' is the `robot` parameter"):
        load_fleet_view(fleet_file, "ghost", "robot1")


def test_no_name_at_all(fleet_file: str) -> None:
    with pytest.raises(ConfigError, match="set the `robot` parameter"):
        load_fleet_view(fleet_file, "", "")


def test_missing_fleet_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read fleet file"):
        load_fleet_view(str(tmp_path / "nope.yaml"), "robot1", "")


def test_address_mismatch(fleet_file: str) -> None:
    state = load_fleet_view(fleet_file, "robot1", "")
    assert state is not None
    assert address_mismatch(state, "fc94::1") is None
    warning = address_mismatch(state, "fc94::9")
    assert warning is not None
    assert "fc94::1" in warning
    assert "fc94::9" in warning


# --- whitelist -----------------------------------------------------------------------------------------


def test_whitelist_missing_keeps_order_and_skips_present_and_duplicates() -> None:
    assert whitelist_missing(["fc94::3", "fc94::1", "fc94::3", "fc94::2"], ["fc94::1"]) == [
        "fc94::3",
        "fc94::2",
    ]
    assert whitelist_missing([], ["fc94::1"]) == []
    assert whitelist_missing(["fc94::1"], ["fc94::1"]) == []


def test_hosts_to_write() -> None:
    wanted = {"b": "fc94::2", "a": "fc94::1", "c": "fc94::3"}
    current = {"a": "fc94::1", "b": "fc94::9", "zz": "fc94::7"}
    assert hosts_to_write(wanted, current) == {"b": "fc94::2", "c": "fc94::3"}
    assert list(hosts_to_write(wanted, {})) == ["a", "b", "c"]


# --- discovered names ----------------------------------------------------------------------------------


def test_reachable_peers_follow_the_whitelist_unless_it_is_off() -> None:
    peers = [peer("fc94::2", whitelisted=True), peer("fc94::3", whitelisted=False)]
    assert [p.address for p in reachable_peers(peers, whitelist_enabled=True)] == ["fc94::2"]
    assert [p.address for p in reachable_peers(peers, whitelist_enabled=False)] == ["fc94::2", "fc94::3"]


def test_discovered_hosts_normalises_and_skips_what_cannot_be_written() -> None:
    peers = [
        peer("fc94::2", "Robot2"),
        peer("fc94::3", None),
        peer("fc94::4", ""),
        peer("fc94::5", "bad_name"),
        peer("fc94::6", "localhost"),
        peer("fc94::7", "fc94::7"),
    ]
    assert discovered_hosts(peers) == {"robot2": "fc94::2"}


def test_a_name_claimed_by_two_peers_is_left_out() -> None:
    peers = [peer("fc94::2", "twin"), peer("fc94::3", "twin"), peer("fc94::4", "solo")]
    assert discovered_hosts(peers) == {"solo": "fc94::4"}


def test_one_peer_listed_twice_is_not_ambiguous() -> None:
    assert discovered_hosts([peer("fc94::2", "a"), peer("fc94::2", "A")]) == {"a": "fc94::2"}


def test_fleet_names_win_and_own_name_is_reserved() -> None:
    wanted = wanted_hosts(
        {"robot2": "fc94::2", "robot1": "fc94::1"},
        {"robot2": "fc94::99", "cam": "fc94::5", "me": "fc94::6"},
        reserved=("me", "robot1"),
    )
    assert wanted == {"cam": "fc94::5", "robot2": "fc94::2"}


def test_two_names_for_one_address_are_fine() -> None:
    assert wanted_hosts({"robot2": "fc94::2"}, {"old-name": "fc94::2"}) == {
        "old-name": "fc94::2",
        "robot2": "fc94::2",
    }


# --- the hosts ledger ----------------------------------------------------------------------------------


def test_first_plan_adds_everything_and_removes_nothing() -> None:
    ledger = HostsLedger()
    plan = ledger.plan({"a": "fc94::1"}, {"printer": "fc94::99"})
    assert plan == HostsPlan(add={"a": "fc94::1"}, remove=())
    assert not plan.empty
    assert HostsPlan({}, ()).empty


def test_owned_name_no_longer_wanted_is_removed_foreign_one_is_not() -> None:
    ledger = HostsLedger()
    ledger.settle({"a": "fc94::1", "b": "fc94::2"}, {"a": "fc94::1", "b": "fc94::2", "printer": "fc94::99"})
    assert ledger.owned == {"a": "fc94::1", "b": "fc94::2"}
    plan = ledger.plan({"a": "fc94::1"}, {"a": "fc94::1", "b": "fc94::2", "printer": "fc94::99"})
    assert plan == HostsPlan(add={}, remove=("b",))
    ledger.settle({"a": "fc94::1"}, {"a": "fc94::1", "printer": "fc94::99"})
    assert ledger.owned == {"a": "fc94::1"}


def test_a_name_repointed_by_someone_else_is_left_alone() -> None:
    ledger = HostsLedger(owned={"b": "fc94::2"})
    assert ledger.plan({}, {"b": "fc94::77"}).remove == ()
    ledger.settle({}, {"b": "fc94::77"})
    assert ledger.owned == {}


def test_a_failed_removal_is_retried() -> None:
    ledger = HostsLedger(owned={"b": "fc94::2"})
    ledger.settle({}, {"b": "fc94::2"})  # the removal did not happen
    assert ledger.owned == {"b": "fc94::2"}
    assert ledger.plan({}, {"b": "fc94::2"}).remove == ("b",)


def test_a_name_gone_already_is_forgotten() -> None:
    ledger = HostsLedger(owned={"b": "fc94::2"})
    assert ledger.plan({}, {}).remove == ()
    ledger.settle({}, {})
    assert ledger.owned == {}


def test_a_failed_write_is_not_owned() -> None:
    ledger = HostsLedger()
    ledger.settle({"a": "fc94::1"}, {})
    assert ledger.owned == {}


def test_a_wanted_name_found_in_place_becomes_owned() -> None:
    ledger = HostsLedger()
    plan = ledger.plan({"a": "fc94::1"}, {"a": "fc94::1"})
    assert plan.empty
    ledger.settle({"a": "fc94::1"}, {"a": "fc94::1"})
    assert ledger.plan({}, {"a": "fc94::1"}).remove == ("a",)


def test_a_foreign_entry_with_a_wanted_name_is_overwritten() -> None:
    ledger = HostsLedger()
    assert ledger.plan({"robot2": "fc94::2"}, {"robot2": "fc94::55"}).add == {"robot2": "fc94::2"}


def test_adopt_takes_only_matching_entries() -> None:
    ledger = HostsLedger()
    ledger.adopt({"robot3": "fc94::3", "robot4": "fc94::4"}, {"robot3": "fc94::3", "robot4": "fc94::40"})
    assert ledger.owned == {"robot3": "fc94::3"}
    assert ledger.plan({}, {"robot3": "fc94::3", "robot4": "fc94::40"}).remove == ("robot3",)


# --- service requests ----------------------------------------------------------------------------------


def test_address_only() -> None:
    assert parse_peer_target(" FC94:0::2 ", "") == PeerTarget("fc94::2", None)


def test_hostname_only() -> None:
    target = parse_peer_target("", "Robot2")
    assert target == PeerTarget(None, "robot2")
    assert target.describe() == "robot2"


def test_both() -> None:
    target = parse_peer_target("fc94::2", "robot2")
    assert target.describe() == "fc94::2 (robot2)"


@pytest.mark.parametrize(
    ("address", "hostname", "expected"),
    [
        ("", "", "give the peer's overlay address (fc94::/16), its hostname, or both"),
        ("  ", " ", "give the peer's overlay address"),
        ("2001:db8::1", "", "must be inside fc94::/16"),
        ("192.168.1.1", "", "is not an IPv6 address"),
        ("robot2", "", "use the hostname field"),
        ("fc94::zz", "", "invalid address: 'fc94::zz' is not an IPv6 address"),
        ("fc94::" + "1" * 500, "", "is too long"),
        ("", "bad_name", "invalid hostname"),
        ("", "fc94::2", "looks like an IPv6 address: use the address field"),
        ("", "a" * 300, "is too long"),
        ("fc94::2", "-dash", "invalid hostname"),
    ],
)
def test_malformed_requests(address: str, hostname: str, expected: str) -> None:
    with pytest.raises(InvalidPeerRequest, match=None) as info:
        parse_peer_target(address, hostname)
    assert expected in str(info.value)
    assert len(str(info.value)) < 400


def test_ping_timeout() -> None:
    assert ping_timeout(0.0) == DEFAULT_PING_TIMEOUT_S
    assert ping_timeout(-3.0) == DEFAULT_PING_TIMEOUT_S
    assert ping_timeout(0.5) == 0.5
    for bad in (math.nan, 61.0, math.inf, 0.001):
        with pytest.raises(InvalidPeerRequest, match="timeout_s"):
            ping_timeout(bad)


# --- static endpoints: the ledger ---------------------------------------------------------------------

P2, P3 = "fc94::2", "fc94::3"
E2, E2B, E3 = (P2, "198.18.5.20:5582"), (P2, "robot2.example.com:5582"), (P3, "198.18.5.30:5582")
BY_HAND = (P3, "198.18.9.9:5582")


def test_endpoints_first_plan_adds_the_missing_and_removes_nothing() -> None:
    ledger = EndpointLedger()
    plan = ledger.plan([E2, E3, E2], [BY_HAND])
    assert plan == EndpointsPlan(add=(E2, E3), remove=())
    ledger.settle([E2, E3], [BY_HAND, E2, E3])
    assert ledger.owned == {E2, E3}
    assert ledger.plan([E2, E3], [BY_HAND, E2, E3]).empty


def test_endpoints_dropped_from_the_fleet_are_removed_but_never_one_added_by_hand() -> None:
    ledger = EndpointLedger()
    ledger.plan([E2, E3], [BY_HAND])
    ledger.settle([E2, E3], [BY_HAND, E2, E3])
    plan = ledger.plan([E2B], [BY_HAND, E2, E3])
    assert plan == EndpointsPlan(add=(E2B,), remove=(E2, E3))
    ledger.settle([E2B], [BY_HAND, E2B])
    assert ledger.owned == {E2B}


def test_endpoints_a_failed_removal_is_retried_and_one_gone_already_is_forgotten() -> None:
    ledger = EndpointLedger(owned={E2, E3}, started=True)
    ledger.settle([], [E2])  # E2's removal failed, E3 was removed by someone else
    assert ledger.owned == {E2}
    assert ledger.plan([], [E2]).remove == (E2,)


def test_endpoints_the_fleet_gives_found_at_start_are_adopted() -> None:
    ledger = EndpointLedger()
    plan = ledger.plan([E2], [E2, BY_HAND])  # E2 left from an earlier run: ours from now on
    assert plan.empty
    ledger.settle([E2], [E2, BY_HAND])
    assert ledger.plan([], [E2, BY_HAND]) == EndpointsPlan(add=(), remove=(E2,))


# --- base servers: the ledger ------------------------------------------------------------------------------

BASE_A, BASE_B, BASE_C = "base-a.example.com:5582", "198.18.0.100:5582", "[fd00:98::100]:5582"
BASE_BY_HAND = "198.18.0.200:5582"  # `husarnet-ros base add`, or the daemon's own configuration


def test_base_servers_first_plan_adds_the_missing_in_the_files_order_and_removes_nothing() -> None:
    ledger = BaseServerLedger()
    plan = ledger.plan([BASE_B, BASE_A, BASE_B], [BASE_BY_HAND])
    assert plan == BaseServersPlan(add=(BASE_B, BASE_A), remove=())
    ledger.settle([BASE_B, BASE_A], [BASE_BY_HAND, BASE_B, BASE_A])
    assert ledger.owned == {BASE_A, BASE_B}
    assert ledger.plan([BASE_B, BASE_A], [BASE_BY_HAND, BASE_B, BASE_A]).empty


def test_base_servers_dropped_from_the_fleet_are_removed_but_never_one_added_by_hand() -> None:
    ledger = BaseServerLedger()
    ledger.plan([BASE_A, BASE_B], [BASE_BY_HAND])
    ledger.settle([BASE_A, BASE_B], [BASE_BY_HAND, BASE_A, BASE_B])
    plan = ledger.plan([BASE_C], [BASE_BY_HAND, BASE_A, BASE_B])
    assert plan == BaseServersPlan(add=(BASE_C,), remove=(BASE_B, BASE_A))  # removals sorted
    ledger.settle([BASE_C], [BASE_BY_HAND, BASE_C])
    assert ledger.owned == {BASE_C}
    # An empty list in the file (or no `base_servers:` any more) removes the node's, and only those.
    assert ledger.plan([], [BASE_BY_HAND, BASE_C]) == BaseServersPlan(add=(), remove=(BASE_C,))


def test_base_servers_a_failed_removal_is_retried_and_one_gone_already_is_forgotten() -> None:
    ledger = BaseServerLedger(owned={BASE_A, BASE_B}, started=True)
    ledger.settle([], [BASE_A, BASE_BY_HAND])  # BASE_A's removal failed, BASE_B was removed by someone else
    assert ledger.owned == {BASE_A}
    assert ledger.plan([], [BASE_A, BASE_BY_HAND]).remove == (BASE_A,)


def test_base_servers_a_refused_addition_is_not_owned_and_asked_again() -> None:
    ledger = BaseServerLedger()
    ledger.plan([BASE_A, BASE_B], [])
    ledger.settle([BASE_A, BASE_B], [BASE_A])  # the daemon refused BASE_B (its limit)
    assert ledger.owned == {BASE_A}
    assert ledger.plan([BASE_A, BASE_B], [BASE_A]).add == (BASE_B,)


def test_base_servers_the_fleet_gives_found_at_start_are_adopted_others_are_not() -> None:
    ledger = BaseServerLedger()
    plan = ledger.plan([BASE_A], [BASE_A, BASE_BY_HAND])  # BASE_A left from an earlier run: ours from now on
    assert plan.empty
    ledger.settle([BASE_A], [BASE_A, BASE_BY_HAND])
    assert ledger.plan([], [BASE_A, BASE_BY_HAND]) == BaseServersPlan(add=(), remove=(BASE_A,))
    # One the file does not give is never adopted, at start or later.
    assert BASE_BY_HAND not in ledger.owned
