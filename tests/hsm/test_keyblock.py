"""TR-31 / X9.143 key blocks: psec's wrap/unwrap against the published examples, the LMK's key
blocks, and the header rules the HSM enforces on every command (one test per rule)."""

from __future__ import annotations

import psec
import pytest

from hsm_sim import keyblock, terminal
from hsm_sim.core import HsmCore
from hsm_sim.keyblock import Attributes
from hsm_sim.lmk import Lmk
from kit.keys import BLOCK_ROLES
from protocols import hsm
from tests.hsm.conftest import LMK_HEX, demo_data

DATA = demo_data()
TPK = DATA["terminals"][0]["tpk"]["key"]
ZPK = DATA["issuers"][0]["zpk"]["key"]
PAN, PIN = "4761730000000011", "1234"
# Another party's HSM (the issuer's): its own LMK, the same ZMK shared on paper.
OTHER_LMK = "0123456789ABCDEFFEDCBA9876543210"
ZMK = "C1D0F8FB4958670DBA40AB1F3752EF0D"  # TR-31:2018 A.7.2 style test key, odd parity


# --------------------------------------------------------------------------- published vectors

# ASC X9 TR-31-2018 (= ANSI X9.143-2022 informative annex), Annex A "Examples", as reproduced
# in the openemv/tr31 test suite (test/tr31_decrypt_test.c): (section, KBPK, key block, key,
# KCV). Version A: variant binding, B: TDES CMAC derivation, C: variant (clarified), D: AES.
PUBLISHED = [
    (
        "A.7.2.1",
        "89E88CF7931444F334BD7547FC3F380C",
        "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701",
        "F039121BEC83D26B169BDCD5B22AAF8F",
        "CB9DEA",
    ),
    (
        "A.7.2.2",
        "DD7515F2BFC17F85CE48F3CA25CB21F6",
        "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
        "3F419E1CB7079442AA37474C2EFBF8B8",
        "57C409",
    ),
    (
        "A.7.3.1",
        "B8ED59E0A279A295E9F5ED7944FD06B9",
        "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9D609"
        "89015D02155C",
        "EDB380DD340BC2620247D445F5B8D678",
        "F4B08D",
    ),
    (
        "A.7.3.2",
        "1D22BF32387C600AD97F9B97A51311AC",
        "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A"
        "52190E248719E24B433627",
        "E8BC63E5479455E26577F715D587FE68",
        "9A4212",
    ),
    (
        "A.7.4",
        "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
        "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E"
        "31DA05F7425509593D03A457DC34",
        "3F419E1CB7079442AA37474C2EFBF8B8",
        "08793E",
    ),
]


@pytest.mark.parametrize(("section", "kbpk", "block", "key", "kcv"), PUBLISHED)
def test_psec_unwraps_the_published_examples(
    section: str, kbpk: str, block: str, key: str, kcv: str
) -> None:
    header, clear = keyblock.unwrap(bytes.fromhex(kbpk), block)
    assert clear.hex().upper() == key
    assert header.version_id == block[0]
    # The KCV the example gives: TDES for T keys, AES-CMAC (X9.24-3) for the AES-wrapped one.
    assert keyblock.check_value(keyblock.AES if section == "A.7.4" else "T", clear) == kcv


# psec's own known values: its test suite (knovichikhin/psec tests/test_tr31.py,
# test_kb_known_values, "known values from 3rd parties") and its documentation's example
# (psec.tr31.unwrap docstring): (KBPK, key block, key).
PSEC_OWN = [
    (
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB",
        "A0088M3TC00E000062C2C14D8785A01A9E8283525CA96F490D0CC6346FC7C2AC1E6FF354468910379AA5BBA6",
        "EEEEEEEEEEEEEEEE",
    ),
    (
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB",
        "B0096M3TC00E0000D578DACC2286C7D10F20DEA88799CA8A2F44E0CC21226A2158D5DC8FD5C78E621327DA95"
        "6C678808",
        "CCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
    ),
    (
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB",
        "C0088M3TC00E00009BC6306FC31891BF87B3148463627B1D68C603D9FAB9074E4A0D2E78D40B29905A826F5C",
        "CCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
    ),
    (
        "89E88CF7931444F334BD7547FC3F380C",
        "B0120P0TE12E0100KS1800604B120F9292800000E6E28F097CB0350B2EB2DF520947F779FA34D9759CEE7E0D"
        "EEACF8353DB778D47FA4EC20DA3A9754",
        "F039121BEC83D26B169BDCD5B22AAF8F",
    ),
    (
        "AB" * 16,
        "B0096P0TE00N0000471D4FBE35E5865BDE20DBF4C15503161F55D681170BF8DD14D01B6822EF8550CB67C569"
        "DE8AC048",
        "CD" * 16,
    ),
]


