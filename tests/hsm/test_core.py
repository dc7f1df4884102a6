"""Every host command through HsmCore.process, with the demo keys, and its error codes."""

from __future__ import annotations

import dataclasses

import pytest

from hsm_sim import aes_dukpt, dukpt, emv, mac, pinblock, pinverify, terminal
from hsm_sim.core import HsmCore
from hsm_sim.lmk import Lmk
from protocols import hsm
from tests.hsm.conftest import LMK_HEX, demo_data

DATA = demo_data()
ALPHA = DATA["issuers"][0]
BETA = DATA["issuers"][1]
TPK = DATA["terminals"][0]["tpk"]["key"]
BDK = DATA["terminals"][1]["bdk"]["key"]
TAK = DATA["terminals"][1]["tak"]["key"]
PAN, PIN = "4761730000000011", "1234"
LMK = Lmk(LMK_HEX)


def u(clear_hex: str) -> str:
    return LMK.encrypt(bytes.fromhex(clear_hex))


@pytest.fixture
def core() -> HsmCore:
    return HsmCore(LMK_HEX, disabled_commands=["A8"])


def call(core: HsmCore, request: hsm.Request, header: str = "0001") -> hsm.HsmResponse:
    response = hsm.decode_response(core.process(hsm.encode_request(header, request)))
    assert response.header == header
    assert response.code == hsm.response_code(request.CODE)
    return response


def test_nc(core: HsmCore) -> None:
    body = call(core, hsm.Diagnostics()).body
    assert isinstance(body, hsm.DiagnosticsResult)
    assert body.lmk_check_value.startswith("666EA8")
    assert body.firmware == "0007-E000"


def test_a0_bu_a6(core: HsmCore) -> None:
    zmk, _ = LMK.generate()
    r = call(core, hsm.GenerateKey(key_type="001", mode="1", zmk=zmk, zmk_scheme="X"))
    assert isinstance(r.body, hsm.GeneratedKey)
    assert r.body.key_under_zmk is not None
    kcv = call(core, hsm.KeyCheckValue(key=r.body.key)).body
    assert kcv == hsm.KeyCheckValueResult(r.body.kcv)
    imported = call(core, hsm.ImportKey(zmk=zmk, key_under_zmk=r.body.key_under_zmk)).body
    assert imported == hsm.ImportedKey(r.body.key, r.body.kcv)
    assert core.process(b"0002A00ZZZU") == b"0002A115"  # key type not hex: codec error
    assert call(core, hsm.GenerateKey(key_type="FFF")).error_code == "04"
    assert call(core, hsm.GenerateKey(key_scheme="T")).error_code == "26"
    assert call(core, hsm.KeyCheckValue(key=r.body.key, key_length_flag="2")).error_code == "05"


def test_disabled_command(core: HsmCore) -> None:
    zmk, _ = LMK.generate()
    assert call(core, hsm.ExportKey(zmk=zmk, key=zmk)).error_code == "68"


def test_ca_translates_tpk_to_zpk(core: HsmCore) -> None:
    block = terminal.pin_block_under_tpk(TPK, PIN, PAN)
    r = call(core, hsm.TranslatePinTpkToZpk(u(TPK), u(ALPHA["zpk"]["key"]), block.hex(), PAN))
    assert isinstance(r.body, hsm.PinTranslated)
    assert r.body.pin_length == "04"
    zpk = bytes.fromhex(ALPHA["zpk"]["key"])
    assert pinblock.decrypt_pin_block(zpk, "01", bytes.fromhex(r.body.pin_block), PAN) == PIN
    # 12-digit account number form (payShield's) works the same for format 0.
    r12 = call(
        core, hsm.TranslatePinTpkToZpk(u(TPK), u(ALPHA["zpk"]["key"]), block.hex(), PAN[-13:-1])
    )
    assert r12.body == r.body


def test_ca_to_format4_and_cc_back(core: HsmCore) -> None:
    block = terminal.pin_block_under_tpk(TPK, PIN, PAN)
    zpk_a, zpk_b = u(ALPHA["zpk"]["key"]), u(BETA["zpk"]["key"])
    r = call(core, hsm.TranslatePinTpkToZpk(u(TPK), zpk_a, block.hex(), PAN, dst_format="48"))
    assert isinstance(r.body, hsm.PinTranslated)
    assert len(r.body.pin_block) == 32
    r2 = call(core, hsm.TranslatePinZpkToZpk(zpk_a, zpk_b, r.body.pin_block, PAN, src_format="48"))
    assert isinstance(r2.body, hsm.PinTranslatedZpk)
    zpk = bytes.fromhex(BETA["zpk"]["key"])
    assert pinblock.decrypt_pin_block(zpk, "01", bytes.fromhex(r2.body.pin_block), PAN) == PIN


