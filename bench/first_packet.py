"""Time to the first packet through base servers, in the NAT lab (husarnet_ros/testing/natlab.py), against the
same kind of pair on one LAN with discovery, measured in the same run.

    sudo .venv/bin/python bench/first_packet.py [--runs N] [--json-out PATH] [--md-out PATH]

One lab holds everything: two base servers on the "internet", robots alone on their sites behind
port-restricted (a, b), symmetric (c) and no NAT (n), and a LAN of two hosts. Every daemon's state directory
gets its identity and a whitelist naming its partner before it starts, and each robot's discovery is its own
LAN only, so the base server is the only way a robot behind NAT can learn where the other is. Measured:

* cold, relayed pair (a port-restricted, c symmetric) and punched pair (a and b port-restricted): a fresh
  base server (restarted: no registrations), both daemons started at once, and a prober in a's namespace
  pinging the partner's fc94 address every 10 ms (bench/startup.py's): seconds from the start to the first
  reply. For the punched pair also the time until a's log says the path to b is direct. Each run gives the
  daemons a new UDP port, so no NAT mapping or conntrack entry of an earlier run helps.
* baseline: the same identities as the relayed pair, on one LAN, found by discovery (as bench/startup.py).
* failover: a and c registered with both base servers and relaying; a ping every 20 ms from a to c while a's
  home base server is killed (SIGKILL): the longest gap in replies.
* address change: a (port-restricted) gets a new LAN address, so a new NAT mapping, while n (routed) pings
  it every 20 ms over a direct path (as test/integration/test_base_servers.py does): the longest gap.

Median and min-max over the runs. Needs root. Never gates CI: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This checkout's husarnet_ros, not a copy installed in the venv: the daemons must run the code measured.
sys.path.insert(0, str(REPO))

from report import spread  # noqa: E402
from startup import Prober  # noqa: E402  (bench/, next to this file)

from husarnet_ros.core.address import format_address  # noqa: E402
from husarnet_ros.core.identity import Identity  # noqa: E402
from husarnet_ros.core.whitelist import Whitelist  # noqa: E402
from husarnet_ros.daemon.state import StateDir  # noqa: E402
from husarnet_ros.fileio import atomic_write_text  # noqa: E402
from husarnet_ros.testing.lab_base import LabBaseServer  # noqa: E402
from husarnet_ros.testing.lab_daemon import Daemon  # noqa: E402
from husarnet_ros.testing.natlab import NatKind, NatLab, Site  # noqa: E402
from husarnet_ros.testing.netlab import Host, Lab, LabError, cleanup_stale, netns_supported, wait_until  # noqa: E402
from husarnet_ros.testing.outage import ContinuousPing  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "first_packet.json"
FIRST_REPLY_TIMEOUT_S = 30.0
DIRECT_TIMEOUT_S = 30.0
FIRST_PORT = 5600  # cold run i uses UDP port FIRST_PORT + i (fresh NAT mappings every run)
PING_INTERVAL_S = 0.02
FAILOVER_WINDOW_S = 15.0  # hello every 5 s, down after 3 unanswered: failover within ~8 s plus scheduling
ADDRESS_WINDOW_S = 5.0
ADDRESS_SHIFT = 40  # the robot's new LAN address: its old one + this (and back, every other run)
EN_DASH = "\u2013"


def progress(message: str) -> None:
    print(f"[first_packet] {message}", file=sys.stderr, flush=True)


def _log_time(line: str) -> float | None:
    """time.time() of a daemon log line ('2026-11-27 10:00:00,123 INFO ...')."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def log_size(daemon: Daemon) -> int:
    return daemon.log_path.stat().st_size if daemon.log_path.exists() else 0


