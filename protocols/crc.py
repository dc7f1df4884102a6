"""CRC-16/CCITT-FALSE, the checksum of EMVCo merchant-presented QR codes (tag 63).

Polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR; check value for
``b"123456789"`` is ``0x29B1``. :func:`binascii.crc_hqx` computes exactly this CRC in C when
seeded with 0xFFFF, which is roughly 50 times faster than a table-driven loop in Python.
"""

from __future__ import annotations

import binascii

__all__ = ["crc16_ccitt_false", "crc16_hex"]


def crc16_ccitt_false(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data``; pass a previous result as ``crc`` to continue it."""
    return binascii.crc_hqx(data, crc)


def crc16_hex(data: bytes | bytearray | memoryview) -> str:
    """The CRC as EMVCo writes it in tag 63: four uppercase hexadecimal digits."""
    return f"{binascii.crc_hqx(data, 0xFFFF):04X}"
