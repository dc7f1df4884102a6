"""ANSI X9.24-1:2009 TDES DUKPT against the standard's published vectors, plus an independent
originator-side implementation (future-key registers, psec's DES) for a long run of counters."""

from __future__ import annotations

import psec
import pytest

from hsm_sim import dukpt, terminal
from hsm_sim.errors import InvalidInputError

BDK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
KSN0 = "FFFF9876543210E00000"
PIN, PAN = "1234", "4012345678909"

# X9.24-1:2009 Annex A.4: PIN 1234, PAN 4012345678909, encrypted format-0 PIN blocks.
PUBLISHED_PIN_BLOCKS = {
    "FFFF9876543210E00001": "1B9C1845EB993A7A",
    "FFFF9876543210E00002": "10A01C8D02C69107",
    "FFFF9876543210E00003": "18DC07B94797B466",
    "FFFF9876543210E00004": "0BC79509D5645DF7",
    "FFFF9876543210E00005": "5BC0AF22AD87B327",
    "FFFF9876543210E00006": "A16DF70AE36158D8",
    "FFFF9876543210E00007": "27711C16CB257F8E",
    "FFFF9876543210E00008": "50E55547A5027551",
    "FFFF9876543210E00009": "536CF7F678ACFC8D",
    "FFFF9876543210E0000A": "EDABBA23221833FE",
}


def test_ipek_published() -> None:
    assert dukpt.derive_ipek(BDK, KSN0).hex().upper() == "6AC292FAA1315B4D858AB3A3D7D5933A"
    # The counter bits never matter for the IPEK.
    assert dukpt.derive_ipek(BDK, "FFFF9876543210E00005") == dukpt.derive_ipek(BDK, KSN0)


def test_first_transaction_keys_published() -> None:
    ksn = "FFFF9876543210E00001"
    assert dukpt.derive_transaction_key(BDK, ksn).hex().upper() == (
        "042666B49184CFA368DE9628D0397BC9"
    )
    assert dukpt.derive_pin_key(BDK, ksn).hex().upper() == "042666B49184CF5C68DE9628D0397B36"


@pytest.mark.parametrize(("ksn", "expected"), sorted(PUBLISHED_PIN_BLOCKS.items()))
def test_pin_blocks_published(ksn: str, expected: str) -> None:
    block = terminal.pin_block_under_dukpt(BDK, ksn, PIN, PAN)
    assert block.hex().upper() == expected
    assert dukpt.decrypt_pin_block(BDK, ksn, block, PAN) == PIN


def _nrkgp(key: bytes, data: bytes) -> bytes:
    """Non-reversible key generation written again on psec's DES (independent path)."""
    mask = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")

    def half(k: bytes) -> bytes:
        step = psec.tools.xor(data, k[8:])
        step = psec.des.encrypt_tdes_ecb(k[:8] * 2, step)
        return psec.tools.xor(step, k[8:])

    return half(psec.tools.xor(key, mask)) + half(key)


class Originator:
    """The PIN pad side of X9.24-1: future keys kept in registers, derived from parents."""

    def __init__(self, ipek: bytes, ksn: str) -> None:
        raw = int(ksn, 16)
        self.base = raw & ~0x1FFFFF & ((1 << 64) - 1)
        self.future: dict[int, bytes] = {}
        self._derive_children(0, ipek)
        self.counter = 1

    def _derive_children(self, counter: int, key: bytes) -> None:
        bit = (counter & -counter if counter else 1 << 21) >> 1
        while bit:
            child = counter | bit
            self.future[child] = _nrkgp(key, (self.base | child).to_bytes(8, "big"))
            bit >>= 1

    def next_pin_key(self) -> tuple[str, bytes]:
        counter = self.counter
        key = self.future.pop(counter)
        if counter.bit_count() < 10:
            self._derive_children(counter, key)
        self.counter += 1
        while self.counter.bit_count() > 10:
            self.counter += self.counter & -self.counter
        ksn = format((int(KSN0, 16) & ~0x1FFFFF) | counter, "020X")
        variant = bytes.fromhex("00000000000000FF00000000000000FF")
        return ksn, psec.tools.xor(key, variant)


def test_ipek_independent() -> None:
    ksn_reg = bytes.fromhex(KSN0)[:8]
    left = psec.des.encrypt_tdes_ecb(BDK, ksn_reg)
    masked = psec.tools.xor(BDK, bytes.fromhex("C0C0C0C000000000C0C0C0C000000000"))
    assert left + psec.des.encrypt_tdes_ecb(masked, ksn_reg) == dukpt.derive_ipek(BDK, KSN0)


def test_host_matches_originator_for_many_counters() -> None:
    originator = Originator(dukpt.derive_ipek(BDK, KSN0), KSN0)
    ksn = KSN0
    for _ in range(300):
        ksn = terminal.next_ksn(ksn)
        expected_ksn, pin_key = originator.next_pin_key()
        assert ksn == expected_ksn
        assert dukpt.derive_pin_key(BDK, ksn) == pin_key
    # The published blocks again, through the originator's keys.
    originator = Originator(dukpt.derive_ipek(BDK, KSN0), KSN0)
    for _ in range(10):
        ksn, pin_key = originator.next_pin_key()
        clear = psec.pinblock.encode_pinblock_iso_0(PIN, PAN)
        assert (
            psec.des.encrypt_tdes_ecb(pin_key, clear).hex().upper() == (PUBLISHED_PIN_BLOCKS[ksn])
        )


def test_next_ksn_skips_counters_with_more_than_ten_bits() -> None:
    assert terminal.next_ksn("FFFF9876543210E003FE") == "FFFF9876543210E003FF"  # 10 bits: ok
    assert terminal.next_ksn("FFFF9876543210E003FF") == "FFFF9876543210E00400"
    # 0x7FE has 10 one-bits; 0x7FF would have 11, so the device goes on to 0x800.
    assert terminal.next_ksn("FFFF9876543210E007FE") == "FFFF9876543210E00800"
    assert dukpt.ksn_counter("FFFF9876543210E00400") == 0x400


def test_short_ksn_is_left_padded_and_bad_ksn_rejected() -> None:
    assert dukpt.parse_ksn("9876543210E00001") == bytes.fromhex("FFFF9876543210E00001")
    with pytest.raises(InvalidInputError):
        dukpt.parse_ksn("XYZ")
    with pytest.raises(InvalidInputError):
        dukpt.parse_ksn("FFFF9876543210E0000G")


def test_mac_and_data_variants() -> None:
    key = dukpt.derive_transaction_key(BDK, "FFFF9876543210E00001")
    assert dukpt.derive_mac_key(BDK, "FFFF9876543210E00001") == psec.tools.xor(
        key, dukpt.MAC_VARIANT
    )


def test_remembered_derivations_are_the_derivations(monkeypatch: pytest.MonkeyPatch) -> None:
    ksns, ksn = [], KSN0
    for _ in range(300):
        ksn = terminal.next_ksn(ksn)
        ksns.append(ksn)
    pairs = [(bdk, k) for k in ksns for bdk in (BDK, BDK[8:] + BDK[:8])]
    first = {p: dukpt.derive_pin_key(*p) for p in pairs}
    again = {p: dukpt.derive_pin_key(*p) for p in reversed(pairs)}  # from what is remembered
    dukpt._DERIVED.clear()
    monkeypatch.setattr(dukpt, "_MAX_DERIVED", 5)  # forgotten over and over
    fresh = {p: dukpt.derive_pin_key(*p) for p in pairs}
    assert first == again == fresh
    assert len(dukpt._DERIVED) <= 5