def wait_log(daemon: Daemon, offset: int, needles: tuple[str, ...], timeout: float) -> float | None:
    """time.time() of the first line after ``offset`` of the daemon's log holding every needle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(daemon.log_path, errors="replace") as log:
            log.seek(offset)
            for line in log:
                if all(needle in line for needle in needles):
                    return _log_time(line)
        time.sleep(0.05)
    return None


# --- the world ----------------------------------------------------------------------------------------------


def pair(
    hosts: tuple[Host, Host],
    names: tuple[str, str],
    identities: tuple[Identity, Identity],
    extra: tuple[list[str], list[str]],
) -> tuple[Daemon, Daemon]:
    """Two daemons (not started) with their identities and each on the other's whitelist."""
    daemons = (
        Daemon.create(hosts[0], names[0], extra_args=extra[0]),
        Daemon.create(hosts[1], names[1], extra_args=extra[1]),
    )
    for daemon, own, other in zip(daemons, identities, reversed(identities), strict=True):
        state = StateDir(daemon.state_dir)
        state.save_identity(own)
        state.save_whitelist(Whitelist([other.address]))
    return daemons


def robot_args(site: Site, bases: list[LabBaseServer]) -> list[str]:
    args = ["--discovery-networks", site.lan_network]
    for base in bases:
        args += ["--base-server", base.address]
    return args


class World:
    def __init__(self, lab: Lab) -> None:
        net = NatLab(lab)
        self.bases = [LabBaseServer.start(net.public_host(f"base{i + 1}")) for i in range(2)]
        self.sites = {
            "a": net.site("a", NatKind.PORT_RESTRICTED),
            "b": net.site("b", NatKind.PORT_RESTRICTED),
            "c": net.site("c", NatKind.SYMMETRIC),
            "n": net.site("n", NatKind.NONE),
        }
        lan = lab.lan(2, ["lan-a", "lan-c"])
        ids = {name: Identity.generate() for name in "abcn"}
        self.addresses = {name: format_address(identity.address) for name, identity in ids.items()}
        one = self.bases[:1]

        def robots(x: str, y: str, bases: list[LabBaseServer]) -> tuple[Daemon, Daemon]:
            hosts = (self.sites[x].robots[0], self.sites[y].robots[0])
            extra = (robot_args(self.sites[x], bases), robot_args(self.sites[y], bases))
            return pair(hosts, (f"robot-{x}", f"robot-{y}"), (ids[x], ids[y]), extra)

        self.relayed = robots("a", "c", one)
        self.punched = robots("a", "b", one)
        self.failover = robots("a", "c", self.bases)
        self.roaming = robots("a", "n", one)
        self.lan = pair((lan[0], lan[1]), ("lan-a", "lan-c"), (ids["a"], ids["c"]), ([], []))
        self.daemons = [*self.relayed, *self.punched, *self.failover, *self.roaming, *self.lan]

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
            daemon.remove_files()
        for base in self.bases:
            base.stop()
            base.remove_files()


@contextmanager
def running(daemons: tuple[Daemon, Daemon], wait_ready: bool = False) -> Iterator[None]:
    try:
        for daemon in daemons:
            daemon.start(wait_ready=False)
        if wait_ready:
            for daemon in daemons:
                daemon.wait_ready()
        yield
    finally:
        for daemon in daemons:
            daemon.stop()


# --- the measurements ---------------------------------------------------------------------------------------


def cold_run(
    daemons: tuple[Daemon, Daemon], target: str, port: int, bases: list[LabBaseServer], direct_to: str | None
) -> dict[str, float | None]:
    """From starting both daemons to the first reply from ``target`` (and to a's direct path to
    ``direct_to``)."""
    for base in bases:  # no registration left from earlier runs
        base.kill()
        base.restart()
    for daemon in daemons:
        daemon.udp_port = port
    prober = Prober(daemons[0].host, target, timeout=FIRST_REPLY_TIMEOUT_S)
    offset = log_size(daemons[0])
    started = time.time()
    with running(daemons):
        replied = prober.first_reply()
        direct = None
        if direct_to is not None:
            direct = wait_log(daemons[0], offset, (f"peer {direct_to}", "direct via"), DIRECT_TIMEOUT_S)
    return {
        "first_reply_s": None if replied is None else replied - started,
        "direct_s": None if direct is None else direct - started,
    }


