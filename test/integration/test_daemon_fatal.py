"""The daemon exits only on a fatal error, and then with a non-zero status and one line saying why."""

from __future__ import annotations

from typing import Any

import pytest

from husarnet_ros.testing.netlab import Lab, wait_until

pytestmark = pytest.mark.integration


def test_losing_the_tun_device_stops_the_daemon_with_the_reason(lab: Lab, daemon_factory: Any) -> None:
    (host,) = lab.lan(1, ["robot-a"])
    daemon = daemon_factory(host, "robot-a")
    host.run(["ip", "link", "del", daemon.interface])  # someone deletes hnet0 under the running daemon
    wait_until(lambda: not daemon.running, 15, interval=0.1, what="the daemon to stop")
    assert daemon.process is not None
    assert daemon.process.returncode == 1
    last_line = daemon.log_tail(1).strip()
    assert last_line.startswith("error: the daemon stopped: the TUN device cannot be read any more: ")
    assert "Traceback" not in daemon.log_tail(200)
