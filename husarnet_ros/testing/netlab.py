"""Network-namespace lab for integration tests, benchmarks and the demo.

A :class:`Lab` builds small, isolated networks out of network namespaces:

* ``lab.lan(n)`` — a switch namespace holding a Linux bridge and ``n`` host
  namespaces, each joined to the bridge by a veth pair (a LAN with working multicast);
* ``lab.pair()`` — two host namespaces joined directly by one veth pair.

Every interface is created directly inside a namespace of the lab, so the root
namespace is never touched, and deleting the lab's namespaces removes everything.
Names carry a per-run prefix (``hr`` + 6 hex digits) so parallel runs never collide,
and an owner file under :data:`OWNER_DIR` lets :func:`cleanup_stale` remove what a
crashed run of ours left behind — and nothing else.

This is test tooling: unlike the product it shells out to ``ip``, ``nft`` and
``sysctl``. Every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from husarnet_ros.core.constants import DISCOVERY_GROUP_V4, DISCOVERY_GROUP_V6, DISCOVERY_PORT
from husarnet_ros.core.errors import HusarnetError

# Underlay addressing allowed by the project's network rule: 198.18.0.0/15 and fd00:98::/64.
LAN_V4_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
LAN_V6_NETWORK = ipaddress.IPv6Network("fd00:98::/64")
HOST_ADDRESS_OFFSET = 10  # host i gets 198.18.0.(10+i) and fd00:98::(10+i)
HOST_IFNAME = "eth0"
BRIDGE_IFNAME = "br0"

PREFIX_RE = re.compile(r"^hr[0-9a-f]{6}$")
OWNER_DIR = Path("/run/husarnet-ros-netlab")
COMMAND_TIMEOUT = 30.0
PROCESS_STOP_TIMEOUT = 5.0
NFT_TABLE = "netlab_multicast"
NFT_COUNTER = "dropped"

T = TypeVar("T")


class LabError(HusarnetError):
    """The lab could not be built, used or torn down."""


class CommandFailed(LabError):
    """A command run by the lab exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip()
        super().__init__(f"command {' '.join(self.argv)!r} exited with {returncode}: {detail}")


