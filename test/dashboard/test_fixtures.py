"""The Dashboard tests' fixtures do what they promise: both databases work and are fresh per test, the
PostgreSQL server stays on loopback and cleans up, the browser loads and drives a page served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from husarnet_ros.testing.postgres import (
    DEBIAN_DEFAULT_PORT,
    PostgresServer,
    PostgresUnavailableError,
    find_server_binaries,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

# URL of the previous test's database per kind, so the next test can check it got another, empty one.
_PREVIOUS_URL: dict[str, str] = {}
_NOTE = sa.table("note", sa.column("id", sa.Integer), sa.column("text", sa.String))


def _create_note_table(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE note (id INTEGER PRIMARY KEY, text VARCHAR(100) NOT NULL)"))


def _kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.node.callspec.params["database_url"]
    return kind


def test_database_url_round_trips_a_row(database_url: str, request: pytest.FixtureRequest) -> None:
    kind = _kind(request)
    url = make_url(database_url)
    assert url.get_backend_name() == kind
    if kind == "postgresql":
        assert url.drivername == "postgresql+psycopg"
        assert url.host == "127.0.0.1"
        assert url.port != DEBIAN_DEFAULT_PORT
    engine = sa.create_engine(database_url)
    try:
        _create_note_table(engine)
        with engine.begin() as connection:
            connection.execute(sa.insert(_NOTE).values(id=1, text="zażółć"))
        with engine.connect() as connection:
            assert connection.execute(sa.select(_NOTE.c.text)).scalar_one() == "zażółć"
    finally:
        engine.dispose()
    _PREVIOUS_URL[kind] = database_url


def test_each_test_gets_a_separate_empty_database(database_url: str, request: pytest.FixtureRequest) -> None:
    kind = _kind(request)
    engine = sa.create_engine(database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    previous = _PREVIOUS_URL.get(kind)
    if previous is None:
        pytest.fail("test_database_url_round_trips_a_row must run first (it records its database)")
    assert previous != database_url
    if kind == "postgresql":  # the previous test's database was dropped when it ended
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = make_url(previous).database
        with server.fresh_database() as admin_url:
            admin = sa.create_engine(admin_url)
            try:
                with admin.connect() as connection:
                    query = sa.text("SELECT count(*) FROM pg_database WHERE datname = :name")
                    assert connection.execute(query, {"name": name}).scalar_one() == 0
            finally:
                admin.dispose()


def test_sqlite_url_is_a_file_in_tmp_path(sqlite_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(sqlite_url)
    try:
        _create_note_table(engine)
    finally:
        engine.dispose()
    database = Path(make_url(sqlite_url).database or "")
    assert database.parent == tmp_path
    assert database.is_file()


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for process {pid}")


def _postmaster_port_socket_and_address(directory: Path) -> list[str]:
    # postmaster.pid's lines: pid, data dir, start time, port, socket dir, listen address, ...
    return (directory / "data" / "postmaster.pid").read_text(encoding="ascii").splitlines()[3:6]


def test_postgres_server_listens_on_loopback_only_and_cleans_up() -> None:
    with PostgresServer() as server:
        pid, directory = server.pid, server.directory
        assert pid is not None
        assert directory is not None
        port, socket_dir, listen = _postmaster_port_socket_and_address(directory)
        assert (int(port), socket_dir, listen) == (server.port, str(directory), "127.0.0.1")
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as Debian's postgres account
            assert server.account is not None
            assert _uid_of(pid) == server.account.pw_uid
        else:
            assert _uid_of(pid) == os.geteuid()
    assert not Path(f"/proc/{pid}").exists()
    assert not directory.exists()


def test_postgres_server_refuses_a_second_start_and_stops_by_pid() -> None:
    server = PostgresServer()
    server.start()
    pid, directory = server.pid, server.directory
    with pytest.raises(RuntimeError, match="already started"):
        server.start()
    server.stop()
    assert pid is not None
    assert directory is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not directory.exists()


_SERVER_IN_A_CHILD = """
import time
from husarnet_ros.testing.postgres import PostgresServer
server = PostgresServer()
server.start()
print(server.pid, server.directory, flush=True)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited; only its parent has not reaped it


def _read_line(stream: IO[str], timeout_s: float) -> str:
    readable, _, _ = select.select([stream], [], [], timeout_s)
    return stream.readline() if readable else ""


def test_postgres_server_stops_when_the_test_process_is_killed() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER_IN_A_CHILD],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],  # the working tree, whose husarnet_ros the child imports
    )
    assert child.stdout is not None
    pid: int | None = None
    directory: Path | None = None
    try:
        line = _read_line(child.stdout, timeout_s=60)
        assert line, "the child did not start a PostgreSQL server within 60 s"
        pid_text, directory_text = line.split()
        pid, directory = int(pid_text), Path(directory_text)
        assert _running(pid)
        child.kill()  # no finalizer runs: only the kernel's parent-death signal can stop the server
        child.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(pid)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        child.stdout.close()
        if pid is not None and _running(pid):
            os.kill(pid, signal.SIGKILL)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def test_missing_postgresql_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version directory without the server programs
    with pytest.raises(PostgresUnavailableError, match="install Debian's postgresql package"):
        find_server_binaries(tmp_path)


class _ButtonPage(BaseHTTPRequestHandler):
    BODY = (
        b"<!doctype html><html><body><p id='status'>waiting</p>"
        b"<button id='go' onclick=\"document.getElementById('status').textContent='clicked'\">Go</button>"
        b"</body></html>"
    )
    requests: list[str] = []  # noqa: RUF012 (set per server in the fixture)

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def button_page_server() -> Iterator[tuple[str, list[str]]]:
    """A tiny HTTP server on 127.0.0.1 with one page holding a button; yields its URL and the paths served."""
    requests: list[str] = []
    handler = type("ButtonPage", (_ButtonPage,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="button-page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_browser_loads_a_page_and_clicks_a_button(
    browser_page: Page, button_page_server: tuple[str, list[str]]
) -> None:
    from playwright.sync_api import expect

    url, requests = button_page_server
    browser_page.goto(url)
    assert "/page" in requests
    assert browser_page.text_content("#status") == "waiting"
    browser_page.click("#go")
    expect(browser_page.locator("#status")).to_have_text("clicked")


@pytest.mark.parametrize("visit", ["first", "second"])
def test_browser_pages_do_not_share_cookies(
    browser_page: Page, button_page_server: tuple[str, list[str]], visit: str
) -> None:
    url, _ = button_page_server
    browser_page.goto(url)
    assert browser_page.context.cookies() == []  # the first visit's cookie went away with its context
    browser_page.context.add_cookies([{"name": "hnr_session", "value": "x", "url": url}])
    assert [cookie["name"] for cookie in browser_page.context.cookies()] == ["hnr_session"]


def test_asyncio_runs_in_a_test_after_the_browser_tests() -> None:
    # The shared browser is closed once the next test does not use it: playwright's sync API no longer
    # holds this thread's event loop.
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(answer()) == 42


def test_missing_chromium_says_what_to_install(tmp_path: Path) -> None:
    from husarnet_ros.testing.browser import BrowserUnavailableError, launch_chromium

    with (
        pytest.raises(BrowserUnavailableError, match="install Debian's chromium package"),
        launch_chromium(tmp_path / "chromium"),
    ):
        pass