def test_pin_translation_errors(core: HsmCore) -> None:
    block = terminal.pin_block_under_tpk(TPK, PIN, PAN).hex()
    zpk = u(ALPHA["zpk"]["key"])
    even = LMK.encrypt(bytes(16))
    assert call(core, hsm.TranslatePinTpkToZpk(even, zpk, block, PAN)).error_code == "10"
    assert call(core, hsm.TranslatePinTpkToZpk(u(TPK), even, block, PAN)).error_code == "11"
    assert call(core, hsm.TranslatePinTpkToZpk(zpk, zpk, block, PAN)).error_code == "20"
    long_pin = terminal.pin_block_under_tpk(TPK, "123456", PAN).hex()
    too_long = hsm.TranslatePinTpkToZpk(u(TPK), zpk, long_pin, PAN, max_pin_length="04")
    assert call(core, too_long).error_code == "24"
    assert (
        call(core, hsm.TranslatePinTpkToZpk(u(TPK), zpk, block, PAN, dst_format="99")).error_code
        == "23"
    )
    x_key = "X" + u(TPK)[1:]
    assert call(core, hsm.TranslatePinTpkToZpk(x_key, zpk, block, PAN)).error_code == "26"


def test_g0_translates_dukpt_to_zpk(core: HsmCore) -> None:
    ksn = "FFFF9876543210E00003"
    block = terminal.pin_block_under_dukpt(BDK, ksn, "4321", "5413330000000019")
    r = call(
        core,
        hsm.TranslatePinDukptToZpk(
            u(BDK), u(BETA["zpk"]["key"]), ksn, block.hex(), "5413330000000019"
        ),
    )
    assert isinstance(r.body, hsm.PinTranslatedDukpt)
    zpk = bytes.fromhex(BETA["zpk"]["key"])
    assert (
        pinblock.decrypt_pin_block(zpk, "01", bytes.fromhex(r.body.pin_block), "5413330000000019")
        == "4321"
    )
    wrong_ksn = "FFFF9876543210E00004"
    bad = call(
        core,
        hsm.TranslatePinDukptToZpk(
            u(BDK), u(BETA["zpk"]["key"]), wrong_ksn, block.hex(), "5413330000000019"
        ),
    )
    assert bad.error_code == "20"
    assert dukpt.ksn_counter(ksn) == 3


TOKEN = "4895370000000015"  # the demo wallet token of PAN


def test_token_pin_via_format1_ca_g0_then_cc(core: HsmCore) -> None:
    """A PIN block formed with a token reaches the issuer's ZPK as format 0 with the funding
    PAN: CA or G0 to format 05 with the token, then CC 05 -> 01 with the funding PAN."""
    zpk_hex = ALPHA["zpk"]["key"]
    zpk = u(zpk_hex)
    expected = pinblock.encrypt_pin_block(bytes.fromhex(zpk_hex), "01", PIN, PAN).hex().upper()
    ca_block = terminal.pin_block_under_tpk(TPK, PIN, TOKEN).hex()
    ca = call(core, hsm.TranslatePinTpkToZpk(u(TPK), zpk, ca_block, TOKEN, dst_format="05"))
    assert isinstance(ca.body, hsm.PinTranslated)
    assert (ca.body.dst_format, ca.body.pin_length) == ("05", "04")
    ksn = "FFFF9876543210E00005"
    g0_block = terminal.pin_block_under_dukpt(BDK, ksn, PIN, TOKEN).hex()
    g0 = call(core, hsm.TranslatePinDukptToZpk(u(BDK), zpk, ksn, g0_block, TOKEN, "05"))
    assert isinstance(g0.body, hsm.PinTranslatedDukpt)
    assert g0.body.dst_format == "05"
    for iso1 in (ca.body.pin_block, g0.body.pin_block):
        clear = pinblock.decrypt_pin_block(bytes.fromhex(zpk_hex), "05", bytes.fromhex(iso1), PAN)
        assert clear == PIN
        cc = call(core, hsm.TranslatePinZpkToZpk(zpk, zpk, iso1, PAN, "05", "01"))
        assert isinstance(cc.body, hsm.PinTranslatedZpk)
        assert (cc.body.dst_format, cc.body.pin_block) == ("01", expected)
        # The issuer's PVV check with the funding PAN accepts it.
        pvk = ALPHA["pvk"]["key"]
        pvv = pinverify.visa_pvv(bytes.fromhex(pvk), PAN, PIN, "1")
        ec = hsm.VerifyPinPvv(zpk, u(pvk), cc.body.pin_block, PAN, pvv, "1", "01")
        assert call(core, ec).error_code == "00"
    # Translated in one step with the funding PAN, the token's block does not decode (20).
    straight = call(core, hsm.TranslatePinTpkToZpk(u(TPK), zpk, ca_block, PAN))
    assert straight.error_code == "20"
    # A format 0 block is not a format 1 block: CC refuses it (20), as an unknown format (23).
    iso0 = terminal.pin_block_under_tpk(zpk_hex, PIN, PAN).hex()
    assert call(core, hsm.TranslatePinZpkToZpk(zpk, zpk, iso0, PAN, "05", "01")).error_code == "20"
    assert call(core, hsm.TranslatePinZpkToZpk(zpk, zpk, iso0, PAN, "02", "01")).error_code == "23"
    bad_g0 = hsm.TranslatePinDukptToZpk(u(BDK), zpk, ksn, g0_block, TOKEN, "99")
    assert call(core, bad_g0).error_code == "23"


