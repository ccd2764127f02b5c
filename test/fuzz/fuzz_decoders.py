"""Coverage-guided fuzzing of every decoder with atheris (by hand, not in CI).

    /work/main/.venv/bin/pip install atheris
    cd /work/main && PYTHONPATH=. .venv/bin/python test/fuzz/fuzz_decoders.py -max_total_time=60

The first input byte picks the target; only the module's own error type may escape (for the Node, nothing),
anything else is reported by atheris as a crash with the input that caused it.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from husarnet_ros.core import beacon, handshake, wire
    from husarnet_ros.core.errors import IdentityError, ProtocolError
    from husarnet_ros.core.identity import Identity
    from husarnet_ros.core.session import Session
    from husarnet_ros.testing.memnet import MemNet, ipv6_packet

# Fixed seeds that pass the address proof of work are found once at start-up.
_IDENTITIES = []
for _counter in range(1_000_000):
    try:
        _IDENTITIES.append(Identity.from_seed(_counter.to_bytes(32, "big")))
    except IdentityError:
        continue
    if len(_IDENTITIES) == 2:
        break
INITIATOR, RESPONDER = _IDENTITIES

_INIT, _I_STATE = handshake.start(INITIATOR, RESPONDER.address, 1, 2, bytes(range(32)))
_RESPONSE, _R_STATE = handshake.respond(RESPONDER, _INIT, 3, bytes(range(32, 64)))
_CONFIRM, _I_KEYS = handshake.finish_initiator(INITIATOR, _I_STATE, _RESPONSE)
_RECEIVER = Session(handshake.finish_responder(_R_STATE, _CONFIRM), 0.0)

_NET = MemNet()
_A, _EA = _NET.add(INITIATOR)
_B, _EB = _NET.add(RESPONDER)
_NET.introduce(_EA, _EB)
_NET.advance(2)
_NET.send(_EB, ipv6_packet(RESPONDER.address, INITIATOR.address, b"seed"))


def _decoders(data: bytes) -> None:
    for decoder in (wire.decode_init, wire.decode_response, wire.decode_confirm, wire.decode_data_header):
        with contextlib.suppress(ProtocolError):
            decoder(data)
    with contextlib.suppress(ProtocolError):
        wire.decompress_ipv6(data, bytes(16), bytes(16))


def _handshake(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        handshake.respond(RESPONDER, data, 5, bytes(range(64, 96)))
    with contextlib.suppress(ProtocolError):
        handshake.finish_initiator(INITIATOR, _I_STATE, data)
    with contextlib.suppress(ProtocolError):
        handshake.finish_responder(_R_STATE, data)


def _session(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        _RECEIVER.open_(data)


def _beacon(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        beacon.decode(data)


def _identity(data: bytes) -> None:
    with contextlib.suppress(IdentityError):
        Identity.from_file_text(data.decode("utf-8", "replace"))


def _node(data: bytes) -> None:
    _A.receive_data(data, _EB, _NET.now)
    _A.receive_control(data, _EB, _NET.now)
    _A.tick(_NET.now)
    _A.outbox.clear()


_TARGETS = (_decoders, _handshake, _session, _beacon, _identity, _node)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    _TARGETS[data[0] % len(_TARGETS)](data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
