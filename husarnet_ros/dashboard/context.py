"""What every part of a running Dashboard shares: settings, database, license key. ``app.create_app`` makes
one and hands it to each router (api.py, and ui.py / picture_api.py when present)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from nacl.signing import SigningKey
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..core.license import License, fingerprint
from .clock import utc_now
from .db import SessionFactory, run_in_transaction, transaction
from .license_key import current_license
from .login_guard import LoginGuard
from .settings import DashboardSettings

# license.json is signed again this often, so that its validity keeps running from "now".
LICENSE_REISSUE_INTERVAL = timedelta(hours=1)

T = TypeVar("T")


@dataclass
class DashboardContext:
    settings: DashboardSettings
    engine: Engine
    sessions: SessionFactory
    license_key: SigningKey
    installation_id: str
    _license: License | None = field(default=None, repr=False)
    _license_at: datetime | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    login_guard: LoginGuard = field(default_factory=LoginGuard, repr=False)  # shared by the API and the UI

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work (see db.transaction)."""
        with transaction(self.sessions) as session:
            yield session

    def run(self, work: Callable[[Session], T]) -> T:
        """``work`` in one transaction, retried after a deadlock (see db.run_in_transaction)."""
        return run_in_transaction(self.sessions, work)

    @property
    def fingerprint(self) -> str:
        return fingerprint(bytes(self.license_key.verify_key))

    def license(self, now: datetime | None = None) -> License:
        """The current license (LicenseError if the settings cannot make one)."""
        moment = now or utc_now()
        with self._lock:
            if (
                self._license is None
                or self._license_at is None
                or moment - self._license_at >= LICENSE_REISSUE_INTERVAL
                or moment < self._license_at
            ):
                self._license = current_license(self.settings, self.license_key, self.installation_id, moment)
                self._license_at = moment
            return self._license