@pytest.mark.parametrize(("kbpk", "block", "key"), PSEC_OWN)
def test_psec_unwraps_its_own_known_values(kbpk: str, block: str, key: str) -> None:
    header, clear = keyblock.unwrap(bytes.fromhex(kbpk), block)
    assert clear.hex().upper() == key
    assert header.key_usage == block[5:7]
    # Our wrap of the same key under the same KBPK reads back (psec's pad is random).
    attributes = keyblock.header_attributes(header)
    again = keyblock.wrap(bytes.fromhex(kbpk), block[0], attributes, clear)
    assert keyblock.unwrap(bytes.fromhex(kbpk), again)[1] == clear


def test_psec_wraps_the_published_aes_example(monkeypatch: pytest.MonkeyPatch) -> None:
    # TR-31:2018 A.7.4 fixes the random padding (14 bytes) and masks nothing (key length 16).
    _, kbpk, block, key, _ = PUBLISHED[-1]
    monkeypatch.setattr(
        psec.tr31, "_urandom", lambda n: bytes.fromhex("1C2965473CE206BB855B01533782")[:n]
    )
    wrapped = psec.tr31.wrap(bytes.fromhex(kbpk), "D0000P0AE00E0000", bytes.fromhex(key), 16)
    assert wrapped == block


@pytest.mark.parametrize("position", [5, 20, 60, -1])
def test_a_tampered_block_does_not_authenticate(position: int) -> None:
    _, kbpk, block, _, _ = PUBLISHED[-1]
    chars = list(block)
    chars[position] = "0" if chars[position] != "0" else "1"
    with pytest.raises(keyblock.KeyBlockAuthError) as info:
        keyblock.unwrap(bytes.fromhex(kbpk), "".join(chars))
    assert info.value.error_code == "A4"
    assert block[16:40] not in str(info.value)  # no block data in the reason


# --------------------------------------------------------------------------- keys under the LMK

LMK = Lmk(LMK_HEX)


@pytest.fixture
def core() -> HsmCore:
    return HsmCore(LMK)


def s(core: HsmCore, usage: str, mode: str, clear: str, alg: str = "T", export: str = "E") -> str:
    return core.blocks.wrap(Attributes(usage, alg, mode, "00", export), bytes.fromhex(clear))


def call(core: HsmCore, request: hsm.Request) -> hsm.HsmResponse:
    return hsm.decode_response(core.process(hsm.encode_request("0007", request)))


def test_lmk_key_blocks_are_version_d_and_authenticated(core: HsmCore) -> None:
    key = s(core, "P0", "B", ZPK)
    assert key.startswith("SD")
    assert hsm.decode_request(hsm.encode_request("0001", hsm.KeyCheckValue(key=key)))[
        1
    ] == hsm.KeyCheckValue(key=key)
    header, clear = core.blocks.unwrap(key)
    assert (header.key_usage, header.algorithm, header.mode_of_use) == ("P0", "T", "B")
    assert clear.hex().upper() == ZPK
    assert ZPK not in key
    # Another LMK cannot read it: A4.
    assert call(HsmCore(OTHER_LMK), hsm.KeyCheckValue(key=key)).error_code == "A4"
    # Version B under the LMK's TDES key-block key reads too.
    b = core.blocks.wrap(Attributes("P0"), bytes.fromhex(ZPK), keyblock.VERSION_TDES)
    assert b.startswith("SB")
    assert core.blocks.unwrap(b)[1] == bytes.fromhex(ZPK)