def wait_until(
    predicate: Callable[[], T | bool | None], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Call ``predicate`` until it returns something truthy; raise :class:`LabError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def run_command(
    argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with text capture, a timeout and an error that shows stderr."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        result: subprocess.CompletedProcess[str] = subprocess.run(
            list(argv), check=False, timeout=timeout, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command {' '.join(argv)!r} did not finish within {timeout:.1f} s") from exc
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, str(result.stdout or ""), str(result.stderr or ""))
    return result


@dataclass(frozen=True)
class PingResult:
    """The summary lines of ``ping``."""

    transmitted: int
    received: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    output: str

    @property
    def ok(self) -> bool:
        return self.received > 0 and self.received == self.transmitted


_PING_COUNTS_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT_RE = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms")


def parse_ping(output: str) -> PingResult:
    """Parse iputils ``ping`` output; a missing RTT line means no reply came back."""
    counts = _PING_COUNTS_RE.search(output)
    rtt = _PING_RTT_RE.search(output)
    transmitted, received = (int(counts.group(1)), int(counts.group(2))) if counts else (0, 0)
    if rtt:
        low, avg, high = (float(rtt.group(i)) for i in (1, 2, 3))
        return PingResult(transmitted, received, low, avg, high, output=output)
    return PingResult(transmitted, received, None, None, None, output=output)


@dataclass
class Host:
    """One network namespace of the lab, with one underlay interface ``eth0``."""

    lab: Lab
    label: str
    netns: str
    ipv4: str
    ipv6: str
    ifname: str = HOST_IFNAME

    # --- running things inside the namespace ---------------------------------
    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this namespace and wait for it (bounded by ``timeout``)."""
        return run_command(self.exec_argv(argv), check=check, timeout=timeout, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this namespace; the lab stops it (by PID) on cleanup.

        ``ip netns exec`` execs the command, so the returned PID is the command itself.
        """
        return self.lab.track(subprocess.Popen(self.exec_argv(argv), **kwargs))

    # --- network helpers -------------------------------------------------------
    def ping(
        self, address: str, count: int = 3, *, interval: float = 0.2, deadline: float | None = None
    ) -> PingResult:
        """Ping ``address`` (v4 or v6) ``count`` times; never raises on packet loss."""
        bound = deadline if deadline is not None else count * interval + 2.0
        argv = [
            "ping",
            "-n",
            "-q",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "1",
            "-w",
            str(math.ceil(bound)),
        ]
        if ":" in address:
            argv.insert(1, "-6")
        result = self.run([*argv, address], check=False, timeout=bound + 10.0)
        return parse_ping(result.stdout + result.stderr)

    def ping6(self, address: str, count: int = 3, **kwargs: Any) -> PingResult:
        """Ping an IPv6 address; a link-local ``fe80::`` address gets this host's interface as scope."""
        if address.lower().startswith("fe80:") and "%" not in address:
            address = f"{address}%{self.ifname}"
        return self.ping(address, count, **kwargs)

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a sysctl of this namespace (``net.*`` keys are per namespace)."""
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def read_sysctl(self, key: str) -> str:
        return self.run(["sysctl", "-n", key]).stdout.strip()

    def addresses(self, family: int = 6, scope: str | None = None) -> list[dict[str, Any]]:
        """``ip -j addr`` entries of ``eth0`` for the given family (4 or 6)."""
        argv = ["ip", "-j", f"-{family}", "addr", "show", "dev", self.ifname]
        if scope:
            argv += ["scope", scope]
        data = json.loads(self.run(argv).stdout or "[]")
        # iproute2 prints an empty object for each address its filter left out.
        return [info for link in data for info in link.get("addr_info", []) if "local" in info]

    def link_local(self, timeout: float = 5.0) -> str:
        """The usable (non-tentative) IPv6 link-local address of ``eth0``."""

        def ready() -> str | None:
            for info in self.addresses(6, "link"):
                if not info.get("tentative"):
                    return str(info["local"])
            return None

        return wait_until(ready, timeout, what=f"an IPv6 link-local address on {self.netns}/{self.ifname}")

    def interface_exists(self, ifname: str) -> bool:
        return self.run(["ip", "link", "show", "dev", ifname], check=False).returncode == 0

    def wait_interface(self, ifname: str, timeout: float = 10.0) -> None:
        wait_until(lambda: self.interface_exists(ifname), timeout, what=f"interface {ifname} in {self.netns}")

    def tcp_listening(self, port: int) -> bool:
        out = self.run(["ss", "-H", "-l", "-t", "-n", f"sport = :{port}"], check=False).stdout
        return bool(out.strip())

    # --- multicast filtering (nftables) ---------------------------------------
    def drop_multicast(self, *, keep_discovery: bool = True) -> None:
        """Drop IPv4 and IPv6 multicast in and out of ``eth0``, counting what is dropped.

        ICMPv6 (neighbour discovery, MLD) and IGMP stay allowed so that the underlay keeps
        working; with ``keep_discovery`` the daemon's own LAN beacons (UDP to the discovery
        groups) pass too, so daemons still find each other while, say, DDS multicast cannot
        leak onto the underlay.
        """
        allow: list[str] = ["meta l4proto icmpv6 accept", "ip protocol igmp accept"]
        if keep_discovery:
            allow += [
                f"ip daddr {DISCOVERY_GROUP_V4} udp dport {DISCOVERY_PORT} accept",
                f"ip6 daddr {DISCOVERY_GROUP_V6} udp dport {DISCOVERY_PORT} accept",
            ]
        drop = [
            f'ip daddr 224.0.0.0/4 counter name "{NFT_COUNTER}" drop',
            f'ip6 daddr ff00::/8 counter name "{NFT_COUNTER}" drop',
        ]

        def chain(name: str, hook: str, match: str) -> str:
            rules = "\n".join(f'    {match} "{self.ifname}" {rule}' for rule in (*allow, *drop))
            header = f"type filter hook {hook} priority filter; policy accept;"
            return f"  chain {name} {{\n    {header}\n{rules}\n  }}"

        ruleset = (
            f"table inet {NFT_TABLE} {{\n  counter {NFT_COUNTER} {{ }}\n"
            f"{chain('inbound', 'input', 'iifname')}\n{chain('outbound', 'output', 'oifname')}\n}}\n"
        )
        self.allow_multicast()
        self.run(["nft", "-f", "-"], input=ruleset)

    def allow_multicast(self) -> None:
        """Remove the table installed by :meth:`drop_multicast` (no-op if absent)."""
        if self.run(["nft", "list", "table", "inet", NFT_TABLE], check=False).returncode == 0:
            self.run(["nft", "delete", "table", "inet", NFT_TABLE])

    def multicast_drop_count(self) -> int:
        """Packets dropped so far by :meth:`drop_multicast`."""
        out = self.run(["nft", "-j", "list", "counter", "inet", NFT_TABLE, NFT_COUNTER]).stdout
        for item in json.loads(out).get("nftables", []):
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise LabError(f"no nftables counter {NFT_COUNTER} in {self.netns}")


@dataclass
class Switch:
    """The namespace holding a LAN's bridge."""

    netns: str
    bridge: str = BRIDGE_IFNAME
    ports: list[str] = field(default_factory=list)


def _process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of stat), to tell PID reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(owner_file: Path) -> bool:
    try:
        owner = json.loads(owner_file.read_text())
        return _process_start_time(int(owner["pid"])) == str(owner["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_netns() -> list[str]:
    out = run_command(["ip", "-j", "netns", "list"]).stdout.strip()
    return [str(item["name"]) for item in json.loads(out or "[]")]


class Lab:
    """Namespaces, veths and processes of one run; everything is removed on exit.

    Use as a context manager::

        with Lab() as lab:
            a, b, c = lab.lan(3)
            assert a.ping(b.ipv4).ok
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"hr{secrets.token_hex(3)}"
        if not PREFIX_RE.match(self.prefix):
            raise LabError(f"lab prefix {self.prefix!r} must look like 'hr' + 6 lowercase hex digits")
        self.namespaces: list[str] = []
        self.switches: list[Switch] = []
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self._owner_file = OWNER_DIR / self.prefix
        self._closed = False
        self._write_owner_file()

    # --- context manager --------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- building ---------------------------------------------------------------
    def _write_owner_file(self) -> None:
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "start_time": _process_start_time(os.getpid())}
        self._owner_file.write_text(json.dumps(owner))

    def _add_netns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        if len(name) > 15:
            raise LabError(f"namespace name {name!r} is longer than 15 characters")
        run_command(["ip", "netns", "add", name])
        self.namespaces.append(name)
        ns_run = ["ip", "netns", "exec", name]
        run_command([*ns_run, "ip", "link", "set", "lo", "up"])
        # No duplicate address detection: link-local addresses are usable at once, which
        # keeps waits short; the lab assigns unique addresses anyway.
        for conf in ("all", "default"):
            run_command([*ns_run, "sysctl", "-q", "-w", f"net.ipv6.conf.{conf}.accept_dad=0"])
        return name

    def _new_host(self, label: str | None) -> Host:
        index = sum(1 for name in self.namespaces if name.startswith(f"{self.prefix}-h"))
        netns = self._add_netns(f"h{index}")
        return Host(self, label or f"h{index}", netns, ipv4="", ipv6="")

    def _configure_underlay(self, host: Host, position: int) -> None:
        host.ipv4 = str(LAN_V4_NETWORK.network_address + HOST_ADDRESS_OFFSET + position)
        host.ipv6 = str(LAN_V6_NETWORK.network_address + HOST_ADDRESS_OFFSET + position)
        host.run(["ip", "addr", "add", f"{host.ipv4}/{LAN_V4_NETWORK.prefixlen}", "dev", host.ifname])
        host.run(f"ip -6 addr add {host.ipv6}/{LAN_V6_NETWORK.prefixlen} dev {host.ifname} nodad".split())
        host.run(["ip", "link", "set", host.ifname, "up"])
        # Without a default route a host has no route for multicast; real robots have one.
        host.run(["ip", "route", "add", "224.0.0.0/4", "dev", host.ifname])
        self.hosts.append(host)

    def lan(self, count: int, labels: Sequence[str] | None = None) -> list[Host]:
        """A switch namespace with a bridge and ``count`` hosts on it; host i is 198.18.0.(10+i)."""
        if not 1 <= count <= 200:
            raise LabError(f"a LAN has 1..200 hosts, not {count}")
        if labels is not None and len(labels) != count:
            raise LabError(f"{count} hosts need {count} labels, got {len(labels)}")
        switch = Switch(self._add_netns(f"s{len(self.switches)}"))
        self.switches.append(switch)
        sw = ["ip", "-n", switch.netns]
        # Snooping off: the bridge floods every multicast group to every port, like a dumb switch.
        bridge_options = ["mcast_snooping", "0", "forward_delay", "0", "stp_state", "0"]
        run_command([*sw, "link", "add", switch.bridge, "type", "bridge", *bridge_options])
        run_command([*sw, "link", "set", switch.bridge, "up"])
        hosts = []
        for position in range(count):
            host = self._new_host(labels[position] if labels else None)
            port = f"p{position}"
            run_command(
                [*sw, *f"link add {port} type veth peer name {host.ifname} netns {host.netns}".split()]
            )
            run_command([*sw, "link", "set", port, "master", switch.bridge])
            run_command([*sw, "link", "set", port, "up"])
            switch.ports.append(port)
            self._configure_underlay(host, position)
            hosts.append(host)
        if self.multicast_snooping(switch):
            raise LabError(f"multicast snooping is still on in {switch.netns}; multicast would not flood")
        return hosts

    def pair(self, labels: Sequence[str] | None = None) -> tuple[Host, Host]:
        """Two hosts joined directly by one veth pair (198.18.0.10 and .11)."""
        if labels is not None and len(labels) != 2:
            raise LabError(f"a pair needs 2 labels, got {len(labels)}")
        a = self._new_host(labels[0] if labels else None)
        b = self._new_host(labels[1] if labels else None)
        run_command(
            f"ip -n {a.netns} link add {a.ifname} type veth peer name {b.ifname} netns {b.netns}".split()
        )
        self._configure_underlay(a, 0)
        self._configure_underlay(b, 1)
        return a, b

    @staticmethod
    def multicast_snooping(switch: Switch) -> bool:
        out = run_command(["ip", "-n", switch.netns, "-j", "-d", "link", "show", "dev", switch.bridge]).stdout
        info = json.loads(out)[0].get("linkinfo", {}).get("info_data", {})
        return bool(info.get("mcast_snooping", True))

    # --- processes ----------------------------------------------------------------
    def track(self, process: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.processes.append(process)
        return process

    @staticmethod
    def stop_process(process: subprocess.Popen[Any], timeout: float = PROCESS_STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status (None if it would not die)."""
        if process.poll() is not None:
            return process.returncode
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    # --- teardown -----------------------------------------------------------------
    def close(self) -> None:
        """Stop our processes, delete our namespaces (and with them every interface). Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for process in reversed(self.processes):
            if self.stop_process(process) is None:
                errors.append(f"process {process.pid} did not exit")
        for name in reversed(self.namespaces):
            try:
                _delete_netns(name)
            except LabError as exc:
                errors.append(str(exc))
        with contextlib.suppress(FileNotFoundError):
            self._owner_file.unlink()
        if errors:
            raise LabError("lab cleanup incomplete: " + "; ".join(errors))


def _delete_netns(name: str) -> None:
    """Kill what still runs in namespace ``name`` (ours: the lab created it), then delete it.

    A process left in the namespace (say, a child that forked away) would keep the
    namespace and its interfaces alive after ``ip netns del``.
    """
    if name not in list_netns():
        return
    pids = run_command(["ip", "netns", "pids", name], check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
        if not pids:
            break
        deadline = time.monotonic() + PROCESS_STOP_TIMEOUT / 2
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
            time.sleep(0.05)
    run_command(["ip", "netns", "del", name])


def stale_prefixes(prefix_pattern: str = PREFIX_RE.pattern) -> list[str]:
    """Prefixes of lab runs whose owner process is gone (namespaces or owner file still present)."""
    pattern = re.compile(prefix_pattern)
    candidates = {name.split("-", 1)[0] for name in list_netns() if "-" in name}
    if OWNER_DIR.is_dir():
        candidates |= {path.name for path in OWNER_DIR.iterdir()}
    stale = []
    for prefix in sorted(candidates):
        # Only runs of ours: the prefix format matches and we wrote an owner file for it.
        # A namespace with no owner file is not provably ours, so it is left alone.
        owner_file = OWNER_DIR / prefix
        ours = bool(pattern.match(prefix) and PREFIX_RE.match(prefix)) and owner_file.exists()
        if ours and not _owner_alive(owner_file):
            stale.append(prefix)
    return stale


def cleanup_stale(prefix_pattern: str = PREFIX_RE.pattern) -> list[str]:
    """Remove the namespaces (and owner files) of crashed lab runs; returns the prefixes removed.

    Runs still alive — including other test sessions running in parallel — are never touched.
    """
    removed = []
    for prefix in stale_prefixes(prefix_pattern):
        for name in list_netns():
            if name.startswith(f"{prefix}-"):
                _delete_netns(name)
        wg_sockets = Path("/var/run/wireguard")
        if wg_sockets.is_dir():
            for sock in wg_sockets.glob(f"{prefix}*.sock"):
                sock.unlink(missing_ok=True)
        (OWNER_DIR / prefix).unlink(missing_ok=True)
        removed.append(prefix)
    return removed


def netns_supported() -> str | None:
    """None if this process can create network namespaces, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, TUN)"
    try:
        probe = f"hr{secrets.token_hex(3)}-probe"
        run_command(["ip", "netns", "add", probe], timeout=10.0)
        run_command(["ip", "netns", "del", probe], timeout=10.0)
    except (LabError, OSError) as exc:
        return f"`ip netns` does not work here: {exc}"
    return None


@contextlib.contextmanager
def fresh_lab() -> Iterator[Lab]:
    """``with Lab() as lab`` that first removes leftovers of crashed runs of ours."""
    cleanup_stale()
    with Lab() as new_lab:
        yield new_lab
