"""Duplicate keys as one string: equal iff (MTI class, 41, 11, 7) are equal, for any values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.keys import duplicate_key, key_of, original_data
from protocols.message import Message

CODEC = best_codec(get_dialect("terminal"))

# Characters that could fool a naive encoding: separators, the fallback's header characters,
# digits, NUL padding.
TRICKY = st.sampled_from(["\x00", "\x1f", ",", ";", "0", "1", "2", "6", "8", "T", "é"])


def _part(width: int) -> st.SearchStrategy[str]:
    """Values of the field's width (the common case) or of any length, from tricky
    characters."""
    return st.one_of(
        st.text(TRICKY, min_size=width, max_size=width),
        st.text(TRICKY, max_size=width + 3),
        st.text(max_size=width + 3),
    )


PARTS = st.tuples(_part(1), _part(8), _part(6), _part(10))


@settings(max_examples=500)
@given(PARTS, PARTS)
def test_keys_are_equal_iff_their_parts_are(
    a: tuple[str, str, str, str], b: tuple[str, str, str, str]
) -> None:
    assert (key_of(*a) == key_of(*b)) == (a == b)


@settings(max_examples=300)
@given(PARTS)
def test_moving_a_character_across_a_part_boundary_changes_the_key(
    parts: tuple[str, str, str, str],
) -> None:
    """What a separator-free concatenation would not see."""
    key = key_of(*parts)
    joined = list(parts)
    for i in range(3):
        if joined[i]:
            shifted = joined.copy()
            shifted[i], shifted[i + 1] = joined[i][:-1], joined[i][-1] + joined[i + 1]
            assert key_of(*shifted) != key


def test_separators_inside_fields_do_not_merge_keys() -> None:
    assert key_of("2", "T\x1f", "000001", "1127100000") != key_of(
        "2", "T", "\x1f000001", "1127100000"
    )
    assert key_of("2", "", "", "") != key_of("", "2", "", "")
    # A fallback key is never 25 characters, so never equal to a fixed-width one.
    assert len(key_of("2", "", "", "")) > 25
    assert len(key_of("2", "T0000001", "000001", "1127100000")) == 25


def _request(mti: str, fields: dict[str, str]) -> Message:
    return Message(mti, {"3": "000000", "4": "000000001000", **fields})


@settings(max_examples=300)
@given(
    st.sampled_from(["0200", "0400", "0420", "0100"]),
    st.sampled_from(["0200", "0400", "0420", "0100"]),
    st.one_of(st.none(), st.text(st.characters(max_codepoint=127), min_size=8, max_size=8)),
    st.one_of(st.none(), st.text(TRICKY.filter(str.isascii), min_size=6, max_size=6)),
    st.one_of(st.none(), st.text(TRICKY.filter(str.isascii), min_size=10, max_size=10)),
    st.one_of(st.none(), st.text(st.characters(max_codepoint=127), min_size=8, max_size=8)),
)
def test_decoded_requests_get_equal_keys_iff_class_41_11_7_are_equal(
    mti_a: str, mti_b: str, t41: str | None, t11: str | None, t7: str | None, u41: str | None
) -> None:
    """Through the terminal codec (what it accepts: fixed widths, any ASCII, absent fields)."""
    fields_a = {k: v for k, v in (("41", t41), ("11", t11), ("7", t7)) if v is not None}
    fields_b = {k: v for k, v in (("41", u41), ("11", t11), ("7", t7)) if v is not None}
    a = CODEC.decode(CODEC.encode(_request(mti_a, fields_a)))
    b = CODEC.decode(CODEC.encode(_request(mti_b, fields_b)))

    def parts(m: Message) -> tuple[str, ...]:
        return (m.mti[1], *(m.fields.get(k, "") for k in ("41", "11", "7")))

    assert (duplicate_key(a) == duplicate_key(b)) == (parts(a) == parts(b))
    assert duplicate_key(a) == key_of(*parts(a))


def test_a_reversal_names_its_originals_key_in_field_90() -> None:
    """FindOriginal builds the original's key from field 90 with the same function."""
    original = _request("0200", {"7": "1127101500", "11": "000001", "41": "T0000001"})
    f90 = "0200" + "000001" + "1127101500" + "0" * 22
    assert key_of(f90[1], "T0000001", f90[4:10], f90[10:20]) == duplicate_key(original)


def test_original_data_is_field_90s_layout() -> None:
    # MTI 4, STAN 6, transmission 10, acquiring id 11 (right-aligned, zero-filled), forwarding 11
    assert original_data("0200", "000123", "1127083000") == "02000001231127083000" + "0" * 22
    assert original_data("0100", "000001", "0101000000", "12345") == (
        "0100" + "000001" + "0101000000" + "00000012345" + "0" * 11
    )
    assert len(original_data("0200", "000123", "1127083000", "00000000001")) == 42
