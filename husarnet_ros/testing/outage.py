"""Measuring how long a path is out: a fast timestamped ping across it while something breaks and heals.

``ContinuousPing`` runs ``ping -D`` (one probe every ``interval``) inside a lab host for a bounded number of
probes and records when each reply arrived; ``first_reply_after(t)`` then says how long after ``t`` (a
``time.time()`` value, e.g. the moment a link came back) traffic flowed again. Used by the path-recovery
tests (which assert that it recovers at all, quickly enough to matter) and by bench/recovery.py (which
measures it, against the underlay's own recovery in the same run).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import time

from .netlab import Host

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)")


class ContinuousPing:
    def __init__(self, host: Host, address: str, *, interval: float = 0.02, seconds: float = 30.0) -> None:
        self._count = max(1, int(seconds / interval))
        argv = ["ping", "-n", "-D", "-i", f"{interval}", "-W", "1", "-c", str(self._count), address]
        if ":" in address:
            argv.insert(1, "-6")
        self.started = time.time()
        self._process = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._output = ""
        self._timeout = seconds + 15.0

    def stop(self) -> list[float]:
        """Stop pinging; the wall-clock times at which replies arrived, in order."""
        if self._process.poll() is None:
            self._process.send_signal(2)  # SIGINT: ping prints what it has and exits
        out, _ = self._process.communicate(timeout=self._timeout)
        self._output = out or ""
        return self.replies()

    def replies(self) -> list[float]:
        return [float(m.group(1)) for line in self._output.splitlines() if (m := _REPLY.match(line))]

    def first_reply_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first reply that arrived after it (None: none did)."""
        later = [t for t in self.replies() if t > moment]
        return later[0] - moment if later else None

    def longest_gap(self) -> float:
        """The longest time between two consecutive replies."""
        times = self.replies()
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
