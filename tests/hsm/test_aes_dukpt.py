"""ANSI X9.24-3-2017 AES DUKPT and ISO 9564-1 format 4 against published vectors.

Source of every vector below: the ASC X9 "X9.24 Part 3 Test Vectors" supplement
(https://x9.org/standards/x9-24-part-3-test-vectors/), as embedded in the open implementation
openemv/dukpt (Leon Lynch), test/dukpt_aes128_test.c and test/dukpt_aes256_test.c at commit
1d01ddafa9dac103f4eee2ad1b20483596d83012; the page numbers are the supplement's, as cited
there. BDK IDs and counters are the supplement's: initial key ID 1234567890123456.
"""

from __future__ import annotations

import psec
import pytest

from hsm_sim import aes_dukpt, pinblock, terminal
from hsm_sim.errors import InvalidInputError, InvalidPinBlockError, KeyLengthError

BDK128 = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
BDK256 = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1FEDCBA9876543210F1F1F1F1F1F1F1F1")
IKID = bytes.fromhex("1234567890123456")
PIN, PAN = "1234", "4111111111111111"
# The supplement's format 4 example (page 31): the PIN field's random fill is fixed.
RANDOM_FILL = bytes.fromhex("2F69ADDE2E9E7ACE")


def ksn(counter: int) -> str:
    return f"1234567890123456{counter:08X}"


# AES-128 BDK, counters 1-8 (page 2; PIN blocks page 31): (derivation key, PIN key,
# MAC generation key, data encryption key, format 4 PIN block of PIN 1234 / PAN 4111111111111111).
AES128_VECTORS = {
    1: (
        "4F21B565BAD9835E112B6465635EAE44",
        "AF8CB133A78F8DC2D1359F18527593FB",
        "A2DC23DE6FDE0824A2BC321E08E4B8B7",
        "A35C412EFD41FDB98B69797C02DCD08F",
        "A912150391AB65A67E52883D81CE2D15",
    ),
    2: (
        "2F34D68DE10F68D38091A73B9E7C437C",
        "D30BDC73EC9714B000BEC66BDB7B6D09",
        "484C3B06E8562704528CD5B46FB12FB6",
        "D639514AA33AC43AD9229E433D6D4E5B",
        "52A00503BD34BA1383F6A7EE9FE2547F",
    ),
    3: (
        "031504E530365CF81264238540518318",
        "7D69F01F3B45449F62C7816ECE723268",
        "A5DF7D9D800CA769766F0C77CA4E6E6C",
        "EF17F6AB45B4820C93A3DCB21BC491AD",
        "A5A27E82B43A9A866A93D7ABE89CEF93",
    ),
    4: (
        "0EEFC7ADA628BA68878DA9165A8A1887",
        "91A0588318EC2673214271F70137896E",
        "E6E4679647D8A9057C1FC15537CB4C4E",
        "B3BD44C08BB6BA27C3BB4711D7D70387",
        "71B3D0528669498777555A8BE6698E44",
    ),
    5: (
        "C2A7AC328A5DA2D6002D62465BFC028B",
        "35A43BC9EFEB09C756204B57E3FB7D4D",
        "0588185FE1FF8C7E22FAD78C1C61F065",
        "CA02DF6F30B39E14BD0B4A30E460920F",
        "881A7F77A2E04E5BEA985E342FD0B628",
    ),
    6: (
        "D30F7D9351DA58448A2F5E92B4EE3B7D",
        "02DCC6CD1201A3A2CA7099559C862123",
        "7B60F72A5639C0EE7EB2100FA80BB793",
        "C9B8A7C4E486180B2229115164F0B293",
        "BDC1C3871AFB0B340AA5B5CEFD08695E",
    ),
    7: (
        "A8253CEED9AC042C54F75D35C8352278",
        "6ECF912F3B18CA11A7A27BB60705FD09",
        "BAA08CA263C69525BC6B1BA8F4275D69",
        "0FA8F1F0A2DD7B1005A862D77CDED698",
        "4A8E6B8C7DBEE6CBA6DC774F0CB83396",
    ),
    8: (
        "718EE6CF0B27E53D5F7AF99C4D8146A2",
        "4D9DF3FBEE3448FC3E676D04320A90F5",
        "6FD572E5D59E618875F193484F9178FB",
        "650F34204ABD4E57764D61AC3D266FB1",
        "8308BB857C17F390369F761F8EB358FA",
    ),
}

# AES-128 BDK, derivation keys around the counter's bit boundaries (page 5) and the last
# counters (page 6): they exercise the whole intermediate key ladder.
AES128_DERIVATION_KEYS = {
    0x0001FFFE: "E21E8C8D347F8561A2BE752DAA85A111",
    0x00020000: "F7AE9025468A25D37B7249CFFED224C8",
    0x00020001: "692C8EA4013645135B36497131DF9D2C",
    0xFFFE2000: "48E585B694EB0B18D5C35443E163C0BA",
    0xFFFE4000: "396C2C7CA1EA701C03B86B7D41F0C562",
    0xFFFE8000: "0387625F189B58AE03EF0E8CCA41105E",
    0xFFFF0000: "F6BA59389BD14A9855BE9727E7C52E3C",
}

