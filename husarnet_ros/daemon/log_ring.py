"""The daemon's most recent log lines, kept in memory for `husarnet-ros logs` and the control API."""

from __future__ import annotations

import collections
import contextlib
import logging

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
