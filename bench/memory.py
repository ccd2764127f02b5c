"""Memory benchmark: one real daemon's resident memory with no peers and with N peers (100 by default),
each with a live session and traffic, against a bare Python interpreter measured in the same run.

    sudo .venv/bin/python bench/memory.py [--peers N] [--seconds S] [--runs R] [--baseline-tree DIR]
                                          [--json-out PATH] [--md-out PATH]

Two namespaces on one LAN. The daemon runs in robot-a, with the N peers already on its whitelist (written
to its state directory before it starts). robot-b gets N more IPv4 addresses (198.18.0.100 and up) and one
process, ``husarnet_ros.testing.swarm``, running N sans-IO ``Node``s, each with its own identity, address
and UDP socket: each handshakes with the daemon, then sends an authenticated ping and an ICMPv6 echo request
(answered by the daemon's kernel through hnet0) every second. Reported, from /proc/<pid>/status: VmRSS and
VmHWM of the daemon after start-up with no peer, then after every peer's session is up and the traffic has
run ``--seconds``; the cost per peer; and the RSS of ``python -c`` sleeping (the interpreter alone) as the
baseline. With ``--baseline-tree DIR`` another version of the daemon (see other_version.py) is measured
the same way, alternating with this one. Median and min-max over the runs. Never gates CI.

The N identities take a while to make (proof of work): they are kept in bench/results/swarm-identities.txt
and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
# The working tree's code is what is measured, also when an older copy is pip-installed in the venv.
sys.path.insert(0, str(REPO))

from other_version import TreeDaemon, checked_tree  # noqa: E402  (bench/, next to this file)

from husarnet_ros.core.constants import DEFAULT_UDP_PORT  # noqa: E402
from husarnet_ros.core.identity import Identity  # noqa: E402
from husarnet_ros.core.whitelist import Whitelist  # noqa: E402
from husarnet_ros.daemon.state import StateDir  # noqa: E402
from husarnet_ros.fileio import atomic_write_text  # noqa: E402
from husarnet_ros.testing.lab_daemon import husarnet_ros_env  # noqa: E402
from husarnet_ros.testing.netlab import Lab, cleanup_stale, netns_supported  # noqa: E402
from husarnet_ros.testing.swarm import MAX_PEERS, SwarmProcess, add_peer_addresses  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "memory.json"
IDENTITY_CACHE = REPO / "bench" / "results" / "swarm-identities.txt"
SETTLE_S = 2.0  # after start-up (or after the swarm stops), before a sample
SESSIONS_TIMEOUT_S = 60.0


def progress(message: str) -> None:
    print(f"[memory] {message}", file=sys.stderr, flush=True)


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid``, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def identities(count: int) -> list[Identity]:
    """``count`` identities from the cache, made (and cached) as needed."""
    cached = []
    if IDENTITY_CACHE.exists():
        cached = [Identity.from_file_text(line) for line in IDENTITY_CACHE.read_text().splitlines() if line]
    if len(cached) < count:
        progress(f"making {count - len(cached)} identities (proof of work; cached for later runs)")
        cached += [Identity.generate() for _ in range(count - len(cached))]
        IDENTITY_CACHE.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(IDENTITY_CACHE, "".join(i.to_file_text() for i in cached), mode=0o600)
    return cached[:count]


def interpreter_rss() -> int:
    """RSS of a bare interpreter (this venv's) that imported nothing of ours."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print(flush=True); time.sleep(30)"], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        return memory_of(process.pid)["VmRSS"]
    finally:
        process.kill()
        process.wait()


def one_run(
    peer_count: int, seconds: float, all_identities: list[Identity], tree: Path | None = None
) -> dict[str, Any]:
    daemon_identity, peers = all_identities[0], all_identities[1 : 1 + peer_count]
    with Lab() as lab:
        a_host, b_host = lab.lan(2, ["robot-a", "robot-b"])
        add_peer_addresses(b_host, peer_count)
        daemon = cast(TreeDaemon, TreeDaemon.create(a_host, "mem-daemon"))
        daemon.tree = tree
        state = StateDir(daemon.state_dir)
        state.save_identity(daemon_identity)
        state.save_whitelist(Whitelist([peer.address for peer in peers]))
        workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-memory-", dir="/tmp"))
        swarm: SwarmProcess | None = None
        try:
            daemon.start()
            time.sleep(SETTLE_S)
            idle = memory_of(daemon.pid)
            progress(f"no peers: {idle}")
            swarm = SwarmProcess(
                b_host,
                workdir,
                peers,
                daemon_identity.address,
                f"{a_host.ipv4}:{DEFAULT_UDP_PORT}",
                husarnet_ros_env(),
            )
            started = time.monotonic()
            swarm.read_until(lambda s: s["sessions"] >= peer_count, SESSIONS_TIMEOUT_S)
            all_up_s = time.monotonic() - started
            progress(f"{peer_count} sessions up after {all_up_s:.1f} s; traffic for {seconds:g} s")
            first = swarm.latest
            time.sleep(seconds)
            loaded = memory_of(daemon.pid)
            status = daemon.status()
            stats = swarm.stop()
            swarm = None
            direct = sum(1 for peer in status.get("peers", []) if peer.get("path") == "direct")
            progress(f"{peer_count} peers: {loaded}, {direct} direct in the daemon's status, swarm {stats}")
            return {
                "idle": idle,
                "loaded": loaded,
                "peers": peer_count,
                "all_sessions_up_s": all_up_s,
                "direct_in_status": direct,
                "swarm": stats,
                "pongs_during_sample": stats.get("pongs", 0) - first.get("pongs", 0),
                "echo_replies_during_sample": stats.get("echo_replies", 0) - first.get("echo_replies", 0),
            }
        finally:
            if swarm is not None:
                swarm.stop()
            daemon.stop()
            daemon.remove_files()
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]], interpreter: list[int]) -> dict[str, Any]:
    mib = 2**20

    def of(pick: Any) -> dict[str, float | None]:
        return spread([pick(run) / mib for run in runs])

    peers = runs[0]["peers"]
    summary = {
        "peers": peers,
        "interpreter_rss_mib": spread([value / mib for value in interpreter]),
        "idle_rss_mib": of(lambda r: r["idle"]["VmRSS"]),
        "idle_hwm_mib": of(lambda r: r["idle"]["VmHWM"]),
        "loaded_rss_mib": of(lambda r: r["loaded"]["VmRSS"]),
        "loaded_hwm_mib": of(lambda r: r["loaded"]["VmHWM"]),
        "per_peer_kib": spread([(r["loaded"]["VmRSS"] - r["idle"]["VmRSS"]) / peers / 1024 for r in runs]),
        "all_sessions_up_s": spread([r["all_sessions_up_s"] for r in runs]),
    }
    loaded, bare = summary["loaded_rss_mib"]["median"], summary["interpreter_rss_mib"]["median"]
    summary["ratio_loaded_vs_interpreter"] = loaded / bare if loaded and bare else None
    return summary


