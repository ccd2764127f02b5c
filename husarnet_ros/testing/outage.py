"""Measuring how long a path is out: a fast timestamped ping across it while something breaks and heals,
and the faults themselves (a link going down, a switch dropping everything, an address changing).

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

from .netlab import Host, Lab, run_command

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


# --- the faults ---------------------------------------------------------------------------------------------


def set_link(host: Host, up: bool) -> None:
    """The host's own LAN link goes down or comes back (the host sees it)."""
    host.run(["ip", "link", "set", host.ifname, "up" if up else "down"])


def connect_switch(lab: Lab, connected: bool) -> None:
    """The lab's switch drops every frame (its ports leave the bridge) or forwards again; the hosts' own
    links stay up, so nothing tells them."""
    switch = lab.switches[0]
    for port in switch.ports:
        action = ["master", switch.bridge] if connected else ["nomaster"]
        run_command(["ip", "-n", switch.netns, "link", "set", port, *action])


def change_ipv4(host: Host, new_address: str, prefix_len: int = 24) -> None:
    """As a DHCP client with a new lease does: the old address goes, the new one comes."""
    host.run(["ip", "addr", "del", f"{host.ipv4}/{prefix_len}", "dev", host.ifname])
    host.run(["ip", "addr", "add", f"{new_address}/{prefix_len}", "dev", host.ifname])