def test_key_blocks_and_variants_translate_the_same_pin(core: HsmCore) -> None:
    block = terminal.pin_block_under_tpk(TPK, PIN, PAN)
    answers = []
    for tpk, zpk in (
        (LMK.encrypt(bytes.fromhex(TPK)), LMK.encrypt(bytes.fromhex(ZPK))),
        (s(core, "P0", "D", TPK), s(core, "P0", "E", ZPK)),
    ):
        r = call(core, hsm.TranslatePinTpkToZpk(tpk, zpk, block.hex().upper(), PAN))
        assert r.ok
        answers.append(r.body)
    assert answers[0] == answers[1]


# One test per rule: (what, request builder, expected error). Each key is a key block whose
# header is wrong for exactly one thing the command does with it.
MAC_KEY = "0123456789ABCDEFFEDCBA9876543210"
AES_KEY = "FEDCBA9876543210F1F1F1F1F1F1F1F1"
PIN_BLOCK = "0" * 16


def _rules(core: HsmCore) -> list[tuple[str, hsm.Request, str]]:
    tpk, zpk = s(core, "P0", "B", TPK), s(core, "P0", "B", ZPK)
    pvk = s(core, "V2", "C", MAC_KEY)
    return [
        ("PIN key as MAC key", hsm.GenerateMac(s(core, "P0", "B", MAC_KEY), b"x"), "A6"),
        (
            "MAC key as TPK",
            hsm.TranslatePinTpkToZpk(s(core, "M3", "C", TPK), zpk, PIN_BLOCK, PAN),
            "A6",
        ),
        (
            "encrypt-only TPK decrypting",
            hsm.TranslatePinTpkToZpk(s(core, "P0", "E", TPK), zpk, PIN_BLOCK, PAN),
            "A8",
        ),
        (
            "decrypt-only ZPK encrypting",
            hsm.TranslatePinTpkToZpk(tpk, s(core, "P0", "D", ZPK), PIN_BLOCK, PAN),
            "A8",
        ),
        (
            "CC source encrypt-only",
            hsm.TranslatePinZpkToZpk(s(core, "P0", "E", ZPK), zpk, PIN_BLOCK, PAN),
            "A8",
        ),
        (
            "verify-only MAC key generating",
            hsm.GenerateMac(s(core, "M3", "V", MAC_KEY), b"x"),
            "A8",
        ),
        (
            "generate-only MAC key verifying",
            hsm.VerifyMac(s(core, "M3", "G", MAC_KEY), b"x", "0" * 16),
            "A8",
        ),
        (
            "TDES key for AES-CMAC",
            hsm.GenerateMac(s(core, "M6", "C", MAC_KEY), b"x", hsm.MAC_AES_CMAC),
            "A7",
        ),
        ("AES key for retail MAC", hsm.GenerateMac(s(core, "M3", "C", AES_KEY, "A"), b"x"), "A7"),
        (
            "ZPK as BDK (G0)",
            hsm.TranslatePinDukptToZpk(s(core, "P0", "B", MAC_KEY), zpk, "F" * 20, PIN_BLOCK, PAN),
            "A6",
        ),
        (
            "TDES BDK for AES DUKPT (Z0)",
            hsm.TranslatePinAesDukptToZpk(
                s(core, "B0", "X", AES_KEY), zpk, "0" * 24, "0" * 32, PAN
            ),
            "A7",
        ),
        (
            "Visa PVK for IBM offset",
            hsm.VerifyPinIbmZpk(zpk, pvk, PIN_BLOCK, PAN, "1234FFFFFFFF", "0123456789AN"),
            "A6",
        ),
        (
            "IBM PVK for Visa PVV",
            hsm.VerifyPinPvv(zpk, s(core, "V1", "C", MAC_KEY), PIN_BLOCK, PAN, "1234"),
            "A6",
        ),
        (
            "verify-only CVK generating",
            hsm.GenerateCvv(s(core, "C0", "V", MAC_KEY), PAN, "2812", "101"),
            "A8",
        ),
        (
            "generate-only CVK verifying",
            hsm.VerifyCvv(s(core, "C0", "G", MAC_KEY), "123", PAN, "2812", "101"),
            "A8",
        ),
        (
            "MAC key as MK-AC",
            hsm.VerifyArqc(s(core, "M3", "C", MAC_KEY), bytes(8), bytes(2), b"", bytes(8)),
            "A6",
        ),
        (
            "non-exportable key exported",
            hsm.ExportKey(
                s(core, "K0", "B", MAC_KEY), s(core, "P0", "B", ZPK, export="N"), "FFF", "S"
            ),
            "AA",
        ),
        ("PIN key as ZMK", hsm.ExportKey(zpk, tpk, "FFF", "S"), "A6"),
        (
            "decrypt-only ZMK exporting",
            hsm.ExportKey(s(core, "K0", "D", MAC_KEY), tpk, "FFF", "S"),
            "A8",
        ),
        (
            "encrypt-only ZMK importing",
            hsm.ImportKey(
                s(core, "K0", "E", MAC_KEY), "S" + "D0112P0AE00E0000" + "0" * 96, "FFF", "S"
            ),
            "A8",
        ),
        (
            "A0 usage not the key type's",
            hsm.GenerateKey(
                "001",
                key_scheme="S",
                key_usage="M3",
                algorithm="T",
                mode_of_use="C",
                key_version="00",
                exportability="E",
            ),
            "A6",
        ),
    ]


