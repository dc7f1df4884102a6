"""ISO 4217 payment currencies and conversion between minor units (protocols.currency)."""

from __future__ import annotations

from decimal import Decimal

import iso4217
import pytest

from protocols.currency import EXPONENTS, is_payment_currency, minor_rate


def test_table_agrees_with_the_iso4217_package() -> None:
    funds = {"BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "UYI"}  # IsFund in ISO's table
    expected = {
        f"{c.number:03d}": c.exponent
        for c in iso4217.Currency
        if c.exponent is not None and c.code not in funds
    }
    assert expected == EXPONENTS


@pytest.mark.parametrize(
    ("code", "exponent"), [("156", 2), ("840", 2), ("392", 0), ("048", 3), ("978", 2)]
)
def test_active_codes_with_their_exponent(code: str, exponent: int) -> None:
    assert is_payment_currency(code)
    assert EXPONENTS[code] == exponent


@pytest.mark.parametrize(
    "code",
    [
        "000",  # not a code
        "157",  # unassigned (the example), as is 146
        "146",
        "999",  # XXX: no currency involved
        "963",  # XTS: testing
        "959",  # XAU: gold
        "960",  # XDR: no minor unit
        "984",  # BOV: a funds code
        "997",  # USN: a funds code
        "15",
        "1560",
        "abc",
    ],
)
def test_not_payment_currencies(code: str) -> None:
    assert not is_payment_currency(code)


def test_same_exponent_rounds_up() -> None:
    usd = minor_rate("840", "156", Decimal("7.1"))  # 1 USD = 7.1 CNY
    assert usd.up(100) == 710
    assert usd.up(1) == 8  # 7.1 fen: never slips under a limit
    assert usd.down(1) == 7
    assert usd.up(0) == 0


def test_exponent_zero_to_two() -> None:
    jpy = minor_rate("392", "156", Decimal("0.048"))  # 1 JPY = 0.048 CNY = 4.8 fen
    assert jpy.up(1) == 5
    assert jpy.up(10) == 48
    assert jpy.down(1) == 4


def test_exponent_three_to_two_and_two_to_zero() -> None:
    bhd = minor_rate("048", "156", Decimal("19"))  # 1 fils = 0.019 CNY = 1.9 fen
    assert bhd.up(1) == 2
    assert bhd.up(1000) == 1900
    cny_in_jpy = minor_rate("156", "392", Decimal("20.8"))  # 1 fen = 0.208 JPY
    assert cny_in_jpy.up(1) == 1
    assert cny_in_jpy.up(500) == 104
    assert cny_in_jpy.up(501) == 105


def test_exact_for_large_amounts() -> None:
    # 999,999,999,999 cents at 7.1234567: integer math, no float rounding
    rate = minor_rate("840", "156", Decimal("7.1234567"))
    assert rate.up(999_999_999_999) == 7_123_456_699_993
    assert rate.down(999_999_999_999) == 7_123_456_699_992
