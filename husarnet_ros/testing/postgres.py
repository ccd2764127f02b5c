"""A throwaway PostgreSQL server for tests, from Debian's server binaries, listening on loopback only.

``PostgresServer`` runs ``initdb`` into a fresh directory under /tmp and starts ``postgres`` on 127.0.0.1 at a
free port (its Unix socket in the same directory), so it never meets a cluster that Debian's package may have
started by itself (port 5432, /var/lib/postgresql, /etc/postgresql are never used). PostgreSQL refuses to run
as root: under root the server runs as Debian's ``postgres`` system account, otherwise as the current user.
Each test gets its own database (``fresh_database``), dropped afterwards. ``stop`` ends the server by its PID
and removes the directory, whatever happened before.

Should the test process be killed before it can stop the server, the server still goes: it is started through
util-linux's ``setpriv --pdeathsig INT``, so the kernel sends it PostgreSQL's "fast shutdown" signal when the
thread that started it ends (start servers from the main thread). Only its directory under /tmp (``hr-pg-*``)
is then left behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_ACCOUNT = "postgres"  # created by Debian's postgresql-common
SUPERUSER = "husarnet_ros_test"
HOST = "127.0.0.1"
DEBIAN_DEFAULT_PORT = 5432  # a cluster started by Debian's package may listen there: never ours
INITDB_TIMEOUT_S = 120.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
START_ATTEMPTS = 3  # another process may take the free port between choosing it and the server binding it
LOG_TAIL_CHARS = 2000

INSTALL_HINT = "install Debian's postgresql package (`apt-get install postgresql`; scripts/test.sh does it)"

# Durability costs time and buys nothing in a database that lives for one test run.
_SERVER_SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
}


class PostgresUnavailableError(RuntimeError):
    """This machine cannot run a test PostgreSQL server (programs or account missing); says what to do."""


class PostgresStartError(RuntimeError):
    """The server was found but did not initialise or start; the message holds the end of its log."""


@dataclass(frozen=True)
class ServerBinaries:
    """The server programs of one installed PostgreSQL major version."""

    version: int
    initdb: Path
    postgres: Path


def find_server_binaries(root: Path = POSTGRES_ROOT) -> ServerBinaries:
    """The newest ``<root>/<version>/bin`` holding both ``initdb`` and ``postgres``."""
    found: list[ServerBinaries] = []
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            initdb, postgres = entry / "bin" / "initdb", entry / "bin" / "postgres"
            if entry.name.isdigit() and os.access(initdb, os.X_OK) and os.access(postgres, os.X_OK):
                found.append(ServerBinaries(int(entry.name), initdb, postgres))
    if not found:
        raise PostgresUnavailableError(
            f"PostgreSQL's server programs were not found in {root}/<version>/bin: {INSTALL_HINT}"
        )
    return max(found, key=lambda binaries: binaries.version)


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: ``postgres`` under root (PostgreSQL refuses root), None = this user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise PostgresUnavailableError(
            f"the tests run as root, which PostgreSQL refuses, and there is no '{SERVER_ACCOUNT}' account to "
            f"run it as: {INSTALL_HINT} (it creates the account), or run the tests as an unprivileged user"
        ) from None


def _free_loopback_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port != DEBIAN_DEFAULT_PORT:
            return port


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return text[-LOG_TAIL_CHARS:].strip() or "(empty log)"


class PostgresServer:
    """One throwaway cluster. Use it as a context manager, or call ``start`` and (always) ``stop``."""

    def __init__(self, binaries: ServerBinaries | None = None) -> None:
        self.binaries = binaries if binaries is not None else find_server_binaries()
        self.account = server_account()
        self.password = secrets.token_hex(16)  # hex: needs no escaping in a URL
        self.port = 0
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server (psycopg 3 driver, password authentication)."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    def start(self) -> None:
        """Initialise the cluster and start the server; returns once it accepts connections on 127.0.0.1."""
        if self._process is not None:
            raise RuntimeError("this PostgreSQL server is already started")
        try:
            self.directory = Path(tempfile.mkdtemp(prefix="hr-pg-", dir="/tmp"))
            if self.account is not None:
                os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
            self._initdb()
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port = _free_loopback_port()
                if self._start_server():
                    return
                if attempt == START_ATTEMPTS:
                    raise PostgresStartError(
                        f"PostgreSQL {self.binaries.version} did not start ({START_ATTEMPTS} attempts); "
                        f"its log ends with:\n{_log_tail(self._log_path)}"
                    )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server by its PID (fast shutdown, then SIGKILL if it hangs) and remove its directory."""
        try:
            self._stop_process()
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        name = f"test_{secrets.token_hex(6)}"
        with self._admin_connection() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still connected to it (a pool a test forgot to dispose)."""
        with self._admin_connection() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        """The URL of a new database, dropped when the block ends (also when it raises)."""
        name = self.create_database()
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)

    # --- internals ----------------------------------------------------------------------------------------

    @property
    def _data_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def _log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "server.log"

    def _run_as_server_account(self, command: list[str], **popen_options: Any) -> subprocess.Popen[bytes]:
        """Start ``command`` as the server's account, in the server's directory, with a clean environment."""
        # PG* variables of the caller (PGDATA, PGPORT, ...) would redirect initdb or the server.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        account = self.account
        if account is not None:
            env["HOME"] = str(self.directory)
        return subprocess.Popen(
            command,
            cwd=self.directory,
            env=env,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],
            **popen_options,
        )

    def _initdb(self) -> None:
        assert self.directory is not None
        password_file = self.directory / "superuser-password"
        password_file.write_text(self.password + "\n", encoding="ascii")
        password_file.chmod(0o600)
        if self.account is not None:
            os.chown(password_file, self.account.pw_uid, self.account.pw_gid)
        command = [
            str(self.binaries.initdb),
            f"--pgdata={self._data_path}",
            f"--username={SUPERUSER}",
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",  # tests connect over TCP with the password, as the Dashboard does
            "--auth-local=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        process = self._run_as_server_account(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            output, _ = process.communicate(timeout=INITDB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise PostgresStartError(f"initdb did not finish within {INITDB_TIMEOUT_S:.0f} s") from None
        finally:
            password_file.unlink(missing_ok=True)
        if process.returncode != 0:
            tail = output.decode(errors="replace")[-LOG_TAIL_CHARS:].strip()
            raise PostgresStartError(f"initdb failed (exit status {process.returncode}):\n{tail}")

    def _start_server(self) -> bool:
        """Start the postmaster on ``self.port``; True once it accepts connections, False if it exited."""
        assert self.directory is not None
        command = [str(self.binaries.postgres), "-D", str(self._data_path), "-p", str(self.port)]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:  # util-linux, essential in Debian; without it a killed run leaves a server
            command = [setpriv, "--pdeathsig", "INT", "--", *command]
        settings = {**_SERVER_SETTINGS, "unix_socket_directories": str(self.directory)}
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        with self._log_path.open("ab") as log:
            self._process = self._run_as_server_account(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            try:
                self._admin_connection().close()
            except psycopg.OperationalError:
                time.sleep(0.1)
                continue
            return True
        log_tail = _log_tail(self._log_path)
        self._stop_process()
        raise PostgresStartError(
            f"PostgreSQL did not accept connections on {HOST}:{self.port} within {START_TIMEOUT_S:.0f} s; "
            f"its log ends with:\n{log_tail}"
        )

    def _admin_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=HOST,
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname="postgres",
            connect_timeout=5,
            autocommit=True,  # CREATE/DROP DATABASE cannot run inside a transaction
        )

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown: ends sessions, then exits
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
