"""A daemon ``Status`` for the tests of the ROS conversions and diagnostics (imported by plain name)."""

from __future__ import annotations

from husarnet_ros.api import PeerStatus, Status


def make_status(peers: list[PeerStatus] | None = None, **changes: object) -> Status:
    """This robot (fc94::1, robot1, whitelist on) with ``peers``; ``changes`` override any field."""
    fields: dict[str, object] = {
        "address": "fc94::1",
        "hostname": "robot1",
        "interface": "hnet0",
        "udp_port": 5582,
        "whitelist_enabled": True,
        "version": "test",
        "uptime_s": 12.5,
        "peers": peers or [],
    }
    fields.update(changes)
    return Status.model_validate(fields)
