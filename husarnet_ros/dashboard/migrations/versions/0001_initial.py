"""The first schema: every table of docs/CONTROL_PLANE.md ("Database").

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _account_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"], ["account.id"], name=f"fk_{table}_account_id", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "installation",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_installation"),
    )
    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_meta"),
    )
    op.bulk_insert(meta, [{"key": "config_revision", "value": "0"}])
    op.create_table(
        "account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_account"),
        sa.UniqueConstraint("username", name="uq_account_username"),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        _time("created_at"),
        _time("last_used_at", nullable=True),
        _account_fk("api_token"),
        sa.PrimaryKeyConstraint("id", name="pk_api_token"),
        sa.UniqueConstraint("account_id", "name", name="uq_api_token_account_id_name"),
        sa.UniqueConstraint("token_hash", name="uq_api_token_token_hash"),
    )
    op.create_index("ix_api_token_account_id", "api_token", ["account_id"])
    op.create_table(
        "browser_session",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        _time("created_at"),
        _time("expires_at"),
        _account_fk("browser_session"),
        sa.PrimaryKeyConstraint("id_hash", name="pk_browser_session"),
    )
    op.create_index("ix_browser_session_account_id", "browser_session", ["account_id"])
    op.create_table(
        "network",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("join_code", sa.String(64), nullable=True),
        _time("created_at"),
        sa.ForeignKeyConstraint(["owner_id"], ["account.id"], name="fk_network_owner_id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_network"),
        sa.UniqueConstraint("join_code", name="uq_network_join_code"),
        sa.UniqueConstraint("owner_id", "name", name="uq_network_owner_id_name"),
    )
    op.create_index("ix_network_owner_id", "network", ["owner_id"])
    op.create_table(
        "device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(39), nullable=False),
        sa.Column("hostname", sa.String(253), nullable=False),
        _time("created_at"),
        _time("last_seen_at", nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["account.id"], name="fk_device_owner_id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_device"),
        sa.UniqueConstraint("address", name="uq_device_address"),
        sa.UniqueConstraint("owner_id", "hostname", name="uq_device_owner_id_hostname"),
    )
    op.create_index("ix_device_owner_id", "device", ["owner_id"])
    op.create_table(
        "membership",
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"], ["network.id"], name="fk_membership_network_id", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name="fk_membership_device_id", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("network_id", "device_id", name="pk_membership"),
    )
    op.create_index("ix_membership_device_id", "membership", ["device_id"])
    op.create_table(
        "share",
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"], ["network.id"], name="fk_share_network_id", ondelete="CASCADE"
        ),
        _account_fk("share"),
        sa.PrimaryKeyConstraint("network_id", "account_id", name="pk_share"),
    )
    op.create_index("ix_share_account_id", "share", ["account_id"])
    op.create_table(
        "account_join_code",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        _account_fk("account_join_code"),
        sa.PrimaryKeyConstraint("account_id", name="pk_account_join_code"),
        sa.UniqueConstraint("code", name="uq_account_join_code_code"),
    )
    op.create_table(
        "peer_report",
        sa.Column("device_id", sa.Integer(), nullable=False),
        _time("reported_at"),
        sa.Column("links", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name="fk_peer_report_device_id", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_peer_report"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        _time("at"),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object", sa.String(300), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("network_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_account_id", "audit", ["account_id"])
    op.create_index("ix_audit_network_id", "audit", ["network_id"])


def downgrade() -> None:
    for table in (
        "audit",
        "peer_report",
        "account_join_code",
        "share",
        "membership",
        "device",
        "network",
        "browser_session",
        "api_token",
        "account",
        "meta",
        "installation",
    ):
        op.drop_table(table)