# AES-256 BDK, counters 1-3 (pages 7 and 13): (derivation key, AES-128 PIN key, AES-256 PIN key,
# AES-128 MAC generation key, AES-256 MAC generation key).
AES256_VECTORS = {
    1: (
        "54AC2B32B145EA4A554CB8BC44B17467063A799856B1CCC2A138D36E8DBF78B3",
        "09C9C432966811D6B2C3336BAC1B1202",
        "8C1AB7BEE973829E30242E0BBBDD4946D540C98FC1B5BDCF94790001A23FD502",
        "F04A1FABD4176E15490CEC82E217A96D",
        "61DABDF4B340CF461EE860B1D1AB55357142BD2D6977306859CF49AEFE8F1549",
    ),
    2: (
        "5DD5A0253842BBBE1D7C0DA27021412C6F1FAB53FB928DEAE56DA06090A9DE97",
        "D632226A80795D13A80AFE66A3E97B01",
        "3583D6CD02FC38822CC71A8D7678E04F4A8556335E6CC66863D3DADC5AEE2C62",
        "DD99D77B4E2AB538B26BB6A8B3FB0BE3",
        "4417356219B2F93CE3F2671623DDCAB58A8B85AD80662A8D628024000956D426",
    ),
    3: (
        "8EEEF7C464AE415BB1D73FAED21993CD669F7999092A579EC6DD3CC680C65171",
        "C2CBD3D766B16F9F82F4EE3F74478918",
        "96A1AB5D37CB7CF81DDE64F66C46E0389B833E7AD5F4E44C791F04FAFDA6DA0E",
        "5A742A4A0403B3D7BB30842DAFBB5972",
        "35BD00A46F2A2BD127F565FBF2974B735AE3BB70242C0A415857CF69B2C2691A",
    ),
}


def test_initial_keys_published() -> None:
    assert aes_dukpt.derive_initial_key(BDK128, IKID).hex().upper() == (
        "1273671EA26AC29AFA4D1084127652A1"
    )
    assert aes_dukpt.derive_initial_key(BDK256, IKID).hex().upper() == (
        "CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F"
    )


@pytest.mark.parametrize("counter", sorted(AES128_VECTORS))
def test_aes128_working_keys_published(counter: int) -> None:
    derivation, pin_key, mac_key, data_key, _ = AES128_VECTORS[counter]
    k = ksn(counter)
    assert aes_dukpt.derive_derivation_key(BDK128, k).hex().upper() == derivation
    assert aes_dukpt.derive_pin_key(BDK128, k).hex().upper() == pin_key
    assert aes_dukpt.derive_mac_key(BDK128, k).hex().upper() == mac_key
    data = aes_dukpt.derive_working_key(BDK128, k, aes_dukpt.KeyUsage.DATA_ENCRYPT)
    assert data.hex().upper() == data_key


@pytest.mark.parametrize("counter", sorted(AES128_DERIVATION_KEYS))
def test_aes128_derivation_key_ladder_published(counter: int) -> None:
    key = aes_dukpt.derive_derivation_key(BDK128, ksn(counter))
    assert key.hex().upper() == AES128_DERIVATION_KEYS[counter]


@pytest.mark.parametrize("counter", sorted(AES256_VECTORS))
def test_aes256_bdk_working_keys_published(counter: int) -> None:
    derivation, pin128, pin256, mac128, mac256 = AES256_VECTORS[counter]
    k = ksn(counter)
    assert aes_dukpt.derive_derivation_key(BDK256, k).hex().upper() == derivation
    assert aes_dukpt.derive_pin_key(BDK256, k).hex().upper() == pin128
    assert aes_dukpt.derive_pin_key(BDK256, k, aes_dukpt.AES256).hex().upper() == pin256
    assert aes_dukpt.derive_mac_key(BDK256, k).hex().upper() == mac128
    usage = aes_dukpt.KeyUsage.MAC_GENERATION
    assert aes_dukpt.derive_mac_key(BDK256, k, usage, aes_dukpt.AES256).hex().upper() == mac256


def test_mac_verification_key_has_its_own_usage() -> None:
    # The supplement publishes generation keys only: verification (2001) must differ from them.
    k = ksn(1)
    verify = aes_dukpt.derive_mac_key(BDK128, k, aes_dukpt.KeyUsage.MAC_VERIFICATION)
    assert verify != aes_dukpt.derive_mac_key(BDK128, k)
    assert len(verify) == 16
    with pytest.raises(InvalidInputError):
        aes_dukpt.derive_mac_key(BDK128, k, aes_dukpt.KeyUsage.PIN_ENCRYPTION)