def base_view(daemon: Daemon) -> tuple[str | None, set[str]]:
    """(its home base server, the base servers it is registered with)."""
    status = daemon.status()
    registered = {s["address"] for s in status.get("base_servers", []) if s.get("state") == "registered"}
    return (status.get("base") or {}).get("address"), registered


def failover_run(world: World) -> dict[str, float | None]:
    """a and c relaying with both bases up; a's home is killed: the longest gap of a's pings to c."""
    a, c = world.failover
    everyone = {base.address for base in world.bases}
    for base in world.bases:
        if base.process is None or base.process.poll() is not None:
            base.restart()
    for daemon in (a, c):
        registered_everywhere = partial(lambda d: base_view(d)[1] == everyone, daemon)
        wait_until(registered_everywhere, 30, interval=0.2, what="registered with both")
    wait_until(
        lambda: a.host.ping6(world.addresses["c"], count=1, deadline=2).ok, 30, interval=0.2, what="relayed"
    )
    home = base_view(a)[0]
    ping = ContinuousPing(
        a.host, world.addresses["c"], interval=PING_INTERVAL_S, seconds=FAILOVER_WINDOW_S + 5
    )
    time.sleep(1.0)
    killed_at = time.time()
    next(base for base in world.bases if base.address == home).kill()
    try:
        wait_until(
            lambda: base_view(a)[0] not in (None, home), FAILOVER_WINDOW_S, interval=0.2, what="failover"
        )
        time.sleep(2.0)  # the relayed ping resumes
    except LabError:
        pass  # reported as no reply after the kill
    ping.stop()
    after = ping.first_reply_after(killed_at)
    return {"gap_s": ping.longest_gap() if after is not None else None, "first_reply_after_kill_s": after}


def address_change_run(world: World, addresses: tuple[str, str]) -> dict[str, float | None]:
    """n pings a over a direct path while a moves to the one of ``addresses`` it does not have."""
    a, n = world.roaming
    site, host = world.sites["a"], a.host
    n.wait_path(world.addresses["a"], "direct", timeout=30)
    old_address = current_ipv4(host)
    new_address = addresses[1] if old_address == addresses[0] else addresses[0]
    ping = ContinuousPing(
        n.host, world.addresses["a"], interval=PING_INTERVAL_S, seconds=ADDRESS_WINDOW_S + 2
    )
    time.sleep(1.0)
    host.sysctl(f"net.ipv4.conf.{host.ifname}.promote_secondaries", 1)
    host.run(["ip", "addr", "add", f"{new_address}/24", "dev", host.ifname])
    host.run(["ip", "addr", "del", f"{old_address}/24", "dev", host.ifname])
    host.run(["ip", "route", "replace", "default", "via", site.lan_gateway])
    changed_at = time.time()
    time.sleep(ADDRESS_WINDOW_S)
    ping.stop()
    after = ping.first_reply_after(changed_at)
    return {"gap_s": ping.longest_gap() if after is not None else None, "first_reply_after_change_s": after}


def current_ipv4(host: Host) -> str:
    out = host.run(["ip", "-4", "-o", "addr", "show", "dev", host.ifname]).stdout
    return out.split(" inet ", 1)[1].split("/", 1)[0]


def attempt(measurement: Callable[..., dict[str, float | None]], *args: Any) -> dict[str, Any]:
    """One run of ``measurement``; a run that could not even set up is recorded with its error."""
    try:
        return measurement(*args)
    except LabError as exc:
        progress(f"{measurement.__name__} failed: {exc}")
        return {"error": str(exc)}


