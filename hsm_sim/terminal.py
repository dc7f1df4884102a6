"""Builders for the terminal simulator and tests: what a PIN pad or card would produce.

Keys are clear (16 bytes or 32 hex) or under the LMK (``U`` + 32 hex, with ``lmk``).
"""

from __future__ import annotations

from hsm_sim import aes_dukpt as _aes_dukpt
from hsm_sim import dukpt as _dukpt
from hsm_sim import emv as _emv
from hsm_sim import mac as _mac
from hsm_sim import pinblock as _pinblock
from hsm_sim.lmk import Lmk, resolve_key

LmkLike = Lmk | str | bytes | None
KeyLike = str | bytes


def pin_block_under_tpk(tpk: KeyLike, pin: str, pan: str, *, lmk: LmkLike = None) -> bytes:
    """An ISO format 0 PIN block encrypted under the terminal's TPK (8 bytes, field 52)."""
    return _pinblock.encrypt_pin_block(resolve_key(tpk, lmk), _pinblock.FORMAT_ISO0, pin, pan)


def pin_block_under_dukpt(
    bdk: KeyLike, ksn: str | bytes, pin: str, pan: str, *, lmk: LmkLike = None
) -> bytes:
    """An ISO format 0 PIN block under the X9.24-1 TDES DUKPT PIN key of this KSN."""
    return _dukpt.encrypt_pin_block(resolve_key(bdk, lmk), ksn, pin, pan)


def next_ksn(ksn: str | bytes) -> str:
    """The KSN of the PIN pad's next transaction (20 hex).

    As X9.24-1 devices do, counters with more than 10 one-bits are skipped (the host would
    accept them, a device never uses them).
    """
    raw = int.from_bytes(_dukpt.parse_ksn(ksn), "big")
    counter = (raw & _dukpt.COUNTER_MASK) + 1
    while counter.bit_count() > 10:
        counter += counter & -counter
    if counter > _dukpt.COUNTER_MASK:
        raise ValueError("DUKPT transaction counter exhausted")
    return ((raw & ~_dukpt.COUNTER_MASK) | counter).to_bytes(10, "big").hex().upper()


def pin_block_under_aes_dukpt(
    bdk: KeyLike, ksn: str | bytes, pin: str, pan: str, *, lmk: LmkLike = None
) -> bytes:
    """An ISO format 4 PIN block under the X9.24-3 AES DUKPT PIN key of this KSN (16 bytes)."""
    return _aes_dukpt.encrypt_pin_block(resolve_key(bdk, lmk), ksn, pin, pan)


def next_aes_ksn(ksn: str | bytes) -> str:
    """The 12-byte KSN (24 hex) of an AES DUKPT PIN pad's next transaction."""
    ikid, counter = _aes_dukpt.split_ksn(ksn)
    return (ikid + _aes_dukpt.next_counter(counter).to_bytes(4, "big")).hex().upper()


def retail_mac(tak: KeyLike, data: bytes, *, lmk: LmkLike = None) -> bytes:
    """The field-64 MAC: ISO 9797-1 algorithm 3, padding method 1, under the TAK (8 bytes)."""
    return _mac.retail_mac(resolve_key(tak, lmk), data, padding=1)


def compute_arqc(
    imk_ac: KeyLike, pan: str, psn: str | None, atc: bytes, data: bytes, *, lmk: LmkLike = None
) -> bytes:
    """The ARQC a card derived from this IMK-AC computes over ``data`` (see emv.arqc_data)."""
    return _emv.compute_arqc(resolve_key(imk_ac, lmk), pan, psn, atc, data)
