"""The REST API's bodies and answers (pydantic): what crosses the wire, separate from the tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .accounts import PASSWORD_MAX_LENGTH
from .models import HOSTNAME_MAX_LENGTH, NAME_MAX_LENGTH, USERNAME_MAX_LENGTH


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    username: str = Field(max_length=USERNAME_MAX_LENGTH)
    password: str = Field(max_length=PASSWORD_MAX_LENGTH)


class PasswordChangeIn(_In):
    current_password: str = Field(max_length=PASSWORD_MAX_LENGTH)
    new_password: str = Field(max_length=PASSWORD_MAX_LENGTH)


class NameIn(_In):
    name: str = Field(max_length=NAME_MAX_LENGTH)


class HostnameIn(_In):
    hostname: str = Field(max_length=HOSTNAME_MAX_LENGTH)


class ShareIn(_In):
    role: Literal["read", "manage"]


class SessionOut(BaseModel):
    username: str
    csrf_token: str | None = Field(description="Send it as X-CSRF-Token on every state-changing request")
    expires_at: datetime | None


class AccountOut(BaseModel):
    username: str
    created_at: datetime
    join_code: str = Field(description="Claims a device into this account (no network)")


class JoinCodeOut(BaseModel):
    join_code: str


class TokenOut(BaseModel):
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret, shown only now: keep it")


class NetworkOut(BaseModel):
    id: int
    name: str
    owner: str
    role: Literal["owner", "manage", "read"]
    join_code: str | None = Field(description="Only its owner sees it")
    device_count: int
    created_at: datetime


class DeviceOut(BaseModel):
    id: int
    hostname: str
    address: str
    owner: str
    online: bool
    last_seen_at: datetime | None
    created_at: datetime
    networks: list[int] = Field(description="Ids of the networks it is in that this account sees")


class ShareOut(BaseModel):
    username: str
    role: Literal["read", "manage"]


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    object: str
    details: dict[str, Any]


class LinkDeviceOut(BaseModel):
    id: int
    hostname: str
    address: str
    online: bool
    last_seen_at: datetime | None


class LinkOut(BaseModel):
    source_id: int
    target_id: int
    path: Literal["direct", "tunnelled", "down"]
    base_server: str | None
    rtt_ms: float | None
    reported_at: datetime


class NetworkLinksOut(BaseModel):
    network_id: int
    name: str
    devices: list[LinkDeviceOut]
    links: list[LinkOut]


class InstallationOut(BaseModel):
    installation_id: str
    name: str
    dashboard_url: str
    fingerprint: str = Field(description="Of the license key: compare with setup-server --fingerprint")
    max_devices: int
    devices: int


class ErrorOut(BaseModel):
    detail: str
