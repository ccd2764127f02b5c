"""Messages between a daemon and Websetup (docs/CONTROL_PLANE.md, "Websetup protocol").

Websetup is reached over the overlay at the address its pinned license names, so both ends are authenticated
by the overlay: Websetup knows the device by the connection's source address, the daemon knows Websetup by
the address it connected to. These models are the JSON bodies; they validate everything that crosses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .address import format_address, parse_overlay
from .errors import AddressError
from .hosts import normalize_hostname

API_PREFIX = "/websetup/v1"
# How long Websetup holds a config request open when nothing changed (the daemon asks again at once):
# changes reach the daemon within Websetup's check interval, and a silent peer is noticed within this.
MAX_WAIT_S = 30.0
DEFAULT_WAIT_S = 25.0
MAX_PEERS_IN_REPORT = 1024
MAX_ENTRIES = 10_000
JOIN_CODE_MAX_LENGTH = 64


def _overlay_text(value: str) -> str:
    try:
        return format_address(parse_overlay(value))
    except AddressError as exc:
        raise ValueError(str(exc)) from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostRecord(_Model):
    """A name another device of the same networks goes by."""

    hostname: str = Field(max_length=253)
    address: str

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return normalize_hostname(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _overlay_text(value)


class DeviceConfig(_Model):
    """What Websetup wants a device to have: the peers it may talk to and their names. ``revision`` grows
    with every change anywhere in the installation; a daemon asks for changes after the one it has."""

    revision: int = Field(ge=0)
    hostname: str = Field(max_length=253)
    whitelist: list[str] = Field(max_length=MAX_ENTRIES)
    hosts: list[HostRecord] = Field(max_length=MAX_ENTRIES)

    @field_validator("whitelist")
    @classmethod
    def _whitelist(cls, value: list[str]) -> list[str]:
        return sorted({_overlay_text(item) for item in value})


class JoinRequest(_Model):
    code: str = Field(min_length=1, max_length=JOIN_CODE_MAX_LENGTH, pattern=r"^[A-Za-z0-9_-]+$")
    hostname: str | None = Field(default=None, max_length=253)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        return None if value is None else normalize_hostname(value)


class JoinResult(_Model):
    device_id: int
    account: str
    network: str | None = None
    config: DeviceConfig


class PeerLink(_Model):
    """One link a daemon sees, for the Dashboard's picture of a network."""

    address: str
    path: Literal["direct", "tunnelled", "down"]
    base_server: str | None = Field(default=None, max_length=300)
    rtt_ms: float | None = Field(default=None, ge=0, le=600_000)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _overlay_text(value)


class PeerReport(_Model):
    peers: list[PeerLink] = Field(max_length=MAX_PEERS_IN_REPORT)


class Problem(_Model):
    """Every 4xx answer: what went wrong, in a sentence a person can act on."""

    detail: str
