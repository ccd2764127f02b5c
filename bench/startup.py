"""Start-up benchmark: from starting two daemons (already on each other's whitelist, on one LAN) to the
first ping answered across the overlay, against Python's own start-up and wireguard-go measured in the
same run.

    sudo .venv/bin/python bench/startup.py [--runs N] [--skip-wireguard] [--user NAME] [--baseline-tree DIR]
                                           [--json-out PATH] [--md-out PATH]

One lab (two namespaces on a bridge) serves every run. Before the first run each daemon's state directory
gets its identity and a whitelist holding the other's address, so nothing has to be configured once the
daemons run. Per run: a prober in robot-a's namespace sends an ICMP echo request to robot-b's fc94 address
every 10 ms (send errors, e.g. before hnet0 exists, are ignored); then both daemons are started at once and
the time from their start to the first echo reply is taken. The daemons' log timestamps split that time
into phases (interpreter and imports, privileged set-up, privilege drop, data plane running, peer up,
control API ready). Baselines, same run, same machine: ``python -c pass`` (the interpreter's own start-up)
and two wireguard-go processes configured with ``wg``/``ip`` from their start to the first echo reply
across the tunnel. With ``--baseline-tree DIR`` (a copy of another version's ``husarnet_ros`` package,
e.g. ``git archive OLD husarnet_ros | tar -x -C DIR``) that version runs too, interleaved, as a before/after
in the same run. ``--user`` is passed on to the daemons (the account they switch to). Reports median and
min-max over the runs, and the ratios. Never gates CI.

``--probe ADDRESS`` is the prober itself (run inside a namespace by the benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
# The working tree's code is what is measured, also when an older copy is pip-installed in the venv.
sys.path.insert(0, str(REPO))

from other_version import TreeDaemon, checked_tree  # noqa: E402  (bench/, next to this file)

from husarnet_ros.core.address import format_address  # noqa: E402
from husarnet_ros.core.identity import Identity  # noqa: E402
from husarnet_ros.core.whitelist import Whitelist  # noqa: E402
from husarnet_ros.daemon.state import StateDir  # noqa: E402
from husarnet_ros.fileio import atomic_write_text  # noqa: E402
from husarnet_ros.testing.netlab import Host, Lab, cleanup_stale, netns_supported  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "startup.json"
PROBE_INTERVAL_S = 0.01
PROBE_TIMEOUT_S = 20.0
WIREGUARD_PORT = 51820
WIREGUARD_INNER = ("198.19.0.1", "198.19.0.2")  # inside 198.18.0.0/15, apart from the underlay /24
PYTHON_PASS_RUNS = 10

# Daemon log lines that end a phase (message prefix -> phase name), in the order they happen.
PHASES = (
    ("starting", "imports"),
    ("interface ", "privileged_setup"),
    ("all capabilities dropped", "privileges_dropped"),
    ("data plane running", "dataplane_running"),
    ("peer ", "peer_up"),
    ("ready; control API", "control_api_ready"),
)


def progress(message: str) -> None:
    print(f"[startup] {message}", file=sys.stderr, flush=True)


# --- the prober (runs inside a namespace) -------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_request(v6: bool, ident: int, seq: int) -> bytes:
    if v6:  # the kernel fills in the ICMPv6 checksum (IPV6_CHECKSUM is on for raw ICMPv6 sockets)
        return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"startup"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"startup"
    return struct.pack("!BBHHH", 8, 0, _checksum(header), ident, seq) + b"startup"


def _is_echo_reply(v6: bool, data: bytes, ident: int) -> bool:
    if not v6:
        data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets deliver the IP header too
    if len(data) < 8:
        return False
    kind, _code, _sum, got_ident = struct.unpack("!BBHH", data[:6])
    return bool(kind == (129 if v6 else 0) and got_ident == ident)


def probe(address: str, interval: float, timeout: float) -> int:
    """Echo requests to ``address`` every ``interval`` until one is answered; prints one JSON line."""
    v6 = ":" in address
    sock = socket.socket(
        socket.AF_INET6 if v6 else socket.AF_INET,
        socket.SOCK_RAW,
        socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP,
    )
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    target = (address, 0, 0, 0) if v6 else (address, 0)
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    seq, next_send, first_sent = 0, 0.0, None
    while (now := time.monotonic()) < deadline:
        if now >= next_send:
            seq += 1
            try:
                sock.sendto(_echo_request(v6, ident, seq & 0xFFFF), target)
                first_sent = first_sent or time.time()
            except OSError:
                pass  # no route yet (the tunnel interface is not up)
            next_send = now + interval
        readable, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - now))
        while readable:
            try:
                data, _ = sock.recvfrom(65535)
            except BlockingIOError:
                break
            if _is_echo_reply(v6, data, ident):
                print(json.dumps({"first_reply": time.time(), "first_sent": first_sent, "sent": seq}))
                return 0
    print(json.dumps({"first_reply": None, "first_sent": first_sent, "sent": seq}))
    return 1


class Prober:
    """``--probe`` running in ``host``: started (and ready) before the tunnels it measures."""

    def __init__(self, host: Host, address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--probe", address, "--timeout", f"{timeout}"]
        self._process = host.popen(argv, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        ready = self._process.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"the prober did not start: {ready!r}")
        self._timeout = timeout

    def first_reply(self) -> float | None:
        """time.time() of the first echo reply (None: none within the timeout)."""
        out, _ = self._process.communicate(timeout=self._timeout + 10)
        answer: float | None = json.loads(out.strip().splitlines()[-1])["first_reply"]
        return answer


# --- the daemons' log ---------------------------------------------------------------------------------------


def _log_time(line: str) -> float | None:
    """time.time() of a line in the daemon's log format ('2026-11-27 10:00:00,123 INFO ...')."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def phases_from_log(text: str, started: float) -> dict[str, float]:
    """Seconds from ``started`` to the first log line of each phase."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        at = _log_time(line)
        if at is None:
            continue
        message = line.split(": ", 1)[1] if ": " in line else ""
        for prefix, name in PHASES:
            if name not in found and message.startswith(prefix):
                found[name] = at - started
    return found


# --- one run of each ----------------------------------------------------------------------------------------


def prepare_daemons(a_host: Host, b_host: Host, extra_args: list[str]) -> tuple[TreeDaemon, TreeDaemon, str]:
    """Two daemons with their identities made and each on the other's whitelist; robot-b's address."""
    daemons = (
        cast(TreeDaemon, TreeDaemon.create(a_host, "robot-a", extra_args=extra_args)),
        cast(TreeDaemon, TreeDaemon.create(b_host, "robot-b", extra_args=extra_args)),
    )
    identities = [Identity.generate() for _ in daemons]
    for daemon, own, other in zip(daemons, identities, reversed(identities), strict=True):
        state = StateDir(daemon.state_dir)
        state.save_identity(own)
        state.save_whitelist(Whitelist([other.address]))
    return daemons[0], daemons[1], format_address(identities[1].address)


def husarnet_ros_run(
    a_host: Host, a: TreeDaemon, b: TreeDaemon, b_address: str, tree: Path | None = None
) -> dict[str, Any]:
    a.tree = b.tree = tree
    prober = Prober(a_host, b_address)
    offsets = [daemon.log_path.stat().st_size if daemon.log_path.exists() else 0 for daemon in (a, b)]
    started = time.time()
    try:
        a.start(wait_ready=False)
        b.start(wait_ready=False)
        replied = prober.first_reply()
        # Let the control API finish starting, for its phase (it is not on the way to the first packet).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(d.control_socket.exists() for d in (a, b)):
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        for daemon in (a, b):
            daemon.stop()
    phases = {}
    for name, daemon, offset in (("robot-a", a, offsets[0]), ("robot-b", b, offsets[1])):
        with open(daemon.log_path, errors="replace") as log:
            log.seek(offset)
            phases[name] = phases_from_log(log.read(), started)
    return {"first_reply_s": None if replied is None else replied - started, "phases": phases}


def wireguard_run(a_host: Host, b_host: Host, lab: Lab, workdir: Path, run: int) -> dict[str, Any]:
    """Two wireguard-go processes, configured as a script would, from their start to the first reply."""
    hosts = (a_host, b_host)
    names = [f"{lab.prefix}w{i}" for i in range(2)]
    keys = []
    for i, host in enumerate(hosts):
        private = host.run(["wg", "genkey"]).stdout.strip()
        public = host.run(["wg", "pubkey"], input=private + "\n").stdout.strip()
        key_file = workdir / f"wg{i}.key"
        atomic_write_text(key_file, private + "\n", mode=0o600)
        keys.append((key_file, public))
    prober = Prober(a_host, WIREGUARD_INNER[1])
    env = os.environ | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
    processes = []
    started = time.time()
    try:
        for host, name in zip(hosts, names, strict=True):
            processes.append(host.popen(["wireguard-go", name], env=env, stdout=subprocess.DEVNULL))
        # The responder first: an init that reaches a wireguard-go not configured yet is retried only 5 s
        # later, which would measure wireguard-go's retry timer instead of its start-up.
        for i in (1, 0):
            host, name = hosts[i], names[i]
            host.wait_interface(name)
            host.run(
                ["wg", "set", name, "listen-port", str(WIREGUARD_PORT), "private-key", str(keys[i][0]),
                 "peer", keys[1 - i][1], "allowed-ips", f"{WIREGUARD_INNER[1 - i]}/32",
                 "endpoint", f"{hosts[1 - i].ipv4}:{WIREGUARD_PORT}"]
            )  # fmt: skip
            host.run(["ip", "addr", "add", f"{WIREGUARD_INNER[i]}/24", "dev", name])
            host.run(["ip", "link", "set", name, "up"])
        replied = prober.first_reply()
    finally:
        for process in processes:
            Lab.stop_process(process)
    return {"first_reply_s": None if replied is None else replied - started, "run": run}


def python_pass_s() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


# --- summary ------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    def firsts(runs: list[dict[str, Any]]) -> list[float]:
        return [r["first_reply_s"] for r in runs if r["first_reply_s"] is not None]

    summary: dict[str, Any] = {
        "husarnet_ros": spread(firsts(results["husarnet_ros"])),
        "baseline_tree": spread(firsts(results["baseline_tree"])),
        "wireguard_go": spread(firsts(results["wireguard_go"])),
        "python_pass": spread(results["python_pass"]),
        "phases": {},
    }
    for version in ("husarnet_ros", "baseline_tree"):
        summary["phases"][version] = {
            robot: {
                name: spread(
                    [r["phases"][robot][name] for r in results[version] if name in r["phases"][robot]]
                )
                for _, name in PHASES
            }
            for robot in ("robot-a", "robot-b")
        }
    ours = summary["husarnet_ros"]["median"]
    for baseline in ("wireguard_go", "python_pass", "baseline_tree"):
        theirs = summary[baseline]["median"]
        summary[f"ratio_vs_{baseline}"] = ours / theirs if ours and theirs else None
    return summary


def _fmt(stats: dict[str, Any]) -> str:
    if stats["median"] is None:
        return "-"
    return f"{stats['median']:.3f} ({stats['min']:.3f}-{stats['max']:.3f})"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| what | seconds, median (min-max) | runs |",
        "|---|---:|---:|",
        f"| husarnet_ros: both daemons started → first ping answered | {_fmt(summary['husarnet_ros'])} "
        f"| {summary['husarnet_ros']['n']} |",
        "| wireguard-go: both started and configured → first ping answered "
        f"| {_fmt(summary['wireguard_go'])} "
        f"| {summary['wireguard_go']['n']} |",
        f"| python -c pass | {_fmt(summary['python_pass'])} | {summary['python_pass']['n']} |",
        "| baseline tree (--baseline-tree): started → first ping answered "
        f"| {_fmt(summary['baseline_tree'])} | {summary['baseline_tree']['n']} |",
        "",
        "| ratio (medians) | |",
        "|---|---:|",
    ]
    for baseline in ("wireguard_go", "python_pass", "baseline_tree"):
        ratio = summary[f"ratio_vs_{baseline}"]
        lines.append(f"| husarnet_ros / {baseline} | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    for version in ("husarnet_ros", "baseline_tree"):
        if not summary[version]["n"]:
            continue
        lines += ["", f"| {version}: phase ends (s from start) | robot-a | robot-b |", "|---|---:|---:|"]
        for _, name in PHASES:
            cells = [_fmt(summary["phases"][version][robot][name]) for robot in ("robot-a", "robot-b")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def measure(
    runs: int,
    skip_wireguard: bool,
    extra_args: list[str],
    baseline_tree: Path | None,
    on_run: Callable[[str], None],
) -> dict[str, Any]:
    results: dict[str, Any] = {"husarnet_ros": [], "wireguard_go": [], "python_pass": [], "baseline_tree": []}
    results["python_pass"] = [python_pass_s() for _ in range(PYTHON_PASS_RUNS)]
    with Lab() as lab:
        a_host, b_host = lab.lan(2, ["robot-a", "robot-b"])
        a, b, b_address = prepare_daemons(a_host, b_host, extra_args)
        workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-startup-", dir="/tmp"))
        try:
            for run in range(runs):  # interleaved, so both see the same machine load
                if not skip_wireguard:
                    results["wireguard_go"].append(wireguard_run(a_host, b_host, lab, workdir, run))
                    on_run(f"wireguard-go run {run + 1}: {results['wireguard_go'][-1]['first_reply_s']}")
                if baseline_tree is not None:
                    results["baseline_tree"].append(husarnet_ros_run(a_host, a, b, b_address, baseline_tree))
                    on_run(f"baseline tree run {run + 1}: {results['baseline_tree'][-1]['first_reply_s']}")
                results["husarnet_ros"].append(husarnet_ros_run(a_host, a, b, b_address))
                on_run(f"husarnet_ros run {run + 1}: {results['husarnet_ros'][-1]['first_reply_s']}")
        finally:
            for daemon in (a, b):
                daemon.stop()
                daemon.remove_files()
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-wireguard", action="store_true")
    parser.add_argument("--user", help="the daemons' --user (default: theirs)")
    parser.add_argument("--baseline-tree", type=Path, help="directory holding another version's husarnet_ros")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--md-out", type=Path)
    parser.add_argument("--probe", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_S, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe(args.probe, PROBE_INTERVAL_S, args.timeout)
    reason = netns_supported()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    cleanup_stale()
    extra_args = [] if args.user is None else ["--user", args.user]
    try:
        baseline_tree = checked_tree(args.baseline_tree)
    except ValueError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    results = measure(max(1, args.runs), args.skip_wireguard, extra_args, baseline_tree, progress)
    summary = summarize(results)
    meta = {
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "when": time.time(),
        "daemon_args": extra_args,
        "baseline_tree": str(baseline_tree) if baseline_tree else None,
    }
    document = {"meta": meta, "summary": summary, "runs": results}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json_out, json.dumps(document, indent=2) + "\n")
    text = markdown(summary)
    if args.md_out:
        atomic_write_text(args.md_out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
