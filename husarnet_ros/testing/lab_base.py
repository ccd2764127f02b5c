"""A base server (``husarnet-ros base-server``) in a lab namespace, for integration tests and the demo.

Its figures come from the status file it keeps (written atomically, every ``status_interval`` seconds);
the process is tracked by the lab, so it is stopped with the lab even when a test fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from husarnet_ros.core.base_client import DEFAULT_BASE_PORT

from .lab_daemon import husarnet_ros_command, husarnet_ros_env
from .netlab import Host, Lab, wait_until

STATUS_INTERVAL_S = 0.2


@dataclass
class LabBaseServer:
    host: Host
    port: int
    workdir: Path
    process: subprocess.Popen[Any] | None = None
    tcp_port: int | None = None  # None: the base server's default (443)

    @classmethod
    def start(cls, host: Host, port: int = DEFAULT_BASE_PORT, tcp_port: int | None = None) -> LabBaseServer:
        server = cls(host, port, Path(tempfile.mkdtemp(prefix=f"{host.netns}-base-")), tcp_port=tcp_port)
        server.restart()
        return server

    @property
    def address(self) -> str:
        """What a daemon is given: ``--base-server`` value."""
        return f"{self.host.ipv4}:{self.port}"

    @property
    def status_file(self) -> Path:
        return self.workdir / "status.json"

    @property
    def log_file(self) -> Path:
        return self.workdir / "base-server.log"

    def restart(self) -> None:
        """Start the process (again, after ``kill``), with none of the state of the one before."""
        self.status_file.unlink(missing_ok=True)
        argv = [*husarnet_ros_command(), "base-server", "--udp-port", str(self.port)]
        argv += ["--status-file", str(self.status_file), "--status-interval", str(STATUS_INTERVAL_S)]
        if self.tcp_port is not None:
            argv += ["--tcp-port", str(self.tcp_port)]
        with self.log_file.open("a") as log:
            self.process = self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT, env=husarnet_ros_env())
        wait_until(self.status_file.exists, 15.0, interval=0.05, what=f"base server in {self.host.netns}")

    def kill(self) -> None:
        """Stop it at once (SIGKILL: no goodbye to anyone, as a crash or a lost network)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            Lab.stop_process(self.process)

    def remove_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.status_file.read_text()))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