def _fmt(stats: dict[str, float | None], digits: int = 1) -> str:
    if stats["median"] is None or stats["min"] is None or stats["max"] is None:
        return "-"
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"


def markdown(summary: dict[str, Any], runs: int) -> str:
    ratio = summary["ratio_loaded_vs_interpreter"]
    lines = [
        f"| what (median (min-max) of {runs} runs) | value |",
        "|---|---:|",
        f"| bare Python interpreter, RSS MiB | {_fmt(summary['interpreter_rss_mib'])} |",
        "| daemon, no peers: RSS / peak MiB "
        f"| {_fmt(summary['idle_rss_mib'])} / {_fmt(summary['idle_hwm_mib'])} |",
        f"| daemon, {summary['peers']} peers with traffic: RSS / peak MiB "
        f"| {_fmt(summary['loaded_rss_mib'])} / {_fmt(summary['loaded_hwm_mib'])} |",
        f"| cost per peer, KiB of RSS | {_fmt(summary['per_peer_kib'], 0)} |",
        f"| all sessions up after (s) | {_fmt(summary['all_sessions_up_s'])} |",
        f"| daemon with peers / bare interpreter | {'-' if ratio is None else f'{ratio:.1f}x'} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="traffic before the sample")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, help="directory holding another version's husarnet_ros")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--md-out", type=Path)
    args = parser.parse_args()
    if not 1 <= args.peers <= MAX_PEERS:
        print(f"--peers must be 1..{MAX_PEERS}", file=sys.stderr)
        return 2
    reason = netns_supported()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    try:
        baseline_tree = checked_tree(args.baseline_tree)
    except ValueError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    cleanup_stale()
    all_identities = identities(args.peers + 1)
    interpreter = [interpreter_rss() for _ in range(3)]
    runs, baseline_runs = [], []
    for _ in range(max(1, args.runs)):
        if baseline_tree is not None:
            progress(f"baseline tree {baseline_tree}")
            baseline_runs.append(one_run(args.peers, args.seconds, all_identities, baseline_tree))
        progress("this tree")
        runs.append(one_run(args.peers, args.seconds, all_identities))
    summary = summarize(runs, interpreter)
    baseline_summary = summarize(baseline_runs, interpreter) if baseline_runs else None
    meta = {
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "when": time.time(),
        "seconds": args.seconds,
    }
    meta["baseline_tree"] = str(baseline_tree) if baseline_tree else None
    document = {
        "meta": meta,
        "summary": summary,
        "runs": runs,
        "interpreter_rss": interpreter,
        "baseline_summary": baseline_summary,
        "baseline_runs": baseline_runs,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json_out, json.dumps(document, indent=2) + "\n")
    text = markdown(summary, len(runs))
    if baseline_summary is not None:
        text += "\nBaseline tree (--baseline-tree), same run:\n\n" + markdown(
            baseline_summary, len(baseline_runs)
        )
    if args.md_out:
        atomic_write_text(args.md_out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
