"""The RFC 6479 anti-replay window: every boundary, and a model test against a set-based reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from husarnet_ros.core.constants import REPLAY_WINDOW_BITS
from husarnet_ros.core.replay import ReplayWindow


class ReferenceWindow:
    """The specification: accept a counter once, unless it is ``size`` or more behind the highest seen."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.highest = -1

    def would_accept(self, counter: int) -> bool:
        return counter >= 0 and counter not in self.seen and counter > self.highest - self.size

    def accept(self, counter: int) -> bool:
        if not self.would_accept(counter):
            return False
        self.seen.add(counter)
        self.highest = max(self.highest, counter)
        return True


def test_guaranteed_window_is_at_least_2048_packets() -> None:
    window = ReplayWindow()
    assert window.size >= 2048
    assert window.size == REPLAY_WINDOW_BITS - 64


def test_starts_empty() -> None:
    window = ReplayWindow()
    assert window.highest == -1
    assert window.check(0)


def test_in_order_counters_are_accepted_once() -> None:
    window = ReplayWindow()
    for counter in range(10_000):
        assert window.check(counter)
        assert window.accept(counter)
        assert not window.check(counter)
    assert window.highest == 9999


def test_duplicates_are_rejected_and_change_nothing() -> None:
    window = ReplayWindow()
    assert window.accept(5)
    assert not window.accept(5)
    assert not window.accept(5)
    assert window.highest == 5
    assert window.accept(4)
    assert not window.accept(4)


def test_reordered_within_window_are_accepted() -> None:
    window = ReplayWindow()
    assert window.accept(100)
    for counter in (99, 3, 50, 0, 98, 101, 97):
        assert window.accept(counter), counter
    for counter in (99, 3, 50, 0, 98, 101, 97, 100):
        assert not window.accept(counter), counter


@pytest.mark.parametrize(("behind", "expected"), [(1, True), (0, False), (-1, True)])
def test_small_offsets(behind: int, expected: bool) -> None:
    # behind 0 is the highest itself (a replay); behind -1 is a new highest.
    window = ReplayWindow()
    window.accept(10_000)
    assert window.accept(10_000 - behind) is expected


@pytest.mark.parametrize("base", [10_000, 4096 * 3, 4096 * 3 + 63, 4096 * 3 + 64, 123_456_789])
def test_window_boundary_exactly(base: int) -> None:
    """size-1 behind the highest is accepted, size and size+1 behind are too old."""
    size = ReplayWindow().size
    for behind, expected in ((size - 1, True), (size, False), (size + 1, False)):
        window = ReplayWindow()
        assert window.accept(base)
        assert window.check(base - behind) is expected, behind
        assert window.accept(base - behind) is expected, behind


def test_boundary_after_sliding_in_order() -> None:
    # Every counter seen, then the window slides: the oldest still inside must be a replay, not "too old".
    window = ReplayWindow()
    for counter in range(5000):
        window.accept(counter)
    size = window.size
    assert not window.accept(4999 - (size - 1))  # inside, already seen
    assert not window.accept(4999 - size)  # outside


def test_too_old_is_rejected_even_if_never_seen() -> None:
    window = ReplayWindow()
    window.accept(100_000)
    assert not window.accept(0)
    assert not window.accept(100_000 - window.size)


@pytest.mark.parametrize("jump", [63, 64, 65, 4095, 4096, 4097, 8192, 2**32, 2**63 - 1])
def test_huge_jumps_clear_the_window(jump: int) -> None:
    window = ReplayWindow()
    for counter in range(70):
        window.accept(counter)
    top = 69 + jump
    assert window.accept(top)
    # Every counter still inside the window that was not seen before is fresh...
    for behind in (1, 2, 63, 64, 65, window.size - 1):
        counter = top - behind
        expected = counter >= 70  # 0..69 were seen (and negative counters never pass)
        assert window.accept(counter) is expected, (jump, behind)
    # ... and the highest itself is a replay.
    assert not window.accept(top)


def test_counters_beyond_64_bits_do_not_break_the_window() -> None:
    window = ReplayWindow()
    assert window.accept(2**64 - 1)
    assert not window.accept(2**64 - 1)
    assert window.accept(2**64 - 2)


@pytest.mark.parametrize("counter", [-1, -2, -(2**63)])
def test_negative_counters_are_rejected(counter: int) -> None:
    window = ReplayWindow()
    assert not window.check(counter)
    assert not window.accept(counter)
    assert window.highest == -1
    window.accept(10)
    assert not window.accept(counter)


def test_rejected_counter_leaves_state_unchanged() -> None:
    window = ReplayWindow()
    window.accept(10_000)
    window.accept(9_000)
    assert not window.accept(10_000 - window.size)
    assert window.highest == 10_000
    assert not window.accept(9_000)
    assert window.accept(9_001)


@pytest.mark.parametrize("size_bits", [0, 64, 100, 127, 192, 4095])
def test_invalid_window_sizes(size_bits: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        ReplayWindow(size_bits)


@pytest.mark.parametrize("size_bits", [128, 256, 4096])
def test_other_window_sizes_have_the_same_boundary_rule(size_bits: int) -> None:
    window = ReplayWindow(size_bits)
    assert window.size == size_bits - 64
    window.accept(1_000_000)
    assert window.accept(1_000_000 - (window.size - 1))
    assert not window.accept(1_000_000 - window.size)


# A mix of small steps (reordering, duplicates) and jumps of every scale, around the window size.
_steps = st.one_of(
    st.integers(min_value=-8, max_value=8),
    st.integers(min_value=-300, max_value=300),
    st.sampled_from([-4033, -4032, -4031, -4096, -64, 63, 64, 65, 4031, 4032, 4033, 4096, 8192]),
    st.integers(min_value=-(2**20), max_value=2**20),
)


@settings(max_examples=300, deadline=None)
@given(start=st.integers(min_value=-5, max_value=2**40), steps=st.lists(_steps, max_size=200))
def test_matches_reference_for_random_sequences(start: int, steps: list[int]) -> None:
    window = ReplayWindow(256)  # small window: the random walks cross its boundary often
    reference = ReferenceWindow(window.size)
    counter = start
    for step in steps:
        counter += step
        expected = reference.would_accept(counter)
        assert window.check(counter) is expected, counter
        assert window.accept(counter) is reference.accept(counter) is expected, counter
        assert window.highest == reference.highest


@settings(max_examples=100, deadline=None)
@given(counters=st.lists(st.integers(min_value=-2, max_value=20_000), max_size=300))
def test_matches_reference_for_random_counters_default_size(counters: list[int]) -> None:
    window = ReplayWindow()
    reference = ReferenceWindow(window.size)
    for counter in counters:
        assert window.accept(counter) is reference.accept(counter), counter
