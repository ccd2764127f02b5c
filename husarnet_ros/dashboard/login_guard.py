"""Slows down password guessing: too many failed logins for one account, or from one address, within a
window, and further attempts are refused (HTTP 429) until the oldest failure leaves the window.

Per account, so guessing one account's password from many addresses is bounded; per address, so one client
trying many accounts is too. A successful login clears its account's failures (not its address's: an
attacker who owns one account must not reset its guessing budget for others). Kept in memory: a restart
forgets it, which costs an attacker a restart they cannot cause. Tables are bounded (the least recently failed
entry goes first). Thread-safe; the clock is an argument.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable

from .errors import DashboardError

WINDOW_S = 600.0
MAX_FAILURES_PER_ACCOUNT = 10
MAX_FAILURES_PER_ADDRESS = 30
MAX_TRACKED = 10_000


class TooManyAttempts(DashboardError):
    """Too many failed logins recently (HTTP 429); ``retry_after`` says when to try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _FailureLog:
    """Failure times per key, each list at most ``limit`` long, at most MAX_TRACKED keys."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._times: collections.OrderedDict[Hashable, collections.deque[float]] = collections.OrderedDict()

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        times = self._times.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if not times:
            del self._times[key]
            return 0.0
        return times[0] + WINDOW_S - now if len(times) >= self.limit else 0.0

    def add(self, key: Hashable, now: float) -> None:
        times = self._times.pop(key, None) or collections.deque(maxlen=self.limit)
        times.append(now)
        self._times[key] = times
        while len(self._times) > MAX_TRACKED:
            self._times.popitem(last=False)

    def clear(self, key: Hashable) -> None:
        self._times.pop(key, None)


class LoginGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts = _FailureLog(MAX_FAILURES_PER_ACCOUNT)
        self._addresses = _FailureLog(MAX_FAILURES_PER_ADDRESS)

    def check(self, username: str, address: str, now: float) -> None:
        """TooManyAttempts if this login must not even be tried now."""
        with self._lock:
            wait = max(self._accounts.wait(username.lower(), now), self._addresses.wait(address, now))
        if wait > 0:
            minutes = max(1, round(wait / 60))
            raise TooManyAttempts(
                f"too many failed logins: try again in about {minutes} minute{'s' if minutes > 1 else ''}",
                wait,
            )

    def failed(self, username: str, address: str, now: float) -> None:
        with self._lock:
            self._accounts.add(username.lower(), now)
            self._addresses.add(address, now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._accounts.clear(username.lower())
