"""CRC-16/CCITT-FALSE: the catalogue check value and an independent bitwise reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocols.crc import crc16_ccitt_false, crc16_hex


def reference_crc(data: bytes) -> int:
    """Bit by bit, straight from the definition: poly 0x1021, init 0xFFFF, no reflection."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_check_value() -> None:
    # Greg Cook's CRC catalogue, CRC-16/IBM-3740 (alias CRC-16/CCITT-FALSE): check=0x29b1.
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_hex(b"123456789") == "29B1"
    assert reference_crc(b"123456789") == 0x29B1


def test_empty_input_is_the_initial_value() -> None:
    assert crc16_ccitt_false(b"") == 0xFFFF


def test_hex_is_four_uppercase_digits() -> None:
    value = crc16_hex(b"\x00")
    assert len(value) == 4
    assert value == value.upper()
    assert int(value, 16) == reference_crc(b"\x00")


@given(st.binary(max_size=600))
def test_matches_reference(data: bytes) -> None:
    assert crc16_ccitt_false(data) == reference_crc(data)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_can_be_continued(a: bytes, b: bytes) -> None:
    assert crc16_ccitt_false(b, crc16_ccitt_false(a)) == crc16_ccitt_false(a + b)
