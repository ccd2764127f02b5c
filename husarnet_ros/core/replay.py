"""Anti-replay sliding window (RFC 6479): accepts each counter at most once, rejects too-old ones.

The window is a ring of 64-bit words. Advancing the window clears only the words that slide
out, so the cost per packet is O(1) in the common in-order case.
"""

from __future__ import annotations

from .constants import REPLAY_WINDOW_BITS

_WORD_BITS = 64
_WORD_SHIFT = 6


class ReplayWindow:
    """Tracks which counters of one receiving session were seen.

    ``check(counter)`` is side-effect free (use it before decryption to drop cheaply);
    ``accept(counter)`` records a counter after the packet authenticated and returns
    whether it was new and inside the window.
    """

    __slots__ = ("_bitmap", "_highest", "_mask_words", "_words", "size")

    def __init__(self, size_bits: int = REPLAY_WINDOW_BITS) -> None:
        if size_bits < 2 * _WORD_BITS or size_bits & (size_bits - 1):
            raise ValueError("replay window size must be a power of two of at least 128 bits")
        self._words = size_bits // _WORD_BITS
        self._mask_words = self._words - 1
        self._bitmap = [0] * self._words
        self._highest = -1  # nothing received yet
        # One word is always being filled, so the guaranteed window is one word shorter.
        self.size = size_bits - _WORD_BITS

    @property
    def highest(self) -> int:
        return self._highest

    def check(self, counter: int) -> bool:
        """True if ``counter`` would be accepted now."""
        if counter < 0:
            return False
        if counter > self._highest:
            return True
        if counter + self.size <= self._highest:
            return False
        word = self._bitmap[(counter >> _WORD_SHIFT) & self._mask_words]
        return not (word >> (counter & (_WORD_BITS - 1))) & 1

    def accept(self, counter: int) -> bool:
        """Record ``counter``; False if it is a replay or too old (then nothing changes)."""
        if counter < 0:
            return False
        highest = self._highest
        if counter > highest and counter >> _WORD_SHIFT == highest >> _WORD_SHIFT:
            # The common case: in order, still in the current word (nothing to clear, no earlier bit to test).
            self._highest = counter
            self._bitmap[(counter >> _WORD_SHIFT) & self._mask_words] |= 1 << (counter & (_WORD_BITS - 1))
            return True
        if counter > highest:
            current_word = highest >> _WORD_SHIFT if highest >= 0 else -1
            new_word = counter >> _WORD_SHIFT
            # Clear the words the window slides over (at most the whole ring).
            for w in range(current_word + 1, min(new_word, current_word + self._words) + 1):
                self._bitmap[w & self._mask_words] = 0
            if new_word - current_word > self._words:
                self._bitmap = [0] * self._words
            self._highest = counter
        elif counter + self.size <= highest:
            return False
        index = (counter >> _WORD_SHIFT) & self._mask_words
        bit = 1 << (counter & (_WORD_BITS - 1))
        word = self._bitmap[index]
        if word & bit:
            return False
        self._bitmap[index] = word | bit
        return True