def test_ec_verifies_pvv(core: HsmCore) -> None:
    zpk, pvk = ALPHA["zpk"]["key"], ALPHA["pvk"]["key"]
    pvv = pinverify.visa_pvv(bytes.fromhex(pvk), PAN, PIN, "1")
    block = pinblock.encrypt_pin_block(bytes.fromhex(zpk), "01", PIN, PAN).hex()
    assert call(core, hsm.VerifyPinPvv(u(zpk), u(pvk), block, PAN, pvv)).error_code == "00"
    wrong = pinblock.encrypt_pin_block(bytes.fromhex(zpk), "01", "9999", PAN).hex()
    assert call(core, hsm.VerifyPinPvv(u(zpk), u(pvk), wrong, PAN, pvv)).error_code == "01"


def test_da_and_ea_verify_ibm_offset(core: HsmCore) -> None:
    pvk = bytes.fromhex(ALPHA["pvk"]["key"])
    table = "0123456789012345"
    template = "5555555N"  # N: the last 5 account digits go here
    data = pinverify.ibm3624_validation_data(template, PAN)
    assert data == "555555500001FFFF"
    offset = pinverify.ibm3624_offset(pvk, data, table, PIN).ljust(12, "F")
    tpk_block = terminal.pin_block_under_tpk(TPK, PIN, PAN).hex()
    da = hsm.VerifyPinIbmTpk(
        u(TPK), u(ALPHA["pvk"]["key"]), tpk_block, PAN, offset, template.ljust(12, "F")
    )
    assert call(core, da).error_code == "00"
    zpk = ALPHA["zpk"]["key"]
    zpk_block = pinblock.encrypt_pin_block(bytes.fromhex(zpk), "01", PIN, PAN).hex()
    ea = hsm.VerifyPinIbmZpk(
        u(zpk), u(ALPHA["pvk"]["key"]), zpk_block, PAN, offset, da.validation_data
    )
    assert call(core, ea).error_code == "00"
    other = pinblock.encrypt_pin_block(bytes.fromhex(zpk), "01", "1235", PAN).hex()
    ea_bad = dataclasses.replace(ea, pin_block=other)
    assert call(core, ea_bad).error_code == "01"


def test_cw_cy(core: HsmCore) -> None:
    cvk = u(ALPHA["cvk"]["key"])
    r = call(core, hsm.GenerateCvv(cvk, PAN, "2812", "101"))
    assert isinstance(r.body, hsm.CvvResult)
    assert call(core, hsm.VerifyCvv(cvk, r.body.cvv, PAN, "2812", "101")).error_code == "00"
    other = f"{(int(r.body.cvv) + 1) % 1000:03d}"
    assert call(core, hsm.VerifyCvv(cvk, other, PAN, "2812", "101")).error_code == "01"


