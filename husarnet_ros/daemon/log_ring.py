"""The daemon's most recent log lines, kept in memory for `husarnet-ros logs` and the control API, and the
throttle that keeps a repeated failure from flooding them."""

from __future__ import annotations

import collections
import contextlib
import logging
import time

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogRing(logging.Handler):
    """A logging handler that keeps the latest ``size`` formatted lines."""

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))

    def tail(self, limit: int) -> list[str]:
        """The latest ``limit`` lines, oldest first."""
        lines = list(self.lines)  # one step: the logging threads may append meanwhile
        return lines[-limit:] if limit > 0 else []


class LogThrottle:
    """Lets a repeated message through at most once per ``interval_s``, counting what it held back."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next_at = 0.0
        self._held_back = 0

    def allow(self) -> str | None:
        """None: stay silent now. Else log now, adding the note returned (empty, or how many held back)."""
        now = time.monotonic()
        if now < self._next_at:
            self._held_back += 1
            return None
        note = f" ({self._held_back} more since the last such message)" if self._held_back else ""
        self._next_at = now + self._interval_s
        self._held_back = 0
        return note
