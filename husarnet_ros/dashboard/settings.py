"""What an operator chooses for their Dashboard (``husarnet-ros dashboard serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..core.license import DEFAULT_WEBSETUP_PORT
from .db import default_url

DEFAULT_DATA_DIR = Path("/var/lib/husarnet-ros-dashboard")
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_NAME = "husarnet-ros"
DEFAULT_MAX_DEVICES = 1000
DEFAULT_LICENSE_VALIDITY = timedelta(days=365)
DEFAULT_SESSION_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class DashboardSettings:
    data_dir: Path = DEFAULT_DATA_DIR
    # None: the SQLite file in data_dir.
    database_url: str | None = None
    name: str = DEFAULT_NAME
    public_url: str = f"http://{DEFAULT_LISTEN}"
    base_servers: tuple[str, ...] = ()
    # None: no Websetup yet; license.json cannot be issued until there is one.
    websetup_address: str | None = None
    websetup_port: int = DEFAULT_WEBSETUP_PORT
    max_devices: int = DEFAULT_MAX_DEVICES
    license_validity: timedelta = DEFAULT_LICENSE_VALIDITY
    session_lifetime: timedelta = DEFAULT_SESSION_LIFETIME

    @property
    def url(self) -> str:
        """The database URL in use."""
        return self.database_url or default_url(self.data_dir)
