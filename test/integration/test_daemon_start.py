"""Start-up: the data plane runs before the control API, which a thread of its own builds afterwards. Whatever
the account (the daemon's own, or uid 0 without capabilities, which loads the API's modules only after the
drop), every thread ends up without capabilities, peers connect and the API answers."""

from __future__ import annotations

from typing import Any

import pytest

from husarnet_ros.daemon.privileges import thread_capabilities
from husarnet_ros.testing.lab_daemon import whitelist_each_other
from husarnet_ros.testing.netlab import Lab

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("user", ["root", None], ids=["uid-0", "own-account"])
def test_every_thread_is_unprivileged_and_peers_and_api_work(
    lab: Lab, daemon_factory: Any, setup_accounts: Any, user: str | None
) -> None:
    hosts = lab.lan(2, ["robot-a", "robot-b"])
    extra = ["--user", user] if user else []
    daemons = [daemon_factory(host, host.label, start=False, extra_args=extra) for host in hosts]
    for daemon in daemons:
        daemon.start(wait_ready=False)
    for daemon in daemons:
        daemon.wait_ready()
    addresses = whitelist_each_other(daemons)
    a = daemons[0]
    a.wait_path(addresses["robot-b"], "direct", timeout=20)
    assert a.host.ping6(addresses["robot-b"], count=2).ok
    for daemon in daemons:
        threads = thread_capabilities(daemon.pid)
        assert len(threads) >= 4  # control loop, send and receive threads, the control API's
        for tid, sets in threads.items():
            assert sets["CapEff"] == 0, f"{daemon.hostname} thread {tid}: {sets}"
            assert sets["CapPrm"] == 0, f"{daemon.hostname} thread {tid}: {sets}"
        log = daemon.log_path.read_text()
        assert log.index("data plane running") < log.index("ready; control API on")
