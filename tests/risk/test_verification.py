"""Verification strength per channel: the pure derivations, on tables."""

from __future__ import annotations

import pytest

from gateway.risk.verification import Cvm, QrTier, card_cvm, qr_tier, unknown_factors
from protocols import emv

BASE = {"2": "5413330000000019", "22": "071"}


def f55(**tags: str) -> str:
    return emv.Tlv((tag, bytes.fromhex(v)) for tag, v in tags.items()).encode().hex().upper()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, Cvm.NONE),
        ({"52": "0123456789ABCDEF"}, Cvm.ONLINE_PIN),
        ({"123": "0" * 56}, Cvm.ONLINE_PIN),  # AES DUKPT PIN
        ({"52": "0123456789ABCDEF", "55": f55(**{"9F34": "3F0000"})}, Cvm.ONLINE_PIN),
        ({"55": f55(**{"9F26": "00" * 8})}, Cvm.NONE),  # no CVM data
        ({"55": f55(**{"9F34": "1F0002"})}, Cvm.NONE),  # "no CVM required"
        ({"55": f55(**{"9F34": "3F0000"})}, Cvm.NONE),  # no CVM performed
        ({"55": f55(**{"9F34": "010002"})}, Cvm.DEVICE),  # plaintext PIN by the ICC / CDCVM
        ({"55": f55(**{"9F34": "440002"})}, Cvm.DEVICE),  # enciphered offline PIN
        ({"55": f55(**{"9F34": "410001"})}, Cvm.NONE),  # offline PIN failed
        ({"55": f55(**{"9F34": "1E0000"})}, Cvm.SIGNATURE),
        ({"55": f55(**{"9F6C": "0080"})}, Cvm.DEVICE),  # CTQ: consumer device CVM
        ({"55": f55(**{"9F6C": "8000"})}, Cvm.NONE),  # online PIN required bit only
        ({"55": f55(**{"9F6C": "0080", "9F34": "3F0000"})}, Cvm.DEVICE),
        ({"55": f55(**{"9F34": "0100"})}, Cvm.NONE),  # wrong length: no evidence
        ({"55": "9F3403"}, Cvm.NONE),  # truncated: CheckEmv's 30, not a CVM
        ({"55": "ZZ"}, Cvm.NONE),
    ],
)
def test_card_cvm(extra: dict[str, str], expected: Cvm) -> None:
    assert card_cvm(BASE | extra) is expected


@pytest.mark.parametrize(
    ("dynamic", "factors", "expected"),
    [
        (False, set(), QrTier.STATIC),
        (False, {"password", "device_certificate"}, QrTier.STATIC),  # static caps everything
        (True, set(), QrTier.ONE_FACTOR),
        (True, {"password"}, QrTier.ONE_FACTOR),
        (True, {"device_certificate"}, QrTier.ONE_FACTOR),
        (True, {"password", "biometric"}, QrTier.TWO_FACTOR),
        (True, {"password", "otp"}, QrTier.TWO_FACTOR),
        (True, {"biometric", "device_certificate"}, QrTier.CERTIFIED),
        (True, {"otp", "e_signature"}, QrTier.CERTIFIED),
        (True, {"password", "biometric", "otp"}, QrTier.TWO_FACTOR),
    ],
)
def test_qr_tier(dynamic: bool, factors: set[str], expected: QrTier) -> None:
    assert qr_tier(dynamic, frozenset(factors)) is expected


def test_unknown_factors_named_sorted() -> None:
    assert unknown_factors(["otp", "sms", "face", "otp"]) == ["face", "sms"]
    assert unknown_factors(["password", "biometric"]) == []


def test_card_cvm_reads_an_already_decoded_field_55() -> None:
    fields = BASE | {"55": f55(**{"9F6C": "0080"})}
    decoded = emv.decode(bytes.fromhex(fields["55"]))
    assert card_cvm(fields, decoded) is card_cvm(fields) is Cvm.DEVICE
    # what CheckEmv decoded is what counts: the hex is not read again
    assert card_cvm(BASE | {"55": "ZZ"}, decoded) is Cvm.DEVICE
