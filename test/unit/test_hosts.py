"""The managed hosts block: hostname rules, rendering, and user lines surviving everything."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from husarnet_ros.core.errors import AddressError, ConfigError
from husarnet_ros.core.hosts import (
    BEGIN_MARKER,
    END_MARKER,
    HostEntry,
    HostnameError,
    HostsEntryError,
    canonical_entries,
    normalize_hostname,
    parse_managed,
    render,
    render_block,
)

A1 = bytes.fromhex("fc94" + "11" * 14)
A2 = bytes.fromhex("fc94" + "22" * 14)
A1_TEXT = "fc94:1111:1111:1111:1111:1111:1111:1111"
A2_TEXT = "fc94:2222:2222:2222:2222:2222:2222:2222"

ROBOT1 = HostEntry("robot1", A1)
ROBOT2 = HostEntry("robot2", A2)

USER_HOSTS = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost\n# my comment\n\n10.0.0.5 nas\n"


# --- hostnames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("robot1", "robot1"),
        ("Robot-1", "robot-1"),
        ("  ROBOT  ", "robot"),
        ("a", "a"),
        ("r1.fleet.example", "r1.fleet.example"),
        ("x" * 63, "x" * 63),
        (".".join(["a" * 63] * 3) + "." + "b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),
        ("123robot", "123robot"),
        ("0", "0"),  # RFC 1123 allows a leading digit, even an all-digit label
    ],
)
def test_valid_hostnames(name: str, expected: str) -> None:
    assert normalize_hostname(name) == expected


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-robot", "must not start or end"),
        ("robot-", "must not start or end"),
        ("ro_bot", "may contain only"),
        ("ro bot", "may contain only"),
        ("robot\n1", "may contain only"),
        ("rob\rot", "may contain only"),
        ("röbot", "may contain only"),
        ("a..b", "empty label"),
        (".a", "empty label"),
        ("a.", "must not end with a dot"),
        ("x" * 64, "label"),
        (".".join(["a" * 63] * 4), "at most 253"),
        ("1.2.3.4", "IP address"),
        ("localhost", "reserved"),
        ("foo.localhost", "reserved"),
        ("LocalHost", "reserved"),
        ("#comment", "may contain only"),
    ],
)
def test_invalid_hostnames(name: str, fragment: str) -> None:
    with pytest.raises(HostnameError, match=fragment):
        normalize_hostname(name)


def test_hostname_error_is_config_and_value_error() -> None:
    with pytest.raises(ConfigError):
        normalize_hostname("bad_name")
    with pytest.raises(ValueError, match="may contain only"):
        normalize_hostname("bad_name")


def test_non_string_hostname_rejected() -> None:
    with pytest.raises(HostnameError, match="text"):
        normalize_hostname(5)  # type: ignore[arg-type]


# --- entries --------------------------------------------------------------------------------


def test_entry_normalises_hostname() -> None:
    assert HostEntry("ROBOT1", A1).hostname == "robot1"
    assert HostEntry("ROBOT1", A1) == ROBOT1


def test_entry_from_text_and_back() -> None:
    entry = HostEntry.from_text("robot1", A1_TEXT.upper())
    assert entry == ROBOT1
    assert entry.address_text == A1_TEXT
    assert entry.to_json() == {"hostname": "robot1", "address": A1_TEXT}
    assert HostEntry.from_json(entry.to_json()) == entry


@pytest.mark.parametrize("address", [b"\x00" * 16, bytes.fromhex("fd00" + "00" * 14), A1[:15], "fc94::1"])
def test_entry_rejects_non_overlay_address(address: object) -> None:
    with pytest.raises(AddressError, match="overlay"):
        HostEntry("robot", address)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([], "must be an object"),
        ({"hostname": "r"}, "needs 'hostname' and 'address'"),
        ({"hostname": 1, "address": A1_TEXT}, "needs"),
        ({"hostname": "r", "address": A1_TEXT, "x": 1}, "unknown field"),
        ({"hostname": "r", "address": "10.0.0.1"}, "not an IPv6"),
        ({"hostname": "r", "address": "fd00::1"}, "overlay"),
        ({"hostname": "r_1", "address": A1_TEXT}, "may contain only"),
    ],
)
def test_entry_from_json_errors(obj: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        HostEntry.from_json(obj)


def test_canonical_entries_sorts_and_deduplicates() -> None:
    alias = HostEntry("alias", A2)
    assert canonical_entries([ROBOT2, ROBOT1, ROBOT2, alias]) == [alias, ROBOT1, ROBOT2]


def test_canonical_entries_rejects_one_name_two_addresses() -> None:
    with pytest.raises(HostsEntryError, match=r"robot1.*two addresses"):
        canonical_entries([ROBOT1, HostEntry("robot1", A2)])


def test_canonical_entries_rejects_non_entries() -> None:
    with pytest.raises(HostsEntryError, match="HostEntry"):
        canonical_entries([("robot1", A1)])  # type: ignore[list-item]


# --- rendering ------------------------------------------------------------------------------


def test_render_block_format() -> None:
    assert render_block([ROBOT2, ROBOT1]) == (
        f"{BEGIN_MARKER}\n{A1_TEXT} robot1\n{A2_TEXT} robot2\n{END_MARKER}\n"
    )


def test_render_appends_block_to_user_file() -> None:
    out = render(USER_HOSTS, [ROBOT1])
    assert out == USER_HOSTS + f"{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\n"


def test_render_into_empty_file() -> None:
    assert render("", [ROBOT1]) == f"{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\n"


def test_render_empty_entries_on_empty_file() -> None:
    assert render("", []) == ""


def test_render_replaces_block_in_place() -> None:
    text = f"a\n{BEGIN_MARKER}\n{A1_TEXT} old\n{END_MARKER}\nb\n"
    assert render(text, [ROBOT2]) == f"a\n{BEGIN_MARKER}\n{A2_TEXT} robot2\n{END_MARKER}\nb\n"


def test_render_without_entries_removes_block() -> None:
    text = f"a\n{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\nb\n"
    assert render(text, []) == "a\nb\n"


def test_no_trailing_newline_round_trip() -> None:
    text = "127.0.0.1 localhost"
    with_block = render(text, [ROBOT1])
    assert with_block == f"127.0.0.1 localhost\n{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}"
    assert render(with_block, [ROBOT1]) == with_block
    assert render(with_block, [ROBOT1, ROBOT2]).endswith(f"robot2\n{END_MARKER}")
    assert render(with_block, []) == text


def test_last_line_ending_in_cr_round_trip() -> None:
    text = "a\r\nb\r"
    assert render(render(text, [ROBOT1]), []) == text


def test_crlf_file_keeps_its_lines_and_gets_an_lf_block() -> None:
    text = "127.0.0.1 localhost\r\n# c\r\n"
    out = render(text, [ROBOT1])
    assert out == text + f"{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\n"
    assert parse_managed(out) == [ROBOT1]
    assert render(out, [ROBOT2]) == text + f"{BEGIN_MARKER}\n{A2_TEXT} robot2\n{END_MARKER}\n"
    assert render(out, []) == text


def test_crlf_block_written_by_hand_is_read_and_rewritten_as_lf() -> None:
    text = f"a\r\n{BEGIN_MARKER}\r\n{A1_TEXT} robot1\r\n{END_MARKER}\r\nb\r\n"
    assert parse_managed(text) == [ROBOT1]
    assert render(text, [ROBOT1]) == f"a\r\n{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\nb\r\n"


def test_mixed_line_endings_preserved() -> None:
    text = "a\r\nb\nc\r\n"
    out = render(text, [ROBOT1])
    assert out.startswith(text)
    assert render(out, []) == text


def test_user_lines_that_look_like_entries_outside_block_are_untouched() -> None:
    text = f"{A1_TEXT} robot1\n"
    out = render(text, [ROBOT2])
    assert out.startswith(text)
    assert parse_managed(out) == [ROBOT2]


def test_duplicated_blocks_collapse_into_first_position() -> None:
    text = (
        f"a\n{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\n"
        f"b\n{BEGIN_MARKER}\n{A2_TEXT} robot2\n{END_MARKER}\nc\n"
    )
    assert parse_managed(text) == [ROBOT1, ROBOT2]
    out = render(text, [ROBOT2])
    assert out == f"a\n{BEGIN_MARKER}\n{A2_TEXT} robot2\n{END_MARKER}\nb\nc\n"


def test_unterminated_block_keeps_following_lines() -> None:
    text = f"a\n{BEGIN_MARKER}\n{A1_TEXT} robot1\nuser line\n"
    assert parse_managed(text) == []
    out = render(text, [ROBOT2])
    assert out == f"a\n{A1_TEXT} robot1\nuser line\n{BEGIN_MARKER}\n{A2_TEXT} robot2\n{END_MARKER}\n"
    assert render(out, [ROBOT2]) == out


def test_begin_followed_by_begin_pairs_end_with_nearest() -> None:
    text = f"{BEGIN_MARKER}\nuser line\n{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\n"
    assert parse_managed(text) == [ROBOT1]
    assert render(text, []) == "user line\n"


def test_stray_end_marker_removed() -> None:
    text = f"a\n{END_MARKER}\nb\n"
    assert render(text, []) == "a\nb\n"
    assert render(text, [ROBOT1]) == f"a\nb\n{BEGIN_MARKER}\n{A1_TEXT} robot1\n{END_MARKER}\n"


def test_markers_recognised_with_whitespace_and_edited_tail() -> None:
    text = f"  # BEGIN husarnet-ros (edited)\r\n{A1_TEXT} robot1\n\t{END_MARKER} \nuser\n"
    assert parse_managed(text) == [ROBOT1]
    assert render(text, []) == "user\n"


def test_lines_inside_block_that_are_not_entries_are_dropped() -> None:
    text = f"{BEGIN_MARKER}\n# note\ngarbage\nfd00::1 notoverlay\n{A1_TEXT} bad_name robot1\n{END_MARKER}\n"
    assert parse_managed(text) == []
    assert render(text, [ROBOT2]) == render_block([ROBOT2])


def test_parse_managed_reads_aliases_and_comments() -> None:
    text = f"{BEGIN_MARKER}\n{A1_TEXT} robot1 R1-Alias # comment\n{END_MARKER}\n"
    assert parse_managed(text) == [HostEntry("r1-alias", A1), ROBOT1]


def test_parse_managed_first_address_wins_for_duplicate_name() -> None:
    text = f"{BEGIN_MARKER}\n{A1_TEXT} robot\n{A2_TEXT} robot\n{END_MARKER}\n"
    assert parse_managed(text) == [HostEntry("robot", A1)]


def test_parse_of_render_gives_canonical_entries() -> None:
    entries = [ROBOT2, HostEntry("Alias", A1), ROBOT1, ROBOT1]
    assert parse_managed(render(USER_HOSTS, entries)) == canonical_entries(entries)


def test_render_rejects_invalid_entries_and_touches_nothing() -> None:
    with pytest.raises(HostsEntryError):
        render(USER_HOSTS, [ROBOT1, HostEntry("robot1", A2)])


def test_vertical_tab_and_unicode_line_separators_are_not_line_breaks() -> None:
    text = "a\x0bb\u2028c\x0cd\n"
    out = render(text, [ROBOT1])
    assert out.startswith(text)
    assert render(out, []) == text


# --- properties -----------------------------------------------------------------------------

_marker_lines = st.sampled_from([BEGIN_MARKER, END_MARKER, "# BEGIN husarnet-ros", "  # END husarnet-ros  "])
_plain_line = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=30
).filter(lambda s: not s.strip().startswith(("# BEGIN husarnet-ros", "# END husarnet-ros")))
_entry_line = st.builds(
    lambda a, h: f"{a} {h}", st.sampled_from([A1_TEXT, A2_TEXT]), st.sampled_from(["x", "y"])
)
_eol = st.sampled_from(["\n", "\r\n"])


@st.composite
def _hosts_text(draw: st.DrawFn, with_markers: bool) -> str:
    kinds = [_plain_line, _entry_line] + ([_marker_lines] if with_markers else [])
    lines = draw(st.lists(st.one_of(*kinds), max_size=12))
    endings = [draw(_eol) for _ in lines]
    text = "".join(line + eol for line, eol in zip(lines, endings, strict=True))
    if draw(st.booleans()) and text:
        text = text.removesuffix("\n")  # no trailing newline (may leave a bare \r: also a case)
    return text


_hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
_entries = st.lists(
    st.builds(HostEntry, _hostnames, st.sampled_from([A1, A2])), max_size=5, unique_by=lambda e: e.hostname
)


def _reference_user_lines(text: str) -> list[str]:
    """Independent statement of which lines are the user's: not a marker, not inside a block
    (a BEGIN whose next marker is an END). Terminators stripped."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    is_begin = [ln.strip().startswith("# BEGIN husarnet-ros") for ln in lines]
    is_end = [ln.strip().startswith("# END husarnet-ros") for ln in lines]
    inside = [False] * len(lines)
    for i in range(len(lines)):
        if is_begin[i]:
            j = i + 1
            while j < len(lines) and not (is_begin[j] or is_end[j]):
                j += 1
            if j < len(lines) and is_end[j]:
                for k in range(i, j + 1):
                    inside[k] = True
    return [ln for i, ln in enumerate(lines) if not (inside[i] or is_begin[i] or is_end[i])]


