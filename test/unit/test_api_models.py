"""Models of the control API: validation and normalisation shared by the server and the client."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from husarnet_ros.api import (
    CONTROL_SOCKET_ENV,
    DEFAULT_CONTROL_SOCKET,
    AddressRequest,
    HostEntry,
    PeerStatus,
    PingRequest,
    Status,
    Whitelist,
    normalize_overlay,
    resolve_control_socket,
)
from husarnet_ros.core.errors import AddressError


def test_addresses_are_normalised_to_compressed_lower_case() -> None:
    assert normalize_overlay("FC94:0000:0:0::0002") == "fc94::2"
    assert AddressRequest(address=" fc94:0::2 ").address == "fc94::2"
    assert Whitelist(enabled=True, addresses=["FC94::1", "fc94:0::3"]).addresses == ["fc94::1", "fc94::3"]


@pytest.mark.parametrize("text", ["", "nope", "fd00::1", "10.0.0.1", "fc94::1::2", "fc94::1\nfc94::2"])
def test_non_overlay_addresses_are_rejected(text: str) -> None:
    with pytest.raises(AddressError):
        normalize_overlay(text)
    with pytest.raises(ValidationError):
        AddressRequest(address=text)


def test_host_entries_validate_and_lower_case_the_name() -> None:
    assert HostEntry(hostname="Robot-2.Fleet", address="fc94::2").hostname == "robot-2.fleet"
    for bad in ["", "a b", "-robot", "robot-", "ro\nbot", "x" * 64, "a#b", "localhost", "10.0.0.1"]:
        with pytest.raises(ValidationError):
            HostEntry(hostname=bad, address="fc94::2")


def test_unknown_fields_are_rejected_not_ignored() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        AddressRequest.model_validate({"address": "fc94::2", "adress": "fc94::3"})


def test_peer_path_is_one_of_three_words() -> None:
    assert PeerStatus(address="fc94::2", path="tunnelled").path == "tunnelled"
    with pytest.raises(ValidationError):
        PeerStatus(address="fc94::2", path="relayed")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"count": 0},
        {"count": 1001},
        {"interval_s": 0.0},
        {"interval_s": 61},
        {"timeout_s": 0},
        {"timeout_s": 1e9},
        {"target": ""},
    ],
)
def test_ping_request_bounds(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PingRequest.model_validate({"target": "robot2", **fields})


def test_ping_request_worst_case() -> None:
    assert PingRequest(target="x", count=3, interval_s=0.5, timeout_s=2.0).worst_case_s() == 3.0


def test_status_round_trips_through_json() -> None:
    status = Status(
        address="fc94::1",
        hostname="robot1",
        interface="hnet0",
        udp_port=5582,
        whitelist_enabled=True,
        version="1",
        uptime_s=1.0,
        counters={"drop": 2},
        peers=[PeerStatus(address="fc94::2", path="direct", endpoint="198.18.0.2:5582", rtt_ms=0.5)],
    )
    assert Status.model_validate_json(status.model_dump_json()) == status


def test_control_socket_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTROL_SOCKET_ENV, raising=False)
    assert resolve_control_socket(None) == str(DEFAULT_CONTROL_SOCKET)
    monkeypatch.setenv(CONTROL_SOCKET_ENV, "/tmp/from-env.sock")
    assert resolve_control_socket(None) == "/tmp/from-env.sock"
    assert resolve_control_socket("/tmp/explicit.sock") == "/tmp/explicit.sock"
    monkeypatch.setenv(CONTROL_SOCKET_ENV, "")
    assert resolve_control_socket(None) == str(DEFAULT_CONTROL_SOCKET)