def test_m6_m8_retail_and_cmac(core: HsmCore) -> None:
    message = b"0200\x00\x01" + bytes(30)
    r = call(core, hsm.GenerateMac(u(TAK), message))
    assert isinstance(r.body, hsm.MacResult)
    assert bytes.fromhex(r.body.mac) == mac.retail_mac(bytes.fromhex(TAK), message)
    assert call(core, hsm.VerifyMac(u(TAK), message, r.body.mac)).error_code == "00"
    assert call(core, hsm.VerifyMac(u(TAK), message + b"!", r.body.mac)).error_code == "01"
    c = call(core, hsm.GenerateMac(u(TAK), message, algorithm="6"))
    assert isinstance(c.body, hsm.MacResult)
    assert bytes.fromhex(c.body.mac) == mac.aes_cmac(bytes.fromhex(TAK), message)[:8]
    assert call(core, hsm.VerifyMac(u(TAK), message, c.body.mac, algorithm="6")).error_code == "00"
    assert call(core, hsm.GenerateMac(u(TAK), message, algorithm="9")).error_code == "15"
    assert call(core, hsm.GenerateMac(u(TAK), message, key_type="001")).error_code == "04"


def test_kq_arqc_and_arpc(core: HsmCore) -> None:
    imk = BETA["imk_ac"]["key"]
    pan, psn, atc = "5413330000000019", "01", b"\x00\x07"
    data = bytes(range(40))
    arqc = terminal.compute_arqc(imk, pan, psn, atc, data)
    y = emv.option_a_input(pan, psn)
    r = call(core, hsm.VerifyArqc(u(imk), y, atc, data, arqc))
    assert isinstance(r.body, hsm.ArpcResult)
    sk = emv.derive_session_key(emv.derive_icc_master_key(bytes.fromhex(imk), pan, psn), atc)
    assert r.body.arpc == emv.generate_arpc_method_1(sk, arqc, b"00")
    only = call(core, hsm.VerifyArqc(u(imk), y, atc, data, arqc, mode_flag="0"))
    assert only.body == hsm.ArpcResult(None)
    bad = call(core, hsm.VerifyArqc(u(imk), y, atc, data + b"x", arqc))
    assert bad.error_code == "01"
    forced = call(core, hsm.VerifyArqc(u(imk), y, atc, data + b"x", arqc, arc=b"05", mode_flag="2"))
    assert isinstance(forced.body, hsm.ArpcResult)
    assert forced.body.arpc == emv.generate_arpc_method_1(sk, arqc, b"05")
    assert call(core, hsm.VerifyArqc(u(imk), y, atc, data, arqc, scheme_id="0")).error_code == "15"


def test_statistics_count_commands_and_errors(core: HsmCore) -> None:
    call(core, hsm.Diagnostics())
    core.process(b"0001QQ")
    stats = core.statistics()
    assert stats.commands["NC"] == 1
    assert stats.errors["68"] == 1


# Z0, AES DUKPT to ZPK. Vectors: the ANSI X9.24-3-2017 supplement's AES-128 BDK and its format 4
# PIN blocks of PIN 1234, PAN 4111111111111111, counters 1-8 (page 31), as embedded in
# openemv/dukpt test/dukpt_aes128_test.c (see tests/hsm/test_aes_dukpt.py).
AES_BDK = "FEDCBA9876543210F1F1F1F1F1F1F1F1"
AES_BDK256 = AES_BDK * 2
AES_PAN = "4111111111111111"
X924_3_PIN_BLOCKS = {
    1: "A912150391AB65A67E52883D81CE2D15",
    2: "52A00503BD34BA1383F6A7EE9FE2547F",
    3: "A5A27E82B43A9A866A93D7ABE89CEF93",
    4: "71B3D0528669498777555A8BE6698E44",
    5: "881A7F77A2E04E5BEA985E342FD0B628",
    6: "BDC1C3871AFB0B340AA5B5CEFD08695E",
    7: "4A8E6B8C7DBEE6CBA6DC774F0CB83396",
    8: "8308BB857C17F390369F761F8EB358FA",
}


def aes_ksn(counter: int) -> str:
    return f"1234567890123456{counter:08X}"


@pytest.mark.parametrize("counter", sorted(X924_3_PIN_BLOCKS))
def test_z0_translates_published_format4_blocks_to_format0(core: HsmCore, counter: int) -> None:
    zpk_hex = BETA["zpk"]["key"]
    request = hsm.TranslatePinAesDukptToZpk(
        u(AES_BDK), u(zpk_hex), aes_ksn(counter), X924_3_PIN_BLOCKS[counter], AES_PAN
    )
    r = call(core, request)
    assert isinstance(r.body, hsm.PinTranslatedAesDukpt)
    assert (r.body.pin_length, r.body.dst_format, len(r.body.pin_block)) == ("04", "01", 16)
    block = bytes.fromhex(r.body.pin_block)
    assert pinblock.decrypt_pin_block(bytes.fromhex(zpk_hex), "01", block, AES_PAN) == "1234"
    # Format 0 is deterministic: exactly the issuer's own block of that PIN and PAN.
    assert block == pinblock.encrypt_pin_block(bytes.fromhex(zpk_hex), "01", "1234", AES_PAN)


