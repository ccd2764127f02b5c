"""The control server's limits: connections, request timeouts and sizes, descriptors, a clean stop.

Each test talks raw HTTP/1.1 over the Unix socket where it must control exactly what is sent (or not sent).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from husarnet_ros.daemon.control import ControlServer
from husarnet_ros.daemon.control_limits import ControlLimits
from husarnet_ros.testing.memnet_daemon import MemNetFleet

REPO = Path(__file__).resolve().parents[2]
# Short limits, so the tests wait fractions of a second; the defaults are checked by the integration test.
LIMITS = ControlLimits(max_connections=4, request_timeout_s=0.5, max_head_bytes=2048, max_body_bytes=4096)
HEALTH = b"GET /v1/health HTTP/1.1\r\nhost: daemon\r\n\r\n"


@pytest.fixture
def socket_path(short_dir: Path) -> str:
    return str(short_dir / "control.sock")


@pytest.fixture
def served(socket_path: str) -> Iterator[str]:
    """These limits in front of the real daemon controller (robot1 on the in-memory network)."""
    with MemNetFleet() as fleet, ControlServer(fleet.add("robot1"), socket_path, group=None, limits=LIMITS):
        yield socket_path


def connect(path: str, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect(path)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # it closed with our unread request in its buffer
            return data
        if not chunk:
            return data
        data += chunk


def read_one_answer(sock: socket.socket) -> bytes:
    """One complete answer (head and Content-Length body) from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    _, headers, body = parse_answer(data)
    while len(body) < int(headers["content-length"]):
        more = sock.recv(65536)
        data += more
        body += more
    return data


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_json_error(raw: bytes, status: int, needle: str) -> None:
    code, headers, body = parse_answer(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert needle in error


def wait_closed_by_server(sock: socket.socket, within_s: float) -> bytes:
    sock.settimeout(within_s)
    return read_until_closed(sock)


# --- connections ---------------------------------------------------------------------------------------


def test_connections_beyond_the_limit_get_a_json_503_and_idle_ones_are_closed(served: str) -> None:
    idle = [connect(served) for _ in range(LIMITS.max_connections)]
    try:
        # Given time to be accepted: every slot is taken by a connection that sends nothing.
        time.sleep(0.1)
        with httpx.Client(transport=httpx.HTTPTransport(uds=served), base_url="http://d", timeout=5) as http:
            busy = http.get("/v1/health")
            assert busy.status_code == 503
            assert "busy" in busy.json()["error"]
            # Connections that never send a request are closed after the request timeout, freeing the slots.
            for sock in idle:
                assert wait_closed_by_server(sock, within_s=LIMITS.request_timeout_s + 2) == b""
            assert http.get("/v1/health").status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_an_idle_keep_alive_connection_is_closed(served: str) -> None:
    with connect(served) as sock:
        sock.sendall(HEALTH)
        assert read_one_answer(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert wait_closed_by_server(sock, within_s=LIMITS.request_timeout_s + 2) == b""
        assert time.monotonic() - started >= LIMITS.request_timeout_s * 0.9


def test_a_request_that_never_completes_is_answered_408_and_closed(served: str) -> None:
    with connect(served) as slow:
        started = time.monotonic()
        # A byte at a time, never the blank line that ends the head: the deadline does not move.
        for byte in b"GET /v1/health HTTP/1.1\r\nhost: daemon\r\n":
            try:
                slow.send(bytes([byte]))
            except OSError:
                break  # closed by the server, as it should be
            if time.monotonic() - started > LIMITS.request_timeout_s + 0.5:
                break
            time.sleep(0.02)
        assert_json_error(
            wait_closed_by_server(slow, within_s=LIMITS.request_timeout_s + 2),
            408,
            "did not arrive completely",
        )
        assert time.monotonic() - started < LIMITS.request_timeout_s + 2


def test_a_body_that_never_completes_is_answered_408(served: str) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /v1/whitelist HTTP/1.1\r\nhost: d\r\ncontent-type: application/json\r\n")
        sock.sendall(b'content-length: 100\r\n\r\n{"address":')
        assert_json_error(wait_closed_by_server(sock, within_s=LIMITS.request_timeout_s + 2), 408, "within")


def test_a_long_poll_is_not_cut_by_the_request_timeout(served: str) -> None:
    # The deadline covers receiving a request, not answering it.
    with httpx.Client(transport=httpx.HTTPTransport(uds=served), base_url="http://d", timeout=10) as http:
        wait_s = LIMITS.request_timeout_s * 3
        started = time.monotonic()
        answer = http.get("/v1/wait/peer/fc94::77", params={"timeout": wait_s})  # no robot has that address
        assert answer.json() == {"reached": False}
        assert time.monotonic() - started >= wait_s


# --- sizes -----------------------------------------------------------------------------------------------


def _send_body(sock: socket.socket, head: bytes, total: int, chunked: bool) -> int:
    """Send up to ``total`` body bytes after ``head``; how many went out before the server closed."""
    sock.sendall(head)
    chunk = b"x" * 8192
    sent = 0
    try:
        while sent < total:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
    except OSError:
        pass  # broken pipe or reset: the server stopped reading, as it should
    return sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversize_body_is_refused_413_without_being_read(served: str, chunked: bool) -> None:
    total = 20 * 1024 * 1024
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % total
    head = b"POST /v1/whitelist HTTP/1.1\r\nhost: d\r\ncontent-type: application/json\r\n%s\r\n\r\n" % framing
    with connect(served, timeout_s=10) as sock:
        sent = _send_body(sock, head, total, chunked)
        assert_json_error(read_until_closed(sock), 413, "request body larger than 4 KiB")
    # What went out is what the socket buffers hold, far from the 20 MiB the client wanted to send.
    assert sent < total / 4


def test_httpx_reads_the_413_of_a_large_body(served: str) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=served), base_url="http://d", timeout=10) as http:
        answer = http.post("/v1/hosts", content=b'{"hostname": "' + b"a" * 100_000 + b'"}')
        assert answer.status_code == 413
        assert "larger than 4 KiB" in answer.json()["error"]
        assert http.get("/v1/health").status_code == 200  # a new connection, served as usual


