"""Base-server benchmark: registrations per second and memory per registered client, against a real
``husarnet-ros base-server`` process on loopback, with a trivial Python UDP echo server as the floor.

    python bench/base_server.py [--runs N] [--clients N] [--window N] [--json-out PATH] [--md-out PATH]

One client process drives everything with non-blocking sockets, one per identity: identity i always
registers from its own 127.x.y.z address (all of 127.0.0.0/8 is loopback), so the base server's per-host rate
limiter (20 messages/s, burst 10) sees one host per client, as on the internet, and limits nobody. A
registration is the whole exchange a daemon makes: hello -> challenge (cookie) -> signed registration ->
welcome. At most ``--window`` exchanges are in flight; one unanswered for a second starts over with a hello
(counted as a retry; the server's drop counters are kept in the JSON).

Per run, against a fresh base server: its RSS (``VmRSS``) with 0 clients, then the identity pool registered
in steps (fresh registrations: addresses the base has not seen), the RSS after each step, then every
identity registered once more (refreshes: the same address again, from the same endpoint). Reported:
registrations/s, the server's CPU seconds per 1000 registrations (utime+stime from /proc), and KiB per
registered client (least-squares slope of RSS over clients). Baseline, same run, same driver: a Python echo
server (recvfrom/sendto in a loop) answering the same two round trips with datagrams of the same sizes, so
"exchanges/s" is the Python socket floor the base server's registrations/s is compared with. The client's
own CPU (signing the registrations) is reported too: when it is near 1 s per s, the client was the limit.

Identities pass a proof of work (~30 ms each), so the pool is made once (on every core) and kept in
bench/results/base-server-identities.txt (one Ed25519 seed per line). Never gates CI.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This checkout's husarnet_ros, not a copy installed in the venv.
sys.path.insert(0, str(REPO))

from report import spread  # noqa: E402

from husarnet_ros.core import basewire  # noqa: E402
from husarnet_ros.core.identity import Identity  # noqa: E402
from husarnet_ros.fileio import atomic_write_text  # noqa: E402
from husarnet_ros.testing.lab_daemon import husarnet_ros_command, husarnet_ros_env  # noqa: E402
from husarnet_ros.testing.netlab import Lab  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "base_server.json"
IDENTITY_CACHE = REPO / "bench" / "results" / "base-server-identities.txt"
LOOPBACK = "127.0.0.1"
SOURCE_NETWORK = ipaddress.IPv4Network("127.64.0.0/16")  # one address per simulated source host
EXCHANGE_TIMEOUT_S = 1.0  # an exchange unanswered this long starts over with a hello
PHASE_TIMEOUT_S = 60.0  # a phase that takes longer than this is cut short (and says so)
SERVER_START_TIMEOUT_S = 15.0
ECHO_LIFETIME_S = 600.0  # the echo server exits by itself after this long
REGISTER_SIZE_WITH_ONE_ENDPOINT = 4 + 4 + 32 + 32 + 1 + 7 + 64  # what the echo baseline sends second
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
EN_DASH = "\u2013"  # between the min and max of a range


def progress(message: str) -> None:
    print(f"[base_server] {message}", file=sys.stderr, flush=True)


# --- identities ---------------------------------------------------------------------------------------------


def _one_seed(_: int) -> str:
    return bytes(Identity.generate().signing_key).hex()


def identity_pool(count: int, cache: Path) -> list[Identity]:
    """``count`` identities, from the cache file, generating (and saving) the ones missing."""
    seeds = cache.read_text().split() if cache.exists() else []
    missing = count - len(seeds)
    if missing > 0:
        progress(f"generating {missing} identities (proof of work, once; cached in {cache})")
        started = time.monotonic()
        with multiprocessing.Pool(os.cpu_count() or 1) as pool:
            seeds += pool.map(_one_seed, range(missing), chunksize=64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, "\n".join(seeds) + "\n")
        progress(f"generated in {time.monotonic() - started:.0f} s")
    return [Identity.from_seed(bytes.fromhex(seed)) for seed in seeds[:count]]


# --- processes ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15 of stat, after the command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def echo_server(lifetime: float) -> int:
    """The baseline: answer every datagram with itself, nothing else. Prints its port, exits after
    ``lifetime`` seconds (or when stdin closes: the benchmark went away)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)  # as the base server's
    sock.bind((LOOPBACK, 0))
    print(sock.getsockname()[1], flush=True)
    sock.settimeout(1.0)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        try:
            data, source = sock.recvfrom(2048)
        except TimeoutError:
            continue
        sock.sendto(data, source)
    return 0


