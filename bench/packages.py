"""The Debian packages the benchmark's paths need, installed when missing (or reported, with --no-install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable

# Command -> the Debian package that ships it.
PACKAGE_OF = {
    "ip": "iproute2",
    "ss": "iproute2",
    "ping": "iputils-ping",
    "iperf3": "iperf3",
    "wg": "wireguard-tools",
    "wireguard-go": "wireguard-go",
    "tincd": "tinc",
    "nebula": "nebula",
    "nebula-cert": "nebula",
    "edge": "n2n",
    "supernode": "n2n",
}
APT_TIMEOUT_S = 600.0


class MissingTools(RuntimeError):
    """Commands the benchmark needs are not installed (and could not be, or were not to be)."""


def missing_commands(commands: Iterable[str]) -> list[str]:
    return sorted({command for command in commands if shutil.which(command) is None})


def ensure_commands(commands: Iterable[str], *, install: bool) -> None:
    """Install the packages of the missing ``commands`` with apt-get; raise MissingTools if that fails."""
    missing = missing_commands(commands)
    if not missing:
        return
    packages = sorted({PACKAGE_OF[command] for command in missing})
    hint = f"apt-get install --no-install-recommends {' '.join(packages)}"
    if not install:
        raise MissingTools(f"missing commands {', '.join(missing)}: install them with `{hint}`")
    print(
        f"dataplane benchmark: installing {', '.join(packages)} for {', '.join(missing)} ({hint})",
        file=sys.stderr,
    )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if _apt(argv, env) != 0:
        # A fresh machine may have no package lists yet: fetch them once and try again.
        _apt(["apt-get", "update"], env)
        if _apt(argv, env) != 0:
            raise MissingTools(
                f"`{' '.join(argv)}` failed; install {', '.join(packages)} by hand or use --paths"
            )
    still = missing_commands(missing)
    if still:
        raise MissingTools(f"installed {', '.join(packages)} but still no {', '.join(still)} on PATH")


def _apt(argv: list[str], env: dict[str, str]) -> int:
    try:
        return subprocess.run(argv, env=env, timeout=APT_TIMEOUT_S, check=False, stdout=sys.stderr).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"dataplane benchmark: {' '.join(argv)}: {exc}", file=sys.stderr)
        return 1