def test_every_rule_has_a_test(core: HsmCore) -> None:
    # Every role the core enforces appears in the table above.
    named = {v for k, v in vars(keyblock).items() if isinstance(v, keyblock.Use)}
    assert len(named) == 17
    assert len(_rules(core)) >= 20


@pytest.mark.parametrize("index", range(21))
def test_key_used_outside_its_usage_gets_the_error_code(core: HsmCore, index: int) -> None:
    what, request, expected = _rules(core)[index]
    response = call(core, request)
    assert (what, response.error_code) == (what, expected)
    assert response.body is None


def test_a0_a8_a6_key_block_exchange_between_two_hsms(core: HsmCore) -> None:
    """The switch generates a ZPK and sends it under the shared ZMK as a key block; the other
    HSM imports it under its own LMK: same KCV, and a PIN block crosses between them."""
    other = HsmCore(OTHER_LMK)
    zmk_here = s(core, "K0", "B", ZMK)
    zmk_there = other.blocks.wrap(Attributes("K0"), bytes.fromhex(ZMK))
    gen = call(
        core,
        hsm.GenerateKey("FFF", "1", "S", zmk_here, "S", "P0", "T", "B", "00", "E"),
    ).body
    assert isinstance(gen, hsm.GeneratedKey)
    assert gen.key_under_zmk is not None
    assert gen.key_under_zmk.startswith("SB")  # version B under a TDES ZMK
    assert gen.key_under_zmk[6:8] == "P0"
    assert gen.key_under_zmk[12] == "N"
    imported = call(other, hsm.ImportKey(zmk_there, gen.key_under_zmk, "001", "S")).body
    assert isinstance(imported, hsm.ImportedKey)
    assert imported.kcv == gen.kcv
    # The imported key is not exportable at the other side.
    again = call(other, hsm.ExportKey(zmk_there, imported.key, "FFF", "S"))
    assert again.error_code == "AA"
    # A8 from the LMK: the same key again, KCV the same.
    exported = call(core, hsm.ExportKey(zmk_here, gen.key, "001", "S")).body
    assert isinstance(exported, hsm.ExportedKey)
    assert exported.kcv == gen.kcv
    # A PIN block under the switch's copy verifies under the issuer's.
    here = call(
        core,
        hsm.TranslatePinTpkToZpk(
            s(core, "P0", "B", TPK),
            gen.key,
            terminal.pin_block_under_tpk(TPK, PIN, PAN).hex().upper(),
            PAN,
        ),
    ).body
    assert isinstance(here, hsm.PinTranslated)
    there = call(
        other,
        hsm.TranslatePinZpkToZpk(imported.key, imported.key, here.pin_block, PAN),
    ).body
    assert isinstance(there, hsm.PinTranslatedZpk)
    assert there.pin_length == "04"