def test_z0_aes256_bdk_and_other_formats(core: HsmCore) -> None:
    zpk_hex = ALPHA["zpk"]["key"]
    zpk = bytes.fromhex(zpk_hex)
    bdk256 = bytes.fromhex(AES_BDK256)
    ksn = aes_ksn(0x20001)
    for pin_key_length, kind in (("1", aes_dukpt.AES128), ("2", aes_dukpt.AES256)):
        pin_key = aes_dukpt.derive_pin_key(bdk256, ksn, kind)
        block = pinblock.encrypt_pin_block(pin_key, "48", "98765432", PAN)
        r = call(
            core,
            hsm.TranslatePinAesDukptToZpk(
                LMK.encrypt(bdk256),
                u(zpk_hex),
                ksn,
                block.hex(),
                PAN,
                "47",
                bdk_length="2",
                pin_key_length=pin_key_length,
            ),
        )
        assert isinstance(r.body, hsm.PinTranslatedAesDukpt)
        assert (r.body.pin_length, r.body.dst_format) == ("08", "47")
        assert pinblock.decrypt_pin_block(zpk, "47", bytes.fromhex(r.body.pin_block), PAN) == (
            "98765432"
        )
    # A token's block goes to format 1 (05), then CC to format 0 with the funding PAN (as G0).
    block = terminal.pin_block_under_aes_dukpt(AES_BDK, aes_ksn(9), PIN, TOKEN)
    z0 = call(
        core,
        hsm.TranslatePinAesDukptToZpk(u(AES_BDK), u(zpk_hex), aes_ksn(9), block.hex(), TOKEN, "05"),
    )
    assert isinstance(z0.body, hsm.PinTranslatedAesDukpt)
    cc = call(core, hsm.TranslatePinZpkToZpk(u(zpk_hex), u(zpk_hex), z0.body.pin_block, PAN, "05"))
    assert isinstance(cc.body, hsm.PinTranslatedZpk)
    assert pinblock.decrypt_pin_block(zpk, "01", bytes.fromhex(cc.body.pin_block), PAN) == PIN


def test_z0_errors(core: HsmCore) -> None:
    zpk = u(BETA["zpk"]["key"])
    block = X924_3_PIN_BLOCKS[1]

    def z0(**changes: str) -> str:
        request = hsm.TranslatePinAesDukptToZpk(u(AES_BDK), zpk, aes_ksn(1), block, AES_PAN)
        return call(core, dataclasses.replace(request, **changes)).error_code

    assert z0() == "00"
    assert z0(ksn=aes_ksn(2)) == "20"  # another counter's key: not a PIN block
    assert z0(account="4111111111111129") == "20"  # the PAN is bound into format 4
    for counter in (0, 0x1FFFF, 0xFFFFFFFF):  # counters no device sends
        assert z0(ksn=aes_ksn(counter)) == "15"
    assert z0(pin_key_length="2") == "27"  # an AES-256 PIN key from an AES-128 BDK
    assert z0(pin_key_length="3") == "15"
    assert z0(dst_format="48") == "23"  # the ZPK is a TDES key
    assert z0(dst_format="99") == "23"
    assert z0(bdk="X" + u(AES_BDK)[1:]) == "26"
    odd = bytearray(bytes.fromhex(BETA["zpk"]["key"]))
    odd[0] ^= 1
    assert z0(zpk=LMK.encrypt(bytes(odd))) == "11"
    # Built by hand (the codec would not carry it): a flag that does not match the key.
    wrong = hsm.TranslatePinAesDukptToZpk(
        LMK.encrypt(bytes.fromhex(AES_BDK256)), zpk, aes_ksn(1), block, AES_PAN
    )
    assert core.execute(wrong) == ("27", None)
    disabled = HsmCore(LMK_HEX, disabled_commands=["Z0"])
    request = hsm.TranslatePinAesDukptToZpk(u(AES_BDK), zpk, aes_ksn(1), block, AES_PAN)
    assert call(disabled, request).error_code == "68"