@dataclass
class Server:
    """A server process on loopback: its pid and UDP port."""

    process: subprocess.Popen[Any]
    port: int
    status_file: Path | None = None

    def clients(self) -> int:
        assert self.status_file is not None
        try:
            return int(json.loads(self.status_file.read_text())["clients"])
        except (OSError, ValueError, KeyError):
            return -1

    def counters(self) -> dict[str, int]:
        assert self.status_file is not None
        return dict(json.loads(self.status_file.read_text())["counters"])

    def stop(self) -> None:
        Lab.stop_process(self.process)


def start_echo() -> Server:
    argv = [sys.executable, str(Path(__file__).resolve()), "--echo-server"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return Server(process, int(process.stdout.readline()))


def start_base(workdir: Path, max_clients: int) -> Server:
    status_file = workdir / "status.json"
    status_file.unlink(missing_ok=True)
    argv = [*husarnet_ros_command(), "base-server", "--listen", LOOPBACK, "--udp-port", "0", "--no-tcp"]
    argv += ["--max-clients", str(max_clients), "--status-file", str(status_file)]
    argv += ["--status-interval", "0.2", "--log-level", "warning"]
    with (workdir / "base-server.log").open("a") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=husarnet_ros_env())
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not status_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            Lab.stop_process(process)
            raise RuntimeError(f"the base server did not start; see {workdir / 'base-server.log'}")
        time.sleep(0.05)
    port = int(json.loads(status_file.read_text())["udp_port"])
    return Server(process, port, status_file)


# --- the driver ---------------------------------------------------------------------------------------------


class Exchange:
    """What one job sends: ``first`` to start, then ``answer(reply)`` -> the next datagram, or None when the
    job is done (or the reply is not the one expected: ``done`` says which)."""

    def first(self, job: int, source: tuple[str, int]) -> bytes:
        raise NotImplementedError

    def answer(self, job: int, source: tuple[str, int], reply: bytes) -> tuple[bytes | None, bool]:
        raise NotImplementedError


class Registration(Exchange):
    def __init__(self, identities: Sequence[Identity]) -> None:
        self.identities = identities

    def first(self, job: int, source: tuple[str, int]) -> bytes:
        return basewire.encode_hello()

    def answer(self, job: int, source: tuple[str, int], reply: bytes) -> tuple[bytes | None, bool]:
        if reply[:1] == bytes([basewire.MSG_BASE_CHALLENGE]):
            challenge = basewire.decode_challenge(reply)
            identity = self.identities[job]
            message = basewire.Register(challenge.epoch, challenge.cookie, identity.public_key, [source])
            signed = message.signed_part()
            return signed + identity.sign(basewire.REGISTER_CONTEXT + signed), False
        return None, reply[:1] == bytes([basewire.MSG_BASE_WELCOME])


class Echo(Exchange):
    """Two round trips of the sizes of a hello and a registration, answered by the echo server."""

    def first(self, job: int, source: tuple[str, int]) -> bytes:
        return b"\x10".ljust(basewire.HELLO_SIZE, b"\0")

    def answer(self, job: int, source: tuple[str, int], reply: bytes) -> tuple[bytes | None, bool]:
        if reply[:1] == b"\x10":
            return b"\x12".ljust(REGISTER_SIZE_WITH_ONE_ENDPOINT, b"\0"), False
        return None, reply[:1] == b"\x12"


@dataclass
class Source:
    """One simulated source host: a socket on its own loopback address."""

    sock: socket.socket
    endpoint: tuple[str, int]


@dataclass
class PhaseResult:
    jobs: int
    done: int
    seconds: float
    retries: int
    server_cpu_s: float
    client_cpu_s: float
    timed_out: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