def measure(runs: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {
        name: [] for name in ("lan", "relayed", "punched", "failover", "address_change")
    }
    with Lab() as lab:
        world = World(lab)
        try:
            one = world.bases[:1]
            for run in range(runs):  # interleaved, so every kind sees the same machine load
                port = FIRST_PORT + run
                results["lan"].append(cold_run(world.lan, world.addresses["c"], port, [], None))
                results["relayed"].append(cold_run(world.relayed, world.addresses["c"], port, one, None))
                results["punched"].append(
                    cold_run(world.punched, world.addresses["b"], port, one, world.addresses["b"])
                )
                progress(
                    f"cold run {run + 1}: LAN {results['lan'][-1]}, relayed {results['relayed'][-1]}, "
                    f"punched {results['punched'][-1]}"
                )
            for base in world.bases:
                base.kill()
                base.restart()
            with running(world.failover, wait_ready=True):
                for run in range(runs):
                    results["failover"].append(attempt(failover_run, world))
                    progress(f"failover run {run + 1}: {results['failover'][-1]}")
            for base in world.bases:  # the last failover run left one killed
                if base.process is None or base.process.poll() is not None:
                    base.restart()
            original = world.sites["a"].robots[0].ipv4
            moved = str(ipaddress.IPv4Address(original) + ADDRESS_SHIFT)
            with running(world.roaming, wait_ready=True):
                for run in range(runs):
                    results["address_change"].append(attempt(address_change_run, world, (original, moved)))
                    progress(f"address change run {run + 1}: {results['address_change'][-1]}")
        finally:
            world.close()
    return results


# --- summary ------------------------------------------------------------------------------------------------


METRICS = (  # (row label, scenario, metric)
    ("LAN, discovery (baseline): first reply", "lan", "first_reply_s"),
    ("relayed pair (port-restricted + symmetric): first reply", "relayed", "first_reply_s"),
    ("punched pair (port-restricted + port-restricted): first reply", "punched", "first_reply_s"),
    ("punched pair: path direct (robot a's log)", "punched", "direct_s"),
    ("failover, home base killed: longest gap in relayed pings", "failover", "gap_s"),
    ("address change behind NAT: longest gap in direct pings", "address_change", "gap_s"),
)


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for _, scenario, metric in METRICS:
        runs = results[scenario]
        values = [float(run[metric]) for run in runs if run.get(metric) is not None]
        summary[f"{scenario}.{metric}"] = spread(values) or {"values": []}
        summary[f"{scenario}.{metric}"]["failed"] = len(runs) - len(values)
    lan = summary["lan.first_reply_s"].get("median")
    for scenario, metric in (
        ("relayed", "first_reply_s"),
        ("punched", "first_reply_s"),
        ("punched", "direct_s"),
    ):
        ours = summary[f"{scenario}.{metric}"].get("median")
        summary[f"{scenario}.{metric}"]["vs_lan"] = ours / lan if ours is not None and lan else None
    return summary


def _cell(stats: dict[str, Any]) -> str:
    if not stats["values"]:
        return "-"
    text = f"{stats['median']:.2f}"
    if len(stats["values"]) > 1:
        text += f" ({stats['min']:.2f}{EN_DASH}{stats['max']:.2f})"
    return text


def markdown(summary: dict[str, Any], runs: int) -> str:
    lines = [
        f"Median (min{EN_DASH}max) of {runs} runs, seconds; cold = from starting both daemons.",
        "",
        "| what | s | x LAN | runs without an answer |",
        "|---|---:|---:|---:|",
    ]
    for label, scenario, metric in METRICS:
        stats = summary[f"{scenario}.{metric}"]
        ratio = stats.get("vs_lan")
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"| {label} | {_cell(stats)} | {ratio_text} | {stats['failed']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--md-out", type=Path)
    args = parser.parse_args()
    reason = netns_supported()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    cleanup_stale()
    runs = max(1, args.runs)
    results = measure(runs)
    summary = summarize(results)
    meta = {"runs": runs, "load_average": os.getloadavg(), "cpus": os.cpu_count(), "when": time.time()}
    text = markdown(summary, runs)
    print(text)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        args.json_out, json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=2)
    )
    progress(f"JSON written to {args.json_out}")
    if args.md_out:
        atomic_write_text(args.md_out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
