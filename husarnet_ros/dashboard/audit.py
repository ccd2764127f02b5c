"""The audit log: one entry per change, and what each account may read of it.

An account reads the entries about its own objects (``account_id``), the ones it made itself (``actor``) and
those about networks it can see (``network_id``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from .access import visible_network_ids
from .models import Account, AuditEntry, Network

SYSTEM_ACTOR = "system"
MAX_AUDIT_PAGE = 500


def device_actor(address: str) -> str:
    return f"device:{address}"


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object: str,
    now: datetime,
    account_id: int | None,
    network_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=now,
        actor=actor[:300],
        action=action,
        object=object[:300],
        details=details or {},
        account_id=account_id,
        network_id=network_id,
    )
    session.add(entry)
    session.flush()
    return entry


def record_account_change(
    session: Session,
    account: Account,
    action: str,
    object: str,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """A change ``account`` made to something of its own (its password, tokens, devices): seen by it."""
    return record(
        session,
        actor=account.username,
        action=action,
        object=object,
        now=now,
        account_id=account.id,
        details=details,
    )


def record_network_change(
    session: Session,
    account: Account,
    network: Network,
    action: str,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """A change to ``network`` by ``account``: seen by its owner and by everyone who sees the network."""
    return record(
        session,
        actor=account.username,
        action=action,
        object=f"network:{network.id}",
        now=now,
        account_id=network.owner_id,
        network_id=network.id,
        details=details,
    )


def list_audit(
    session: Session, account: Account, *, limit: int = 100, before_id: int | None = None
) -> list[AuditEntry]:
    """The newest entries ``account`` may read, newest first; ``before_id`` pages further back."""
    limit = max(1, min(limit, MAX_AUDIT_PAGE))
    query = select(AuditEntry).where(
        or_(
            AuditEntry.account_id == account.id,
            AuditEntry.actor == account.username,
            AuditEntry.network_id.in_(visible_network_ids(account)),
        )
    )
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))
