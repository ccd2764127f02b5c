"""The Dashboard's tables (docs/CONTROL_PLANE.md, "Database") as typed SQLAlchemy models.

The schema itself is made only by the Alembic migrations in ``migrations/``; a test checks that they and these
models agree. Constraint names come from one naming convention so that both spell them the same way.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

USERNAME_MAX_LENGTH = 64
NAME_MAX_LENGTH = 100
HOSTNAME_MAX_LENGTH = 253
ADDRESS_MAX_LENGTH = 39  # the longest text form of an IPv6 address
CODE_MAX_LENGTH = 64
ROLE_READ = "read"
ROLE_MANAGE = "manage"


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, always handed out as an aware UTC ``datetime``: SQLite keeps no time zone, so what
    comes back from it is naive and is UTC by this column's definition."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a naive datetime has no defined time: pass an aware one (UTC)")
        aware = value.astimezone(timezone.utc)
        return aware.replace(tzinfo=None) if dialect.name == "sqlite" else aware

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Installation(Base):
    __tablename__ = "installation"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Meta(Base):
    """Installation-wide values by key: ``config_revision``, ``max_devices``."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX_LENGTH), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ApiToken(Base):
    __tablename__ = "api_token"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_api_token_account_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class BrowserSession(Base):
    __tablename__ = "browser_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Network(Base):
    __tablename__ = "network"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_network_owner_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    join_code: Mapped[str | None] = mapped_column(String(CODE_MAX_LENGTH), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

    owner: Mapped[Account] = relationship(lazy="joined")


class Device(Base):
    __tablename__ = "device"
    __table_args__ = (UniqueConstraint("owner_id", "hostname", name="uq_device_owner_id_hostname"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX_LENGTH), unique=True)
    hostname: Mapped[str] = mapped_column(String(HOSTNAME_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    owner: Mapped[Account] = relationship(lazy="joined")


class Membership(Base):
    __tablename__ = "membership"

    network_id: Mapped[int] = mapped_column(ForeignKey("network.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("device.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Share(Base):
    __tablename__ = "share"

    network_id: Mapped[int] = mapped_column(ForeignKey("network.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(10))


class AccountJoinCode(Base):
    __tablename__ = "account_join_code"

    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), primary_key=True)
    code: Mapped[str] = mapped_column(String(CODE_MAX_LENGTH), unique=True)


class PeerReportRow(Base):
    """The latest links one device reported (one row per device, replaced by each report)."""

    __tablename__ = "peer_report"

    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"), primary_key=True)
    reported_at: Mapped[datetime] = mapped_column(UtcDateTime())
    links: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class AuditEntry(Base):
    """One change. ``account_id`` (the account whose object changed) and ``network_id`` (the network it
    concerns) decide who may read the entry; they are plain numbers, not foreign keys, so that the history
    outlives the objects."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(300))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    network_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