class Driver:
    """One UDP socket per identity, each on its own loopback address (identity i always registers from
    source i, as a daemon does), and at most ``window`` exchanges in flight against one server."""

    def __init__(self, sources: int, window: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.sources: list[Source] = []
        self.window = window
        hosts = SOURCE_NETWORK.hosts()
        for index in range(sources):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((str(next(hosts)), 0))
            self.sources.append(Source(sock, sock.getsockname()))
            self.selector.register(sock, selectors.EVENT_READ, index)

    def close(self) -> None:
        for source in self.sources:
            self.selector.unregister(source.sock)
            source.sock.close()
        self.selector.close()

    def drain(self) -> None:
        """Throw away late answers of an earlier phase."""
        for source in self.sources:
            while True:
                try:
                    source.sock.recv(2048)
                except BlockingIOError:
                    break

    def run(self, exchange: Exchange, jobs: Sequence[int], port: int, server_pid: int) -> PhaseResult:
        """Every job (an index into the sources) once through ``exchange``."""
        target = (LOOPBACK, port)
        queue = list(reversed(jobs))
        in_flight: dict[int, float] = {}  # job -> when its exchange (last) started
        done = retries = 0
        cpu_before, client_before = cpu_seconds(server_pid), time.process_time()
        started = time.monotonic()
        deadline = started + PHASE_TIMEOUT_S

        def begin(job: int, now: float) -> None:
            in_flight[job] = now
            source = self.sources[job]
            source.sock.sendto(exchange.first(job, source.endpoint), target)

        while queue and len(in_flight) < self.window:
            begin(queue.pop(), started)
        next_check = started + EXCHANGE_TIMEOUT_S
        while in_flight and (now := time.monotonic()) < deadline:
            for key, _ in self.selector.select(timeout=0.1):
                job: int = key.data
                source = self.sources[job]
                while True:
                    try:
                        reply = source.sock.recv(2048)
                    except BlockingIOError:
                        break
                    if job not in in_flight:
                        continue  # a late answer to a finished job
                    following, finished = exchange.answer(job, source.endpoint, reply)
                    if following is not None:
                        source.sock.sendto(following, target)
                    elif finished:
                        done += 1
                        del in_flight[job]
                        if queue:
                            begin(queue.pop(), time.monotonic())
            if now >= next_check:  # lost or refused datagrams: start those exchanges over
                for job, since in list(in_flight.items()):
                    if now - since > EXCHANGE_TIMEOUT_S:
                        retries += 1
                        begin(job, now)
                next_check = now + EXCHANGE_TIMEOUT_S / 4
        seconds = time.monotonic() - started
        return PhaseResult(
            jobs=len(jobs),
            done=done,
            seconds=seconds,
            retries=retries,
            server_cpu_s=cpu_seconds(server_pid) - cpu_before,
            client_cpu_s=time.process_time() - client_before,
            timed_out=bool(in_flight),
        )


# --- one run ------------------------------------------------------------------------------------------------


def wait_clients(server: Server, expected: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := server.clients()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def phase_record(result: PhaseResult) -> dict[str, Any]:
    per_1000 = 1000.0 / result.done if result.done else None
    return {
        "jobs": result.jobs,
        "done": result.done,
        "seconds": result.seconds,
        "per_second": result.per_second,
        "retries": result.retries,
        "timed_out": result.timed_out,
        "server_cpu_s": result.server_cpu_s,
        "server_cpu_s_per_1000": None if per_1000 is None else result.server_cpu_s * per_1000,
        "client_cpu_s_per_s": result.client_cpu_s / result.seconds if result.seconds else None,
    }


def slope(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    xs, ys = [float(x) for x, _ in points], [float(y) for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread_x = sum((x - mean_x) ** 2 for x in xs)
    if not spread_x:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread_x


def one_run(driver: Driver, identities: list[Identity], steps: list[int], workdir: Path) -> dict[str, Any]:
    jobs = list(range(len(identities)))
    record: dict[str, Any] = {}
    echo = start_echo()
    try:
        driver.drain()
        record["echo"] = phase_record(driver.run(Echo(), jobs, echo.port, echo.process.pid))
    finally:
        echo.stop()
    base = start_base(workdir, max_clients=2 * len(identities))
    try:
        time.sleep(0.3)  # settled after its imports
        memory = [(0, rss_kib(base.process.pid))]
        fresh: list[PhaseResult] = []
        registration = Registration(identities)
        driver.drain()
        for low, high in zip([0, *steps], steps, strict=False):
            fresh.append(driver.run(registration, jobs[low:high], base.port, base.process.pid))
            clients = wait_clients(base, high)
            memory.append((clients, rss_kib(base.process.pid)))
        total = PhaseResult(
            jobs=sum(r.jobs for r in fresh),
            done=sum(r.done for r in fresh),
            seconds=sum(r.seconds for r in fresh),
            retries=sum(r.retries for r in fresh),
            server_cpu_s=sum(r.server_cpu_s for r in fresh),
            client_cpu_s=sum(r.client_cpu_s for r in fresh),
            timed_out=any(r.timed_out for r in fresh),
        )
        record["fresh"] = phase_record(total)
        driver.drain()
        record["refresh"] = phase_record(driver.run(registration, jobs, base.port, base.process.pid))
        record["memory_kib"] = memory
        per_client = slope(memory)
        record["kib_per_client"] = per_client
        time.sleep(0.5)  # the status file is written every 0.2 s: let it catch up with the last phase
        record["server_counters"] = base.counters()
    finally:
        base.stop()
    return record


# --- summary ------------------------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def values(read: Callable[[dict[str, Any]], Any]) -> list[float]:
        return [float(v) for run in runs if (v := read(run)) is not None]

    summary: dict[str, Any] = {}
    for phase in ("echo", "fresh", "refresh"):
        summary[phase] = {
            metric: spread(values(lambda run, p=phase, m=metric: run[p][m]))  # type: ignore[misc]
            for metric in ("per_second", "server_cpu_s_per_1000", "client_cpu_s_per_s", "retries")
        }
    summary["kib_per_client"] = spread(values(lambda run: run["kib_per_client"]))
    for phase in ("fresh", "refresh"):  # per run, against that run's echo floor
        summary[f"{phase}_vs_echo"] = spread(
            values(lambda run, p=phase: run[p]["per_second"] / run["echo"]["per_second"])  # type: ignore[misc]
        )
    return summary


def _cell(stats: dict[str, Any] | None, digits: int, suffix: str = "") -> str:
    if stats is None:
        return "-"
    text = f"{stats['median']:,.{digits}f}{suffix}"
    if len(stats["values"]) > 1:
        text += f" ({stats['min']:,.{digits}f}{EN_DASH}{stats['max']:,.{digits}f})"
    return text


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"Median (min{EN_DASH}max) of {meta['runs']} runs; {meta['clients']} identities, "
        f"each registering from its own loopback address, {meta['window']} exchanges in flight.",
        "",
        "| what | exchanges/s | ratio to the echo floor | server CPU s per 1000 | client CPU s/s |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = (
        ("Python UDP echo server (floor): 2 round trips", "echo", None),
        ("base server: fresh registrations", "fresh", "fresh_vs_echo"),
        ("base server: refreshes (same address again)", "refresh", "refresh_vs_echo"),
    )
    for label, phase, ratio in rows:
        stats = summary[phase]
        lines.append(
            f"| {label} | {_cell(stats['per_second'], 0)} "
            f"| {'1' if ratio is None else _cell(summary[ratio], 2, 'x')} "
            f"| {_cell(stats['server_cpu_s_per_1000'], 3)} | {_cell(stats['client_cpu_s_per_s'], 2)} |"
        )
    lines += [
        "",
        "| base server memory | KiB per registered client (slope of RSS over "
        f"{', '.join(str(s) for s in [0, *meta['steps']])} clients) |",
        "|---|---:|",
        f"| VmRSS | {_cell(summary['kib_per_client'], 2)} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4000, help="identities registered per run")
    parser.add_argument("--window", type=int, default=256, help="exchanges in flight at most")
    parser.add_argument("--identities", type=Path, default=IDENTITY_CACHE, help="the identity cache file")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--md-out", type=Path)
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        return echo_server(ECHO_LIFETIME_S)
    clients = max(4, args.clients)
    steps = sorted({clients // 4, clients // 2, clients})  # 0, 1000, 2000, 4000 by default
    identities = identity_pool(clients, args.identities)
    runs: list[dict[str, Any]] = []
    driver = Driver(clients, max(1, args.window))
    workdir = Path(tempfile.mkdtemp(prefix="bench-base-server-", dir="/tmp"))
    try:
        for run in range(max(1, args.runs)):
            runs.append(one_run(driver, identities, steps, workdir))
            last = runs[-1]
            rates = ", ".join(
                f"{phase} {last[phase]['per_second']:.0f}/s" for phase in ("echo", "fresh", "refresh")
            )
            progress(f"run {run + 1}: {rates}, {last['kib_per_client']:.2f} KiB/client")
    finally:
        driver.close()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    meta = {
        "runs": len(runs),
        "clients": clients,
        "window": driver.window,
        "steps": steps,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "when": time.time(),
    }
    summary = summarize(runs)
    document = {"meta": meta, "summary": summary, "runs": runs}
    text = markdown(summary, meta)
    print(text)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json_out, json.dumps(document, indent=2) + "\n")
    progress(f"JSON written to {args.json_out}")
    if args.md_out:
        atomic_write_text(args.md_out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
