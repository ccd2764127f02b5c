"""An established session: AEAD sealing and opening of data frames with replay protection.

Data frames are sealed with XChaCha20-Poly1305 (libsodium) under a random 192-bit nonce;
the 16-byte header (type, receiver index, counter) is the associated data, and the counter
feeds the replay window.

Who writes what (the daemon runs a send thread, a receive thread and the control loop):

- ``seal`` may run in any thread: the counter is an ``itertools.count``, whose ``next`` is atomic under
  the GIL, so no two frames share a counter. ``sent_messages`` is written by every sealer and may lag by
  the frames being sealed at that instant (it only feeds the rekey-after-messages threshold).
- ``open_``, ``replay`` and ``last_received`` belong to the receive thread.
- ``first_unanswered_send`` belongs to the send thread (data frames only).
- ``confirmed`` belongs to the control loop.
libsodium releases the GIL, so the two directions encrypt in parallel.
"""

from __future__ import annotations

import itertools
import os

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from . import wire
from .constants import REJECT_AFTER_MESSAGES
from .errors import AuthenticationError, ProtocolError, ReplayError
from .handshake import SessionKeys
from .replay import ReplayWindow


class Session:
    __slots__ = (
        "_counter",
        "_receive_key",
        "_send_key",
        "confirm_posted",
        "confirmed",
        "created_at",
        "first_unanswered_send",
        "is_initiator",
        "last_received",
        "local_index",
        "peer_address",
        "remote_index",
        "replay",
        "sent_messages",
    )

    def __init__(self, keys: SessionKeys, now: float) -> None:
        self.peer_address = keys.peer_address
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.is_initiator = keys.is_initiator
        self._send_key = keys.send_key
        self._receive_key = keys.receive_key
        self._counter = itertools.count()
        self.replay = ReplayWindow()
        self.created_at = now
        self.last_received = now
        # The first data frame sent after the last authenticated frame received: how long traffic has gone
        # unanswered (the control loop's dead-path detection). Not later than last_received: nothing pending.
        self.first_unanswered_send = now
        self.confirm_posted = False  # the receive thread told the control loop this session works
        self.sent_messages = 0
        # The responder knows the initiator has the keys (it verified the confirm); the
        # initiator knows the responder has them only when a frame from it authenticates.
        self.confirmed = not keys.is_initiator

    def seal(self, inner: bytes) -> bytes:
        """A whole data datagram carrying ``inner`` (inner type byte + body)."""
        counter = next(self._counter)
        if counter >= REJECT_AFTER_MESSAGES:
            raise ProtocolError("session exhausted its message counter")
        self.sent_messages = counter + 1
        header = wire.encode_data_header(self.remote_index, counter)
        nonce = os.urandom(wire.NONCE_SIZE)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(inner, header, nonce, self._send_key)
        return header + nonce + sealed

    def open_(self, datagram: bytes) -> bytes:
        """The inner frame of ``datagram``; ProtocolError if forged, corrupt, replayed or too old."""
        _, counter = wire.decode_data_header(datagram)
        if not self.replay.check(counter):
            raise ReplayError("replayed or too old data frame")
        try:
            inner = crypto_aead_xchacha20poly1305_ietf_decrypt(
                datagram[wire.DATA_HEADER_SIZE :],
                datagram[: wire.DATA_AD_SIZE],
                datagram[wire.DATA_AD_SIZE : wire.DATA_HEADER_SIZE],
                self._receive_key,
            )
        except CryptoError:  # a bad tag
            raise AuthenticationError("data frame failed authentication") from None
        if not self.replay.accept(counter):
            raise ReplayError("replayed data frame")
        if not inner:
            raise ProtocolError("empty inner frame")
        return bytes(inner)
