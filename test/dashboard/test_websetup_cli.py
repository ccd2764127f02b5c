"""`husarnet-ros websetup` (husarnet_ros/cli/websetup.py): its listen address, its one-line errors, and a real
server process on loopback that refuses non-overlay sources, describes itself and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from fastapi import FastAPI

from husarnet_ros.cli.main import cli
from husarnet_ros.cli.state import CliFailure
from husarnet_ros.cli.websetup import parse_listen
from husarnet_ros.core.websetup import API_PREFIX
from husarnet_ros.dashboard.websetup import (
    bind_listen_socket,
    create_websetup_app,
    serve_together,
    websetup_server,
)

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[fc94::1]:5590", ("fc94::1", 5590)),
        ("[fc94:b01d:1803:8dd8:b293:5c7d:7639:932a]:80", ("fc94:b01d:1803:8dd8:b293:5c7d:7639:932a", 80)),
        ("[fc94::1]", ("fc94::1", 5590)),
        (":6000", ("::", 6000)),
        ("[::]:6000", ("::", 6000)),
        ("127.0.0.1:6000", ("127.0.0.1", 6000)),
        (" [::1]:1 ", ("::1", 1)),
    ],
)
def test_listen_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("fc94::1:5590", "brackets"),
        ("[fc94::1]5590", "expected"),
        ("[fc94::1", "expected"),
        ("[fc94::1]:0", "1 to 65535"),
        ("[fc94::1]:65536", "1 to 65535"),
        ("[fc94::1]:http", "1 to 65535"),
        ("robot.example:5590", "not an IP address"),
        ("[nonsense]:5590", "not an IP address"),
        ("", "expected"),
    ],
)
def test_bad_listen_addresses_say_what_is_expected(text: str, says: str) -> None:
    with pytest.raises(CliFailure) as failure:
        parse_listen(text)
    assert says in failure.value.format_message()


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_database_is_required() -> None:
    assert "--database-url" in one_line_error(["websetup", "--listen", "127.0.0.1:5590"])


def test_a_bad_database_url_is_one_line() -> None:
    message = one_line_error(["websetup", "--listen", "127.0.0.1:5590", "--database-url", "mysql://x/y"])
    assert "not supported" in message


def test_an_address_this_machine_does_not_have_names_the_daemon(sqlite_url: str) -> None:
    # fc94::dead is on no interface here (no daemon runs in the tests): binding fails, nothing is sent.
    message = one_line_error(["websetup", "--listen", "[fc94::dead]:5590", "--database-url", sqlite_url])
    assert "cannot listen on [fc94::dead]:5590" in message
    assert "daemon" in message


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def websetup_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "husarnet_ros.cli", "websetup", "--listen", f"127.0.0.1:{port}"]
    process = subprocess.Popen(
        [*command, "--data-dir", str(tmp_path), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, process.communicate(timeout=STOP_TIMEOUT_S)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "websetup did not start listening"
                time.sleep(0.1)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=STOP_TIMEOUT_S)


def test_the_server_refuses_non_overlay_sources_and_stops_cleanly(
    websetup_process: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = websetup_process
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        refused = http.get(f"{API_PREFIX}/config", params={"after": -1, "wait": 0})
        assert refused.status_code == 403
        assert "overlay" in refused.json()["detail"]
        schema = http.get("/openapi.json")
        assert schema.status_code == 200
        assert f"{API_PREFIX}/join" in schema.json()["paths"]
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 0, err
    assert "Traceback" not in err


# --- serve_together: Websetup beside the Dashboard in one process ---


def serve_in_thread(
    pairs: list[tuple[Any, list[socket.socket]]],
) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(serve_together(pairs))
        except BaseException as exc:  # SystemExit from a server that failed to start included
            failures.append(exc)

    thread = threading.Thread(target=run, name="serve-together", daemon=True)
    thread.start()
    return thread, failures


def wait_started(servers: list[Any]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(server.started for server in servers):
        assert time.monotonic() < deadline, "the servers did not start"
        time.sleep(0.05)


def test_servers_run_together_and_stop_together(sqlite_url: str) -> None:
    from husarnet_ros.dashboard import db

    db.migrate(sqlite_url)
    engine = db.create_db_engine(sqlite_url)
    sockets = [bind_listen_socket("127.0.0.1", 0), bind_listen_socket("127.0.0.1", 0)]
    servers = [websetup_server(create_websetup_app(db.session_factory(engine)), "warning") for _ in sockets]
    ports = [sock.getsockname()[1] for sock in sockets]
    thread, failures = serve_in_thread([(servers[0], [sockets[0]]), (servers[1], [sockets[1]])])
    try:
        wait_started(servers)
        for port in ports:
            answer = httpx.get(f"http://127.0.0.1:{port}{API_PREFIX}/config", timeout=10)
            assert answer.status_code == 403
        servers[0].should_exit = True  # as its own signal handler would
        thread.join(timeout=STOP_TIMEOUT_S)
        assert not thread.is_alive(), "the other server kept running"
        assert failures == []
        for port in ports:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT_S)
        for sock in sockets:
            sock.close()
        engine.dispose()


def test_a_server_that_cannot_start_stops_the_others(sqlite_url: str) -> None:
    from husarnet_ros.dashboard import db

    @contextlib.asynccontextmanager
    async def broken(_: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("cannot start")
        yield

    db.migrate(sqlite_url)
    engine = db.create_db_engine(sqlite_url)
    sockets = [bind_listen_socket("127.0.0.1", 0), bind_listen_socket("127.0.0.1", 0)]
    good = websetup_server(create_websetup_app(db.session_factory(engine)), "critical")
    bad_config = uvicorn.Config(FastAPI(lifespan=broken), lifespan="on", log_level="critical")
    bad = uvicorn.Server(bad_config)
    thread, failures = serve_in_thread([(good, [sockets[0]]), (bad, [sockets[1]])])
    try:
        thread.join(timeout=START_TIMEOUT_S)
        assert not thread.is_alive(), "the good server kept running alone"
        assert len(failures) == 1
        assert isinstance(failures[0], SystemExit)
    finally:
        good.should_exit = bad.should_exit = True
        thread.join(timeout=STOP_TIMEOUT_S)
        for sock in sockets:
            sock.close()
        engine.dispose()
