"""Processes a launch starts end with the launch, however it ends (Linux PR_SET_PDEATHSIG).

`ros2 launch` stops what it started on Ctrl-C (SIGINT), but a SIGTERM (``docker stop``, ``kill``,
systemd) ends the launch process at once and leaves every child running: the daemon keeps ``hnet0`` up,
the nodes keep publishing, and nothing will ever stop them. So the launch files put
``HUSARNET_ROS_EXIT_WITH_PARENT=<pid of the launch>`` (:func:`child_environment`) into the environment of
the daemon and of each node they start, and those call :func:`exit_with_parent_if_asked` early: from then
on the kernel sends them SIGTERM when the launch exits for any reason, and they stop as they do on any
SIGTERM (the nodes shut down, the daemon removes ``hnet0``).

Two Linux rules shape how it is used:

* the signal is tied to the parent *thread* that forked the child and to the child's credentials: it is
  cleared when the child changes its uid or euid, so the daemon calls it only after it dropped root;
* a parent that died before the call is not noticed by the kernel, so the call then checks the parent pid
  and raises :class:`ParentExited` when the launch is already gone.

Without the variable (a daemon run as a service, a node started by hand) nothing changes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

from .core.errors import ConfigError, HusarnetError

EXIT_WITH_PARENT_ENV = "HUSARNET_ROS_EXIT_WITH_PARENT"


class ParentExited(HusarnetError):
    """The launch that started this process exited before the process could tie its life to it."""


def child_environment(parent_pid: int | None = None) -> dict[str, str]:
    """The variable to give a child so that it ends with ``parent_pid`` (default: this process)."""
    return {EXIT_WITH_PARENT_ENV: str(os.getpid() if parent_pid is None else parent_pid)}


def _asked_parent(environ: Mapping[str, str]) -> int | None:
    value = environ.get(EXIT_WITH_PARENT_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) <= 1:
        raise ConfigError(
            f"{EXIT_WITH_PARENT_ENV} must be the process id of the launch that started this process, "
            f"got {value[:40]!r}; unset it to run on its own"
        )
    return int(value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else (a root launch seen by a daemon that dropped root)
    return True


def exit_with_parent_if_asked(environ: Mapping[str, str] | None = None, sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` when the launch named in the environment exits; False when not asked.

    Raises ParentExited when that launch is already gone (so the caller stops now, as the signal would
    have made it), ConfigError for a malformed variable, PrivilegeError when prctl fails.
    """
    from .daemon.privileges import set_parent_death_signal

    parent = _asked_parent(os.environ if environ is None else environ)
    if parent is None:
        return False
    set_parent_death_signal(sig)
    # After the prctl: a launch that exits from now on is signalled; one that exited before is seen here.
    # Another parent pid with the launch still alive means a wrapper in between (a launch prefix): its
    # death, which follows the launch's, then sends the signal.
    if os.getppid() != parent and not _alive(parent):
        raise ParentExited(
            f"the launch that started this process (pid {parent}) has already exited; not starting"
        )
    return True