def test_an_oversize_request_head_is_refused_431(served: str) -> None:
    long_header = b"x-padding: " + b"p" * 3000 + b"\r\n"
    with connect(served) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nhost: d\r\n" + long_header + b"\r\n")
        assert_json_error(read_until_closed(sock), 431, "request head larger than 2 KiB")
    with connect(served) as sock:  # an incomplete head that keeps growing
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nhost: d\r\n" + long_header)
        assert_json_error(read_until_closed(sock), 431, "request head larger than 2 KiB")


def test_garbage_is_a_json_400(served: str) -> None:
    with connect(served) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        assert_json_error(read_until_closed(sock), 400, "invalid HTTP/1.1 request")


# --- descriptors and the process --------------------------------------------------------------------------

# The server alone is under test in these processes: its controller is never called (only /v1/health, which
# the server answers itself), so a FakeController stands in for the daemon.
SERVER_SCRIPT = textwrap.dedent(
    """
    import logging, resource, signal, sys, threading
    nofile = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    logging.basicConfig(level=logging.INFO)
    from husarnet_ros.daemon.control import ControlServer
    from husarnet_ros.daemon.control_limits import ControlLimits
    from husarnet_ros.testing.fake_controller import FakeController
    limits = ControlLimits(max_connections=int(sys.argv[3]), request_timeout_s=3.0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = ControlServer(FakeController(), sys.argv[1], group=None, limits=limits)
    server.start()
    print("serving", flush=True)
    stop.wait(120)
    server.stop()
    print("stopped", flush=True)
    """
)


def _open_many(path: str, count: int, within_s: float) -> list[socket.socket]:
    """Up to ``count`` connections; a full backlog (EAGAIN) is retried until ``within_s`` has passed."""
    opened: list[socket.socket] = []
    deadline = time.monotonic() + within_s
    while len(opened) < count and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except (BlockingIOError, TimeoutError):
            sock.close()
            time.sleep(0.01)
            continue
        opened.append(sock)
    return opened


@pytest.mark.parametrize(
    ("max_connections", "needle"),
    [(64, "busy"), (1000, "short of file descriptors")],
    ids=["connection-limit", "fd-reserve"],
)
def test_many_idle_connections_never_exhaust_the_servers_descriptors(
    socket_path: str, max_connections: int, needle: str
) -> None:
    nofile = 128  # what a flood of 1,000 connections does to a service with 1024
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, socket_path, str(nofile), str(max_connections)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    flood: list[socket.socket] = []
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "serving"
        flood = _open_many(socket_path, 3 * nofile, within_s=20)
        assert len(flood) == 3 * nofile  # every one accepted, served or answered
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=socket_path), base_url="http://d", timeout=5
        ) as http:
            refused = http.get("/v1/health")
            assert refused.status_code == 503
            assert needle in refused.json()["error"]
            # Once the idle connections have been closed (request timeout 3 s), the daemon answers again.
            time.sleep(3.5)
            assert http.get("/v1/health").status_code == 200
    finally:
        for sock in flood:
            sock.close()
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err[-2000:]
    assert "stopped" in out
    assert "Traceback" not in err
    assert "Too many open files" not in err
    # Refusals are logged, but not one line per connection.
    assert 1 <= err.count("turned a connection away") <= 3, err[-2000:]


# A server that is only started and stopped: its controller is never called (a FakeController).
STOP_AS_ANOTHER_USER = textwrap.dedent(
    """
    import logging, os, sys
    logging.basicConfig(level=logging.INFO)
    from husarnet_ros.daemon.control import ControlServer
    from husarnet_ros.testing.fake_controller import FakeController
    server = ControlServer(FakeController(), sys.argv[1], group=None)
    server.bind()  # as root, like the daemon
    server.give_to(int(sys.argv[2]))
    server.start()  # before switching: the interpreter's own modules may be closed to that account
    os.setresgid(int(sys.argv[3]), int(sys.argv[3]), int(sys.argv[3]))
    os.setresuid(int(sys.argv[2]), int(sys.argv[2]), int(sys.argv[2]))  # the daemon's own account
    server.stop()
    print("stopped cleanly", flush=True)
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")
def test_stop_without_the_right_to_remove_the_socket_is_clean(socket_path: str) -> None:
    # The socket's directory belongs to root (like /run/husarnet-ros made by a unit file); the daemon has
    # switched to its own account, which may not remove names in it.
    nobody = pwd.getpwnam("nobody")
    Path(socket_path).parent.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-c", STOP_AS_ANOTHER_USER, socket_path, str(nobody.pw_uid), str(nobody.pw_gid)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stopped cleanly" in result.stdout
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "cannot remove control socket" in line]
    assert len(warnings) == 1
    assert Path(socket_path).exists()  # left for the next daemon, which replaces a stale socket
