"""Start-up: the data plane runs before the control API, which a thread of its own builds afterwards. Whatever
the account (the daemon's own, or uid 0 without capabilities, which loads the API's modules only after the
drop), every thread ends up without capabilities, peers connect and the API answers, and the two threads that
move packets run at the configured nice value (the default -10, raised above every application without any
capability) while every other thread runs at 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.daemon.privileges import capability_sets, thread_capabilities
from husarnet_ros.testing.lab_daemon import whitelist_each_other
from husarnet_ros.testing.netlab import Lab

pytestmark = pytest.mark.integration

# robot-a runs with the default; robot-b is told a value of its own.
NICE = {"robot-a": -10, "robot-b": 5}
CAP_SYS_NICE = 23  # linux/capability.h: lowering a nice value takes it (containers often lack it)


def may_lower_nice() -> bool:
    """Whether a daemon started from this process (as root, with this process's capabilities) may give its
    threads a nice value below 0."""
    return bool(capability_sets()["CapEff"] & (1 << CAP_SYS_NICE))


def thread_nice(pid: int) -> dict[int, int]:
    """The nice value of every thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rpartition(")")[2].split()
        values[int(task.name)] = int(fields[16])
    return values


@pytest.mark.parametrize("user", ["root", None], ids=["uid-0", "own-account"])
def test_every_thread_is_unprivileged_and_peers_and_api_work(
    lab: Lab, daemon_factory: Any, setup_accounts: Any, user: str | None
) -> None:
    hosts = lab.lan(2, ["robot-a", "robot-b"])
    extra = ["--user", user] if user else []
    nice = {"robot-a": [], "robot-b": ["--data-plane-nice", str(NICE["robot-b"])]}
    daemons = [
        daemon_factory(host, host.label, start=False, extra_args=extra + nice[host.label]) for host in hosts
    ]
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
        values = sorted(thread_nice(daemon.pid).values())
        expected = NICE[daemon.hostname]
        if expected < 0 and not may_lower_nice():  # without CAP_SYS_NICE: said, and normal priority
            assert "the data plane runs at normal priority" in log
            expected = 0
        else:
            assert "normal priority" not in log
        assert values.count(expected) == 2 or expected == 0, f"{daemon.hostname}: {values}"  # the two threads
        assert set(values) == {expected, 0}, f"{daemon.hostname}: {values}"
