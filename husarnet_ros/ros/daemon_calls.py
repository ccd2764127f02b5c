"""Control API calls with their arguments bound, for ``DaemonLink.call`` / ``DaemonLink.request``.

Binding the arguments in a function (not a lambda in a loop) means a loop never captures its variable late.
"""

from __future__ import annotations

from collections.abc import Callable

from ..api import HostEntry, Whitelist
from ..client import ControlClient, NotFound


def whitelist_add(address: str) -> Callable[[ControlClient], Whitelist]:
    return lambda client: client.whitelist_add(address)


def whitelist_remove(address: str) -> Callable[[ControlClient], bool]:
    """True when the address was removed, False when it was not on the whitelist."""

    def remove(client: ControlClient) -> bool:
        try:
            client.whitelist_remove(address)
        except NotFound:
            return False
        return True

    return remove


def hosts_add(hostname: str, address: str) -> Callable[[ControlClient], list[HostEntry]]:
    return lambda client: client.hosts_add(hostname, address)


def hosts_remove(hostname: str) -> Callable[[ControlClient], list[HostEntry]]:
    """Removes the entry; the managed block afterwards, also when someone else removed it first."""

    def remove(client: ControlClient) -> list[HostEntry]:
        try:
            return client.hosts_remove(hostname)
        except NotFound:  # already gone: the goal is reached
            return client.hosts()

    return remove
