"""The Dashboard's brake on password guessing (dashboard/login_guard.py), with the clock given."""

from __future__ import annotations

import pytest

from husarnet_ros.dashboard.login_guard import (
    MAX_FAILURES_PER_ACCOUNT,
    MAX_FAILURES_PER_ADDRESS,
    MAX_TRACKED,
    WINDOW_S,
    LoginGuard,
    TooManyAttempts,
)


def fail_times(guard: LoginGuard, count: int, username: str, address: str, start: float = 0.0) -> None:
    for i in range(count):
        guard.check(username, address, start + i)
        guard.failed(username, address, start + i)


def test_an_account_is_refused_after_its_failures_until_the_first_leaves_the_window() -> None:
    guard = LoginGuard()
    fail_times(guard, MAX_FAILURES_PER_ACCOUNT, "alice", "198.18.0.1")
    with pytest.raises(TooManyAttempts, match="too many failed logins") as refused:
        guard.check("alice", "198.18.0.1", 100.0)
    assert refused.value.retry_after == pytest.approx(WINDOW_S - 100.0)
    # From another address too (guessing one account from many places is bounded), and whatever the case.
    with pytest.raises(TooManyAttempts):
        guard.check("ALICE", "198.18.0.99", 100.0)
    # Other accounts are not affected by alice's failures.
    guard.check("bob", "198.18.0.99", 100.0)
    # Once the first failure is older than the window, one more try is allowed.
    guard.check("alice", "198.18.0.1", WINDOW_S + 0.5)


def test_one_address_trying_many_accounts_is_refused() -> None:
    guard = LoginGuard()
    for i in range(MAX_FAILURES_PER_ADDRESS):
        guard.check(f"user{i}", "198.18.0.7", float(i))
        guard.failed(f"user{i}", "198.18.0.7", float(i))
    with pytest.raises(TooManyAttempts):
        guard.check("someone-else", "198.18.0.7", 50.0)
    guard.check("someone-else", "198.18.0.8", 50.0)


def test_a_successful_login_clears_its_account_but_not_the_address() -> None:
    guard = LoginGuard()
    fail_times(guard, MAX_FAILURES_PER_ACCOUNT - 1, "alice", "198.18.0.1")
    guard.succeeded("alice")
    fail_times(guard, MAX_FAILURES_PER_ACCOUNT - 1, "alice", "198.18.0.1", start=20.0)
    guard.check("alice", "198.18.0.1", 40.0)  # the count started again after the success
    # The address keeps its count: 2 * (limit - 1) failures so far.
    remaining = MAX_FAILURES_PER_ADDRESS - 2 * (MAX_FAILURES_PER_ACCOUNT - 1)
    for i in range(remaining):
        guard.check(f"guess{i}", "198.18.0.1", 50.0 + i)
        guard.failed(f"guess{i}", "198.18.0.1", 50.0 + i)
    with pytest.raises(TooManyAttempts):
        guard.check("bob", "198.18.0.1", 90.0)


def test_fewer_failures_than_the_limit_never_refuse() -> None:
    guard = LoginGuard()
    for round_ in range(5):  # spread over several windows
        fail_times(guard, MAX_FAILURES_PER_ACCOUNT - 1, "alice", "198.18.0.1", start=round_ * (WINDOW_S + 1))
    guard.check("alice", "198.18.0.1", 5 * (WINDOW_S + 1))


def test_the_tables_stay_bounded() -> None:
    guard = LoginGuard()
    for i in range(MAX_TRACKED + 500):
        guard.failed(f"user{i}", f"addr{i}", float(i % 100))
    assert len(guard._accounts._times) == MAX_TRACKED
    assert len(guard._addresses._times) == MAX_TRACKED
