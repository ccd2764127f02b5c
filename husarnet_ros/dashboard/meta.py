"""Installation-wide values: the installation row, the configuration revision and the device limit.

``config_revision`` grows in the same transaction as every change that can alter a device's whitelist or
hosts; Websetup compares it with the one a daemon has. ``lock_revision`` takes the row's lock first (SELECT
... FOR UPDATE on PostgreSQL; SQLite transactions are already exclusive, see db.py), so concurrent changes
are serialised and a claim checks the device limit against a count no one else is changing.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Installation, Meta

REVISION_KEY = "config_revision"
MAX_DEVICES_KEY = "max_devices"


def ensure_installation(session: Session, name: str, now: datetime) -> Installation:
    """The one installation row, created on first start with a fresh UUID; its name follows the settings."""
    row = session.scalars(select(Installation).order_by(Installation.created_at).limit(1)).first()
    if row is None:
        row = Installation(id=str(uuid.uuid4()), name=name, created_at=now)
        session.add(row)
    elif row.name != name:
        row.name = name
    session.flush()
    return row


def _get(session: Session, key: str, *, for_update: bool = False) -> Meta | None:
    query = select(Meta).where(Meta.key == key)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).first()


def _as_int(row: Meta | None) -> int:
    if row is None:
        return 0
    try:
        return int(row.value)
    except ValueError:
        return 0


def current_revision(session: Session) -> int:
    """The installation's configuration revision (0 before the first change)."""
    return _as_int(_get(session, REVISION_KEY))


def lock_revision(session: Session) -> int:
    """The revision, with its row locked until the transaction ends."""
    return _as_int(_get(session, REVISION_KEY, for_update=True))


def bump_revision(session: Session) -> int:
    """Raise the revision by one (in the caller's transaction) and return the new value."""
    row = _get(session, REVISION_KEY, for_update=True)
    if row is None:
        row = Meta(key=REVISION_KEY, value="0")
        session.add(row)
    value = _as_int(row) + 1
    row.value = str(value)
    session.flush()
    return value


def device_limit(session: Session) -> int | None:
    """How many devices the license allows (None: not set, no limit)."""
    row = _get(session, MAX_DEVICES_KEY)
    return None if row is None else _as_int(row)


def set_device_limit(session: Session, limit: int) -> None:
    """Record the license's ``max_devices`` where Websetup's claims read it (the Dashboard does at start)."""
    row = _get(session, MAX_DEVICES_KEY)
    if row is None:
        session.add(Meta(key=MAX_DEVICES_KEY, value=str(limit)))
    else:
        row.value = str(limit)
    session.flush()
