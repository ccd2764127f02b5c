"""A husarnet-ros daemon running in a lab namespace, and its CLI.

Used by the integration tests, the benchmark and the demo: each :class:`Daemon` has
its own state directory, control socket, hosts file and log file, so several daemons
(one per namespace, all with interface ``hnet0``) run side by side on one machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import husarnet_ros
from husarnet_ros.testing.netlab import COMMAND_TIMEOUT, Host, Lab, LabError, run_command, wait_until

DAEMON_START_TIMEOUT = 20.0
DAEMON_STOP_TIMEOUT = 10.0
# Unix socket paths are limited to 108 bytes, so daemon files live in a short /tmp dir.
WORK_ROOT = Path("/tmp")


def husarnet_ros_executable() -> Path:
    """The ``husarnet-ros`` entry point of the venv this Python runs in."""
    return Path(sys.executable).parent / "husarnet-ros"


def husarnet_ros_command() -> list[str]:
    """How to run the CLI: the installed entry point, else ``python -m husarnet_ros.cli`` from this tree."""
    executable = husarnet_ros_executable()
    return [str(executable)] if executable.exists() else [sys.executable, "-m", "husarnet_ros.cli"]


def husarnet_ros_missing() -> str | None:
    """None if the CLI can run, else what is missing."""
    if husarnet_ros_executable().exists() or importlib.util.find_spec("husarnet_ros.cli.main") is not None:
        return None
    return f"neither {husarnet_ros_executable()} nor the module husarnet_ros.cli.main exists"


def husarnet_ros_env() -> dict[str, str]:
    """Environment for the CLI: this tree's husarnet_ros first on the path (when not pip-installed)."""
    package_root = str(Path(husarnet_ros.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONPATH": f"{package_root}:{path}" if path else package_root}


class DaemonError(LabError):
    """The daemon did not start, answer or stop as expected; the message carries its log tail."""


@dataclass
class Daemon:
    """One ``husarnet-ros daemon`` in ``host``'s namespace.

    ``cli(*args)`` runs ``husarnet-ros --control-socket SOCK *args`` in the same namespace,
    ``json(*args)`` adds ``--json`` and parses the answer.
    """

    host: Host
    hostname: str
    workdir: Path
    interface: str = "hnet0"
    udp_port: int = 5582
    log_level: str = "info"
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    _log_handle: IO[bytes] | None = None

    @classmethod
    def create(cls, host: Host, hostname: str, **kwargs: Any) -> Daemon:
        """A daemon (not yet started) with fresh files in a new short directory under /tmp."""
        workdir = Path(tempfile.mkdtemp(prefix=f"{host.lab.prefix}-{hostname}-", dir=WORK_ROOT))
        workdir.chmod(0o711)  # the daemon, once it runs as its own account, must still reach state/
        (workdir / "state").mkdir(mode=0o700)
        (workdir / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
        return cls(host=host, hostname=hostname, workdir=workdir, **kwargs)

    # --- files ------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "ctl.sock"

    @property
    def hosts_file(self) -> Path:
        return self.workdir / "hosts"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"

    # --- lifecycle ----------------------------------------------------------------
    def daemon_argv(self) -> list[str]:
        return [
            *husarnet_ros_command(),
            "daemon",
            "--state-dir", str(self.state_dir),
            "--control-socket", str(self.control_socket),
            "--interface", self.interface,
            "--udp-port", str(self.udp_port),
            "--hostname", self.hostname,
            "--hosts-file", str(self.hosts_file),
            "--log-level", self.log_level,
            *self.extra_args,
        ]  # fmt: skip

    @property
    def pid(self) -> int:
        if self.process is None:
            raise DaemonError(f"daemon {self.hostname} is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, wait_ready: bool = True, timeout: float = DAEMON_START_TIMEOUT) -> Daemon:
        """Start the daemon; with ``wait_ready`` return once ``wait ready`` says so."""
        if self.running:
            raise DaemonError(f"daemon {self.hostname} is already running")
        self.control_socket.unlink(missing_ok=True)
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._log_handle.write(
            f"--- start {time.strftime('%H:%M:%S')} {' '.join(self.daemon_argv())}\n".encode()
        )
        self._log_handle.flush()
        self.process = self.host.popen(
            self.daemon_argv(), stdout=self._log_handle, stderr=subprocess.STDOUT, env=husarnet_ros_env()
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = DAEMON_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout

        def socket_up() -> bool:
            if not self.running:
                raise DaemonError(
                    f"daemon {self.hostname} exited early ({self._exit_status()}):\n{self.log_tail()}"
                )
            return self.control_socket.exists()

        try:
            wait_until(socket_up, timeout, what=f"the control socket of {self.hostname}")
        except DaemonError:
            raise
        except LabError as exc:
            raise DaemonError(f"{exc}\n{self.log_tail()}") from exc
        remaining = max(1.0, deadline - time.monotonic())
        result = self.cli(
            "wait", "ready", "--timeout", f"{remaining:.0f}", check=False, timeout=remaining + 10
        )
        if result.returncode != 0:
            raise DaemonError(
                f"daemon {self.hostname} not ready: {result.stderr or result.stdout}\n{self.log_tail()}"
            )

    def stop(self, timeout: float = DAEMON_STOP_TIMEOUT) -> int | None:
        """SIGTERM (then SIGKILL after ``timeout``); returns the exit status."""
        status = None
        if self.process is not None:
            status = Lab.stop_process(self.process, timeout)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return status

    def restart(self, *, wait_ready: bool = True, timeout: float = DAEMON_START_TIMEOUT) -> Daemon:
        self.stop()
        return self.start(wait_ready=wait_ready, timeout=timeout)

    def remove_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _exit_status(self) -> str:
        return "not started" if self.process is None else f"exit status {self.process.poll()}"

    # --- CLI --------------------------------------------------------------------------
    def cli_argv(self, *args: str) -> list[str]:
        return [*husarnet_ros_command(), "--control-socket", str(self.control_socket), *args]

    def cli(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a CLI command against this daemon, inside its namespace."""
        argv = self.host.exec_argv(self.cli_argv(*args))
        result = run_command(argv, check=False, timeout=timeout, env=husarnet_ros_env())
        if check and result.returncode != 0:
            raise DaemonError(
                f"`husarnet-ros {' '.join(args)}` on {self.hostname} exited with {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def json(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> Any:
        result = self.cli(*args, "--json", timeout=timeout)
        try:
            return json.loads(result.stdout)
        except ValueError as exc:
            raise DaemonError(
                f"`husarnet-ros {' '.join(args)} --json` printed no JSON: {result.stdout!r}"
            ) from exc

    # --- shortcuts ----------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.json("whoami")
        return answer

    @property
    def address(self) -> str:
        return str(self.whoami()["address"])

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.json("status")
        return answer

    def whitelist_add(self, address: str) -> None:
        self.cli("whitelist", "add", address)

    def wait_peer(self, address: str, timeout: float = 20.0) -> None:
        self.cli("wait", "peer", address, "--timeout", f"{timeout:.0f}", timeout=timeout + 10)

    def peer(self, address: str) -> dict[str, Any] | None:
        """This daemon's status entry for ``address`` (None if it has none)."""
        for entry in self.status().get("peers", []):
            if entry.get("address") == address:
                return dict(entry)
        return None

    def wait_path(self, address: str, path: str = "direct", timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the status shows ``path`` for the peer; returns its status entry."""

        def reached() -> dict[str, Any] | None:
            entry = self.peer(address)
            return entry if entry and entry.get("path") == path else None

        return wait_until(reached, timeout, interval=0.2, what=f"{path} path {self.hostname} -> {address}")


def start_daemons(hosts: list[Host], hostnames: list[str], **kwargs: Any) -> list[Daemon]:
    """Start one daemon per host (all at once, then wait for each to be ready)."""
    daemons = [Daemon.create(host, name, **kwargs) for host, name in zip(hosts, hostnames, strict=True)]
    for daemon in daemons:
        daemon.start(wait_ready=False)
    for daemon in daemons:
        daemon.wait_ready()
    return daemons


def whitelist_each_other(daemons: list[Daemon]) -> dict[str, str]:
    """Put every daemon on every other's whitelist; returns hostname -> overlay address."""
    addresses = {daemon.hostname: daemon.address for daemon in daemons}
    for daemon in daemons:
        for other in daemons:
            if other is not daemon:
                daemon.whitelist_add(addresses[other.hostname])
    return addresses
