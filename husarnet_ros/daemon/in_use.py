"""What to tell a user whose interface or port is already taken: most likely by Husarnet itself.

husarnet_ros reads Husarnet identities but does not speak Husarnet's wire protocol, and by default it uses
the same interface name (hnet0) and UDP ports (5582 for peers, 5581 for LAN discovery) as Husarnet's
``husarnet-daemon``. The two cannot run side by side with those defaults; the error says so in one line
and names the option that gets around it (docs/OPERATIONS.md, "Coexisting with Husarnet").
"""

from __future__ import annotations

LIKELY_HOLDER = "is Husarnet (husarnet-daemon) or another husarnet-ros daemon running?"


def in_use_message(what: str, remedy: str) -> str:
    """'<what> is in use — is Husarnet ... running? Stop it or <remedy>'."""
    return f"{what} is in use — {LIKELY_HOLDER} Stop it or {remedy}"