def test_working_key_never_stronger_than_the_bdk() -> None:
    with pytest.raises(KeyLengthError):
        aes_dukpt.derive_pin_key(BDK128, ksn(1), aes_dukpt.AES256)
    with pytest.raises(KeyLengthError):
        aes_dukpt.derive_pin_key(BDK128[:8], ksn(1))
    with pytest.raises(InvalidInputError):
        aes_dukpt.derive_working_key(BDK128, ksn(1), aes_dukpt.KeyUsage.KEY_DERIVATION)


def test_ksn_layout_and_counter_rules() -> None:
    assert aes_dukpt.split_ksn(ksn(0x1FFFE)) == (IKID, 0x1FFFE)
    for bad in ("1234567890123456000001", "1234567890123456000000GG", "12345678901234560000000001"):
        with pytest.raises(InvalidInputError):
            aes_dukpt.parse_ksn(bad)
    # 0, the update key's 0xFFFFFFFF and 0x1FFFF (17 bits set, skipped by the supplement too)
    # are never a transaction's counter.
    for counter in (0, 0xFFFFFFFF, 0x1FFFF):
        with pytest.raises(InvalidInputError):
            aes_dukpt.derive_pin_key(BDK128, ksn(counter))
    assert aes_dukpt.next_counter(1) == 2
    assert aes_dukpt.next_counter(0x1FFFE) == 0x20000
    assert aes_dukpt.next_counter(0xFFFE8000) == 0xFFFF0000
    with pytest.raises(InvalidInputError):
        aes_dukpt.next_counter(0xFFFF0000)


def test_next_counter_walks_only_valid_counters() -> None:
    # High counters, where most values have more than 16 bits set and are skipped.
    counter = 0xFFF00000
    for _ in range(3000):
        aes_dukpt.check_counter(counter)
        nxt = aes_dukpt.next_counter(counter)
        assert all(c.bit_count() > 16 for c in range(counter + 1, nxt))
        counter = nxt


# ------------------------------------------------------------------ ISO 9564-1 format 4


def test_format4_fields_published() -> None:
    # Supplement page 31: plaintext PIN field and PAN field of PIN 1234, PAN 4111111111111111.
    assert psec.pinblock.encode_pan_field_iso_4(PAN).hex().upper() == (
        "44111111111111111000000000000000"
    )
    assert psec.pinblock.encode_pin_field_iso_4(PIN).hex().upper()[:16] == "441234AAAAAAAAAA"


def test_format4_intermediate_blocks_published() -> None:
    # Supplement page 31, counter 1: block B = D(K, PIN block), A = B xor PAN field,
    # PIN field = D(K, A).
    key = bytes.fromhex(AES128_VECTORS[1][1])
    block = bytes.fromhex(AES128_VECTORS[1][4])
    b = psec.aes.decrypt_aes_ecb(key, block)
    assert b.hex().upper() == "9A95036DE7CDB6CEF47BDE89057CB820"
    a = psec.tools.xor(b, psec.pinblock.encode_pan_field_iso_4(PAN))
    assert a.hex().upper() == "DE84127CF6DCA7DFE47BDE89057CB820"
    assert psec.aes.decrypt_aes_ecb(key, a).hex().upper() == "441234AAAAAAAAAA2F69ADDE2E9E7ACE"


@pytest.mark.parametrize("counter", sorted(AES128_VECTORS))
def test_format4_pin_blocks_published(counter: int, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = bytes.fromhex(AES128_VECTORS[counter][4])
    assert aes_dukpt.decrypt_pin_block(BDK128, ksn(counter), expected, PAN) == PIN
    # Enciphering with the supplement's random fill gives its block, byte for byte.
    monkeypatch.setattr(psec.pinblock, "_urandom", lambda n: RANDOM_FILL[:n])
    assert aes_dukpt.encrypt_pin_block(BDK128, ksn(counter), PIN, PAN) == expected
    assert terminal.pin_block_under_aes_dukpt(BDK128, ksn(counter), PIN, PAN) == expected


def test_format4_psec_docstring_example() -> None:
    # psec's published decipher example (psec.pinblock.decipher_pinblock_iso_4).
    key = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    block = bytes.fromhex("E4BE5B623AF7E006AC319E5B93544564")
    assert pinblock.decrypt_pin_block(key, pinblock.FORMAT_ISO4, block, "1234567890123456") == (
        "1234"
    )


def test_format4_wrong_key_or_pan_is_not_a_pin() -> None:
    block = bytes.fromhex(AES128_VECTORS[1][4])
    with pytest.raises(InvalidPinBlockError) as caught:
        aes_dukpt.decrypt_pin_block(BDK128, ksn(2), block, PAN)
    assert PIN not in str(caught.value)
    # A different PAN unbinds the block: never the PIN back.
    try:
        pin = aes_dukpt.decrypt_pin_block(BDK128, ksn(1), block, "4111111111111129")
    except InvalidPinBlockError:
        pin = None
    assert pin != PIN


def test_terminal_next_aes_ksn() -> None:
    assert terminal.next_aes_ksn(ksn(1)) == ksn(2)
    assert terminal.next_aes_ksn(ksn(0x1FFFE)) == ksn(0x20000)
