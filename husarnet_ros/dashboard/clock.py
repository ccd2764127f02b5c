"""The Dashboard's notion of now: an aware UTC datetime (the service layer takes ``now`` as an argument so
that tests choose it; callers that do not care use this)."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