@settings(max_examples=300)
@given(_hosts_text(with_markers=True), _entries)
def test_render_is_idempotent(text: str, entries: list[HostEntry]) -> None:
    once = render(text, entries)
    assert render(once, entries) == once


@settings(max_examples=300)
@given(_hosts_text(with_markers=True), _entries, _entries)
def test_render_then_render_other_entries_converges(
    text: str, first: list[HostEntry], second: list[HostEntry]
) -> None:
    # Only while a block exists: removing it forgets where it was, so a new one is appended.
    assume(first)
    assert render(render(text, first), second) == render(text, second)


@settings(max_examples=300)
@given(_hosts_text(with_markers=True), _entries)
def test_parse_managed_returns_what_was_rendered(text: str, entries: list[HostEntry]) -> None:
    assert parse_managed(render(text, entries)) == canonical_entries(entries)


@settings(max_examples=300)
@given(_hosts_text(with_markers=True), _entries)
def test_user_lines_preserved_in_order(text: str, entries: list[HostEntry]) -> None:
    out = render(text, entries)
    assert _reference_user_lines(out) == _reference_user_lines(text)
    # ...and their exact bytes, \r included, appear in the output in order.
    for line in _reference_user_lines(text):
        assert line in out


@settings(max_examples=300)
@given(_hosts_text(with_markers=False), _entries)
def test_file_without_block_is_restored_exactly(text: str, entries: list[HostEntry]) -> None:
    out = render(text, entries)
    assert out.startswith(text)  # the block goes after everything, nothing before it changes
    assert render(out, []) == text


def test_many_stray_markers_all_removed_user_lines_kept() -> None:
    stray = f"{END_MARKER}\n" * 5000 + "x\n" + f"{BEGIN_MARKER}\n" * 5000 + "y"
    assert render(stray, []) == "x\ny"
    # Only the last BEGIN before the END opens a block; the other markers are stray.
    nested = f"{BEGIN_MARKER}\n" * 5000 + f"{A1_TEXT} robot1\n" + f"{END_MARKER}\n" * 5000 + "y"
    assert parse_managed(nested) == [ROBOT1]
    assert render(nested, []) == "y"
