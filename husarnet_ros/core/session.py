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
- ``confirmed``, ``features_sent`` and ``features_next_at`` belong to the control loop; ``peer_features`` is
  written by the receive thread and read by the others.
libsodium releases the GIL, so the two directions encrypt in parallel.
"""

from __future__ import annotations

import itertools
import os

from . import aead, wire
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
        "features_next_at",
        "features_sent",
        "first_unanswered_send",
        "is_initiator",
        "last_received",
        "local_index",
        "peer_address",
        "peer_features",
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
        # What the peer said it understands (wire.INNER_FEATURES), 0 until it says: written by the receive
        # thread, read by the send thread. features_sent/features_next_at: the control loop's retries.
        self.peer_features = 0
        self.features_sent = 0
        self.features_next_at = now

    def seal(self, inner: bytes) -> bytes:
        """A whole data datagram carrying ``inner`` (inner type byte + body)."""
        size = len(inner)
        datagram = bytearray(wire.DATA_HEADER_SIZE + size + wire.TAG_SIZE)
        datagram[wire.DATA_HEADER_SIZE : wire.DATA_HEADER_SIZE + size] = inner
        self.seal_in_place(datagram, aead.pointer(datagram), 0, size, os.urandom(wire.NONCE_SIZE))
        return bytes(datagram)

    def seal_in_place(
        self, buffer: bytearray, base: aead.Pointer, start: int, size: int, nonce: bytes | memoryview
    ) -> int:
        """Turn the inner frame of ``size`` bytes at ``buffer[start + DATA_HEADER_SIZE:]`` into a datagram
        at ``buffer[start:]`` (header and ``nonce`` in front, tag behind); returns the datagram's length.
        ``base`` is ``aead.pointer(buffer)``."""
        counter = next(self._counter)
        if counter >= REJECT_AFTER_MESSAGES:
            raise ProtocolError("session exhausted its message counter")
        self.sent_messages = counter + 1
        wire.DATA_HEADER.pack_into(buffer, start, wire.MSG_DATA, self.remote_index, counter)
        nonce_at = start + wire.DATA_AD_SIZE
        buffer[nonce_at : nonce_at + wire.NONCE_SIZE] = nonce
        aead.encrypt_in_place(
            base, start + wire.DATA_HEADER_SIZE, size, start, wire.DATA_AD_SIZE, nonce_at, self._send_key
        )
        return wire.DATA_HEADER_SIZE + size + wire.TAG_SIZE

    def seal_run(
        self, buffer: bytearray, base: aead.Pointer, first: int, count: int, stride: int, last_size: int
    ) -> int:
        """``seal_in_place`` for ``count`` inner frames lying every ``stride`` bytes from
        ``first + DATA_HEADER_SIZE``, each ``stride - DATA_HEADER_SIZE - TAG_SIZE`` bytes but the last
        (``last_size``), with one system call for all their nonces. Returns the bytes the datagrams take."""
        nonces = os.urandom(wire.NONCE_SIZE * count)
        counter, pack, encrypt = self._counter, wire.DATA_HEADER.pack_into, aead.encrypt_in_place
        index, key, msg_data = self.remote_index, self._send_key, wire.MSG_DATA
        ad_size, header_size, nonce_size = wire.DATA_AD_SIZE, wire.DATA_HEADER_SIZE, wire.NONCE_SIZE
        size = stride - header_size - wire.TAG_SIZE
        at = first
        number = 0
        for position in range(count):
            number = next(counter)
            if number >= REJECT_AFTER_MESSAGES:
                raise ProtocolError("session exhausted its message counter")
            pack(buffer, at, msg_data, index, number)
            taken = position * nonce_size
            buffer[at + ad_size : at + header_size] = nonces[taken : taken + nonce_size]
            if position == count - 1:
                size = last_size
            encrypt(base, at + header_size, size, at, ad_size, at + ad_size, key)
            at += stride
        self.sent_messages = number + 1
        return at - stride + header_size + size + wire.TAG_SIZE - first

    def open_(self, datagram: bytes) -> bytes:
        """The inner frame of ``datagram``; ProtocolError if forged, corrupt, replayed or too old."""
        wire.decode_data_header(datagram)
        buffer = bytearray(datagram)
        size = self.open_in_place(buffer, aead.pointer(buffer), 0, len(buffer))
        return bytes(buffer[wire.DATA_HEADER_SIZE : wire.DATA_HEADER_SIZE + size])

    def open_in_place(
        self, buffer: bytearray, base: aead.Pointer, start: int, length: int, counter: int = -1
    ) -> int:
        """Authenticate and decrypt the data datagram of ``length`` bytes at ``buffer[start:]`` in place: its
        inner frame is then at ``buffer[start + DATA_HEADER_SIZE:]``, and its size is returned. ProtocolError
        if the datagram is forged, corrupt, replayed or too old (the bytes are then unusable). ``counter``:
        the header's, when the caller decoded it already."""
        if length < wire.DATA_MIN_SIZE:
            raise ProtocolError(f"data frame: {length} bytes, shorter than the minimum {wire.DATA_MIN_SIZE}")
        if counter < 0:
            counter = wire.DATA_COUNTER.unpack_from(buffer, start + wire.DATA_COUNTER_OFFSET)[0]
        replay = self.replay
        if not replay.check(counter):
            raise ReplayError("replayed or too old data frame")
        sealed = length - wire.DATA_HEADER_SIZE
        if not aead.decrypt_in_place(
            base,
            start + wire.DATA_HEADER_SIZE,
            sealed,
            start,
            wire.DATA_AD_SIZE,
            start + wire.DATA_AD_SIZE,
            self._receive_key,
        ):
            raise AuthenticationError("data frame failed authentication")
        if not replay.accept(counter):
            raise ReplayError("replayed data frame")
        return sealed - wire.TAG_SIZE
