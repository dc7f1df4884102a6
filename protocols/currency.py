"""ISO 4217 currencies a card payment may carry, and amounts converted between them.

The table is ISO's own, as shipped (and updated with each amendment) by the ``iso4217``
package, never a list typed here. Its ``table.xml`` is read directly instead of importing the
package: that import loads ``datetime`` (and may set the process locale), and protocols/ stays
free of clocks (tests/protocols/test_emv.py); a test checks both readings agree.

A payment currency is an active code with a minor unit: that leaves out XXX (999, no
currency), XTS (963, testing), precious metals, SDR and bond market units (no minor unit), and
the funds codes ISO marks ``IsFund`` (BOV, CLF, USN, ...: units of account no card is in).

Conversion is integer arithmetic on an exact fraction of minor units (no float rounding).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Final, NamedTuple
from xml.etree import ElementTree


def _read_table() -> dict[str, int]:
    spec = importlib.util.find_spec("iso4217")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the iso4217 package is not installed")
    # an installed package's own file: as trusted as its code would be
    table = ElementTree.parse(Path(spec.submodule_search_locations[0]) / "table.xml")  # noqa: S314
    exponents: dict[str, int] = {}
    for entry in table.iter("CcyNtry"):
        name = entry.find("CcyNm")
        number = entry.findtext("CcyNbr")
        minor = entry.findtext("CcyMnrUnts") or ""
        if number and minor.isdigit() and name is not None and name.get("IsFund") != "true":
            exponents[number.strip().zfill(3)] = int(minor)
    return exponents


EXPONENTS: Final[Mapping[str, int]] = _read_table()
"""ISO 4217 numeric code (3 digits) of each payment currency -> its minor unit exponent."""


def is_payment_currency(code: str) -> bool:
    """``code`` (3-digit numeric) is an active ISO 4217 currency a payment may be in."""
    return code in EXPONENTS


class MinorRate(NamedTuple):
    """Minor units of one currency per minor unit of another, as an exact fraction."""

    num: int
    den: int

    def up(self, amount: int) -> int:
        """``amount`` converted, rounded up: a converted amount never slips under a limit."""
        return -(-amount * self.num // self.den)

    def down(self, amount: int) -> int:
        """``amount`` converted, rounded down: a give-back never returns more than was taken."""
        return amount * self.num // self.den


def minor_rate(source: str, target: str, rate: Decimal) -> MinorRate:
    """The rate between minor units, from ``rate`` major units of ``target`` per major unit of
    ``source`` (KeyError for a code that is not a payment currency)."""
    num, den = rate.as_integer_ratio()
    shift = EXPONENTS[target] - EXPONENTS[source]
    if shift >= 0:
        return MinorRate(num * 10**shift, den)
    return MinorRate(num, den * 10**-shift)
