"""`husarnet-ros dashboard`: accounts and tokens from the shell, and `serve` as the operator runs it (a real
process on 127.0.0.1, stopped by its PID)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from husarnet_ros.cli.main import cli
from husarnet_ros.core.license import parse_license

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
PASSWORD = "correct horse battery"


def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.output


def test_create_user_and_token(sqlite_url: str, tmp_path: Path) -> None:
    storage = ["--data-dir", str(tmp_path / "data"), "--database-url", sqlite_url]
    code, output = run_cli(
        "dashboard", "create-user", "alice", *storage, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 0, output
    assert "created account alice" in output
    code, output = run_cli(
        "dashboard", "create-user", "alice", *storage, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 1
    assert "taken" in output
    code, output = run_cli(
        "dashboard", "create-user", "Bad Name", *storage, "--password-stdin", stdin=PASSWORD
    )
    assert code == 1
    assert "username must be" in output
    code, output = run_cli("dashboard", "create-user", "bob", *storage, "--password-stdin", stdin="short\n")
    assert code == 1
    assert "password must be" in output
    code, output = run_cli("dashboard", "create-token", "alice", "ci", *storage, "--json")
    assert code == 0, output
    token = json.loads(output)
    assert token["username"] == "alice"
    assert re.fullmatch(r"hnt_[A-Za-z0-9_-]{43}", token["token"])
    code, output = run_cli("dashboard", "create-token", "nobody", "ci", *storage)
    assert code == 1
    assert "no account named 'nobody'" in output


def test_fingerprint_before_the_first_start_says_what_to_do(tmp_path: Path) -> None:
    code, output = run_cli("dashboard", "fingerprint", "--data-dir", str(tmp_path))
    assert code == 1
    assert "start the Dashboard once" in output


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`husarnet-ros dashboard serve` on a free port of 127.0.0.1: (its URL, its data directory)."""
    data_dir = tmp_path / "data"
    command = [
        sys.executable, "-m", "husarnet_ros.cli", "dashboard", "serve",
        "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--database-url", sqlite_url,
        "--name", "cli lab", "--base-server", "198.18.0.1:5582", "--websetup-address", "fc94:5e7::1",
        "--max-devices", "3", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        url = None
        while url is None and time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                match = re.search(r"Dashboard on (http://127\.0\.0\.1:\d+)", process.stdout.readline())
                url = match.group(1) if match else None
        if url is None:
            process.kill()
            _out, err = process.communicate(timeout=STOP_TIMEOUT_S)
            pytest.fail(f"dashboard serve did not start: {err[-2000:]}")
        yield url, data_dir
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_serve_gives_the_license_with_the_fingerprint_it_prints(served: tuple[str, Path]) -> None:
    url, data_dir = served
    with httpx.Client(base_url=url, timeout=30.0) as http:
        license_ = parse_license(http.get("/license.json").content)
        assert http.get("/api/v1/networks").status_code == 401
    code, output = run_cli("dashboard", "fingerprint", "--data-dir", str(data_dir), "--json")
    assert code == 0, output
    assert json.loads(output)["fingerprint"] == license_.fingerprint
    assert license_.name == "cli lab"
    assert license_.max_devices == 3
    assert license_.dashboard_url == url


def test_serve_refuses_bad_options(tmp_path: Path) -> None:
    base = ["dashboard", "serve", "--data-dir", str(tmp_path)]
    code, output = run_cli(*base, "--listen", "nowhere")
    assert code == 1
    assert "HOST:PORT" in output
    code, output = run_cli(*base, "--public-url", "ftp://x")
    assert code == 1
    assert "http://" in output
    code, output = run_cli(*base, "--websetup-address", "2001:db8::1", "--listen", "127.0.0.1:0")
    assert code == 1
    assert "websetup_address" in output
    code, output = run_cli(*base, "--name", " ", "--listen", "127.0.0.1:0")
    assert code == 1
    assert "--name" in output
    code, output = run_cli(*base, "--base-server", "host:port", "--listen", "127.0.0.1:0")
    assert code == 1
    assert "base server" in output
    code, output = run_cli(*base, "--database-url", "mysql://x/y", "--listen", "127.0.0.1:0")
    assert code == 1
    assert "not supported" in output


def test_serve_with_websetup_needs_its_address_up(tmp_path: Path) -> None:
    base = ["dashboard", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--websetup"]
    code, output = run_cli(*base)
    assert code == 1
    assert "--websetup needs --websetup-address" in output
    # An fc94 address no interface of this machine has (no daemon runs with it): one line saying so.
    code, output = run_cli(*base, "--websetup-address", "fc94:dead:beef::1", "--websetup-port", "5590")
    assert code == 1
    assert "Websetup cannot listen on [fc94:dead:beef::1]:5590" in output
    assert "server's daemon" in output