def test_aes_zmk_exchanges_version_d(core: HsmCore) -> None:
    zmk = s(core, "K0", "B", AES_KEY, "A")
    gen = call(core, hsm.GenerateKey("FFF", "1", "S", zmk, "S", "M6", "A", "C", "00", "E")).body
    assert isinstance(gen, hsm.GeneratedKey)
    assert gen.key_under_zmk is not None
    assert gen.key_under_zmk.startswith("SD")
    imported = call(core, hsm.ImportKey(zmk, gen.key_under_zmk, "FFF", "S")).body
    assert isinstance(imported, hsm.ImportedKey)
    assert imported.kcv == gen.kcv
    mac = call(core, hsm.GenerateMac(imported.key, b"abc", hsm.MAC_AES_CMAC)).body
    assert isinstance(mac, hsm.MacResult)


def test_variant_zmk_and_key_block_forms_mix(core: HsmCore) -> None:
    zmk_u = LMK.encrypt(bytes.fromhex(ZMK))
    gen = call(core, hsm.GenerateKey("001", "1", "U", zmk_u, "S")).body
    assert isinstance(gen, hsm.GeneratedKey)
    assert gen.key.startswith("U")
    assert gen.key_under_zmk is not None
    assert gen.key_under_zmk.startswith("SB")
    back = call(core, hsm.ImportKey(zmk_u, gen.key_under_zmk, "001", "U")).body
    assert back == hsm.ImportedKey(gen.key, gen.kcv)
    # The type code must match the block's usage.
    assert call(core, hsm.ImportKey(zmk_u, gen.key_under_zmk, "008", "S")).error_code == "A6"


def test_tampered_block_under_zmk_is_refused(core: HsmCore) -> None:
    zmk = s(core, "K0", "B", ZMK)
    gen = call(core, hsm.GenerateKey("FFF", "1", "S", zmk, "S", "P0", "T", "B", "00", "E")).body
    assert isinstance(gen, hsm.GeneratedKey)
    assert gen.key_under_zmk is not None
    tampered = gen.key_under_zmk[:-1] + ("0" if gen.key_under_zmk[-1] != "0" else "1")
    assert call(core, hsm.ImportKey(zmk, tampered, "FFF", "S")).error_code == "A4"
    # Under the wrong ZMK: A4 too.
    other_zmk = s(core, "K0", "B", MAC_KEY)
    assert call(core, hsm.ImportKey(other_zmk, gen.key_under_zmk, "FFF", "S")).error_code == "A4"


def test_malformed_key_blocks_never_crash(core: HsmCore) -> None:
    for key in ("S" + "D0048P0TB00E0000" + "0" * 32, "S" + "X0048P0TB00E0000" + "0" * 32):
        assert call(core, hsm.KeyCheckValue(key=key)).error_code == "A4"
    bad = b"0001BUFF1SD0099P0"  # length digits promising more than there is
    assert hsm.decode_response(core.process(bad)).error_code == "15"


# What the switch does with each dataset key held as a key block (kit.keys.BLOCK_ROLES).
ROLE_USES = {
    "tpk": [keyblock.PIN_DECRYPT],
    "bdk": [keyblock.TDES_BDK],
    "tak": [keyblock.MAC_RETAIL_VERIFY, keyblock.MAC_RETAIL_GENERATE],
    "zpk": [keyblock.PIN_ENCRYPT, keyblock.PIN_DECRYPT],
    "zak": [keyblock.MAC_RETAIL_GENERATE, keyblock.MAC_RETAIL_VERIFY],
    "pvk": [keyblock.PVK_VISA],
    "imk_ac": [keyblock.MK_AC],
}


@pytest.mark.parametrize("role", sorted(ROLE_USES))
def test_the_switch_key_roles_allow_what_the_switch_does(role: str) -> None:
    usage, mode = BLOCK_ROLES[role]
    header = Attributes(usage, "T", mode, "00", "N").header("D")
    for use in ROLE_USES[role]:
        use.check(header)  # raises the payShield code if the switch's own use were refused
    # ... and nothing else: a PIN key is no MAC key, a MAC key no PIN key.
    others = [keyblock.PIN_ENCRYPT, keyblock.MAC_RETAIL_GENERATE, keyblock.MK_AC]
    refused = [u for u in others if u not in ROLE_USES[role]]
    for use in refused:
        with pytest.raises(keyblock.KeyBlockError):
            use.check(header)
    assert set(BLOCK_ROLES) == set(ROLE_USES)
