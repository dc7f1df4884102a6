"""protocols.hsm: round trips for every command and response, and bad bytes never escape."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.core import HsmCore
from protocols import hsm
from protocols.errors import LocalProtocolError, RemoteProtocolError
from tests.hsm.conftest import LMK_HEX

hexs = st.text("0123456789ABCDEF", min_size=32, max_size=32)
variant_key = hexs.map(lambda h: "U" + h)
# ``S`` + a key block: its header's length digits give its length (the codec reads them).
_block_body = st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=32, max_size=160)
key_block = st.tuples(st.sampled_from(["D", "B"]), _block_body).map(
    lambda vb: f"S{vb[0]}{16 + len(vb[1]):04d}P0TB00E0000{vb[1]}"
)
key = st.one_of(variant_key, key_block)
aes256_key = st.text("0123456789ABCDEF", min_size=64, max_size=64).map(lambda h: "U" + h)
digits = st.text("0123456789", min_size=12, max_size=19)


def n(k: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=k, max_size=k)


def h(k: int) -> st.SearchStrategy[str]:
    return st.text("0123456789ABCDEF", min_size=k, max_size=k)


fmt = st.sampled_from(["01", "05", "47"])
REQUESTS = st.one_of(
    st.just(hsm.Diagnostics()),
    st.builds(hsm.GenerateKey, key_type=h(3), mode=st.just("0")),
    st.builds(
        hsm.GenerateKey,
        key_type=st.just("FFF"),
        mode=st.just("1"),
        key_scheme=st.just("S"),
        zmk=key,
        zmk_scheme=st.just("S"),
        key_usage=st.sampled_from(["P0", "M3", "K0"]),
        algorithm=st.sampled_from(["T", "A"]),
        mode_of_use=st.sampled_from(["B", "C", "E"]),
        key_version=n(2),
        exportability=st.sampled_from(["E", "N", "S"]),
    ),
    st.builds(hsm.GenerateKey, key_type=h(3), mode=st.just("1"), zmk=key, zmk_scheme=st.just("X")),
    st.builds(hsm.KeyCheckValue, key=key),
    st.builds(hsm.ImportKey, zmk=key, key_under_zmk=key),
    st.builds(hsm.ExportKey, zmk=key, key=key),
    st.builds(
        hsm.TranslatePinTpkToZpk,
        tpk=key,
        zpk=key,
        pin_block=h(16),
        account=digits,
        src_format=fmt,
        dst_format=st.sampled_from(["01", "48"]),
    ),
    st.builds(
        hsm.TranslatePinZpkToZpk,
        src_zpk=key,
        dst_zpk=key,
        pin_block=h(32),
        account=digits,
        src_format=st.just("48"),
    ),
    st.builds(
        hsm.TranslatePinDukptToZpk, bdk=key, zpk=key, ksn=h(20), pin_block=h(16), account=digits
    ),
    st.builds(
        hsm.TranslatePinAesDukptToZpk,
        bdk=key,
        zpk=key,
        ksn=h(24),
        pin_block=h(32),
        account=digits,
        dst_format=fmt,
        pin_key_length=st.just("1"),
    ),
    st.builds(
        hsm.TranslatePinAesDukptToZpk,
        bdk=aes256_key,
        zpk=key,
        ksn=h(24),
        pin_block=h(32),
        account=digits,
        bdk_length=st.just("2"),
        pin_key_length=st.sampled_from(["1", "2"]),
    ),
    st.builds(
        hsm.VerifyPinPvv, zpk=key, pvk=key, pin_block=h(16), account=digits, pvv=n(4), pvki=n(1)
    ),
    st.builds(
        hsm.VerifyPinIbmTpk,
        tpk=key,
        pvk=key,
        pin_block=h(16),
        account=digits,
        offset=h(12),
        validation_data=h(12),
    ),
    st.builds(
        hsm.VerifyPinIbmZpk,
        zpk=key,
        pvk=key,
        pin_block=h(16),
        account=digits,
        offset=h(12),
        validation_data=h(12),
    ),
    st.builds(hsm.GenerateCvv, cvk=key, pan=digits, expiry=n(4), service_code=n(3)),
    st.builds(hsm.VerifyCvv, cvk=key, cvv=n(3), pan=digits, expiry=n(4), service_code=n(3)),
    st.builds(hsm.GenerateMac, key=key, message=st.binary(max_size=300)),
    st.builds(hsm.VerifyMac, key=key, message=st.binary(max_size=300), mac=h(16)),
    st.builds(
        hsm.VerifyArqc,
        mk_ac=key,
        pan_psn=st.binary(min_size=8, max_size=8),
        atc=st.binary(min_size=2, max_size=2),
        transaction_data=st.binary(max_size=255),
        arqc=st.binary(min_size=8, max_size=8),
        arc=st.binary(min_size=2, max_size=2),
    ),
)
RESPONSES = st.one_of(
    st.builds(hsm.DiagnosticsResult, lmk_check_value=h(16), firmware=st.just("0007-E000")),
    st.builds(hsm.GeneratedKey, key=key, kcv=h(6), key_under_zmk=st.none() | key),
    st.builds(hsm.KeyCheckValueResult, kcv=h(6)),
    st.builds(hsm.ImportedKey, key=key, kcv=h(6)),
    st.builds(hsm.ExportedKey, key_under_zmk=key, kcv=h(6)),
    st.builds(hsm.PinTranslated, pin_length=n(2), dst_format=st.just("01"), pin_block=h(16)),
    st.builds(hsm.PinTranslatedZpk, pin_length=n(2), dst_format=st.just("48"), pin_block=h(32)),
    st.builds(hsm.PinTranslatedDukpt, pin_length=n(2), dst_format=fmt, pin_block=h(16)),
    st.builds(hsm.PinTranslatedAesDukpt, pin_length=n(2), dst_format=fmt, pin_block=h(16)),
    st.builds(hsm.CvvResult, cvv=n(3)),
    st.builds(hsm.MacResult, mac=h(16)),
    st.builds(hsm.ArpcResult, arpc=st.none() | st.binary(min_size=8, max_size=8)),
)
headers = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=4, max_size=4)


@settings(max_examples=300)
@given(header=headers, request=REQUESTS)
def test_request_round_trip(header: str, request: hsm.Request) -> None:
    payload = hsm.encode_request(header, request)
    assert hsm.decode_request(payload) == (header, request)
    assert hsm.peek_header(payload) == header


@settings(max_examples=200)
@given(header=headers, body=RESPONSES)
def test_response_round_trip(header: str, body: hsm.ResponseBody) -> None:
    payload = hsm.encode_response(header, body.CODE, "00", body)
    assert hsm.decode_response(payload) == hsm.HsmResponse(header, body.CODE, "00", body)


def test_error_response_has_no_fields() -> None:
    payload = hsm.encode_response("0042", "ED", "01", hsm.Empty())
    assert payload == b"0042ED01"
    assert hsm.decode_response(payload) == hsm.HsmResponse("0042", "ED", "01")
    assert not hsm.decode_response(payload).ok
    with pytest.raises(hsm.HsmProtocolError):
        hsm.decode_response(b"0042ED01extra")


@pytest.mark.parametrize(
    ("command", "response"),
    [
        ("CA", "CB"),
        ("CY", "CZ"),
        ("M6", "M7"),
        ("M8", "M9"),
        ("G0", "G1"),
        ("Z0", "Z1"),
        ("NC", "ND"),
        ("KQ", "KR"),
        ("A0", "A1"),
        ("BZ", "ZZ"),
        ("?", "ZZ"),
        ("é1", "ZZ"),
    ],
)
def test_response_code(command: str, response: str) -> None:
    assert hsm.response_code(command) == response


def test_every_request_has_its_response_body() -> None:
    for code, cls in hsm.REQUESTS.items():
        assert code == cls.CODE
        body = hsm.response_for(cls.__new__(cls))
        assert body is hsm.Empty or hsm.response_code(code) == body.CODE


@pytest.mark.parametrize(
    ("payload", "error_code", "header", "command"),
    [
        (b"", "15", "0000", "ZZ"),
        (b"00", "15", "0000", "ZZ"),
        (b"0001C", "15", "0001", "ZZ"),
        (b"0001QQ", "68", "0001", "QQ"),
        (b"0001CA", "15", "0001", "CA"),
        (b"0001NCx", "15", "0001", "NC"),
        (b"\xff\xfe\x00\x01CA", "15", "0000", "ZZ"),
        (b"0001BUFF1Z" + b"0" * 32, "15", "0001", "BU"),
        (b"0001CWU" + b"0" * 32 + b"12345678901234567890123;2812101", "15", "0001", "CW"),
    ],
)
def test_malformed_requests(payload: bytes, error_code: str, header: str, command: str) -> None:
    with pytest.raises(hsm.HsmProtocolError) as info:
        hsm.decode_request(payload)
    err = info.value
    assert isinstance(err, RemoteProtocolError)
    assert (err.error_code, err.header, err.command) == (error_code, header, command)
    assert (
        hsm.encode_error(err.header, err.command, err.error_code)[4:8]
        == (hsm.response_code(command) + error_code).encode()
    )


def test_z0_bdk_length_follows_its_flag() -> None:
    tail = "U" + "1" * 32 + "1" + "0" * 24 + "01" + "A" * 32 + "4111111111111111;"
    aes128 = b"0001Z01U" + b"B" * 32 + tail.encode()
    aes256 = b"0001Z02U" + b"B" * 64 + tail.encode()
    assert hsm.decode_request(aes128)[1] == hsm.TranslatePinAesDukptToZpk(
        "U" + "B" * 32, "U" + "1" * 32, "0" * 24, "A" * 32, "4111111111111111"
    )
    request = hsm.decode_request(aes256)[1]
    assert isinstance(request, hsm.TranslatePinAesDukptToZpk)
    assert (request.bdk_length, len(request.bdk)) == ("2", 65)
    # An AES-128 BDK under flag 2 (or the reverse) does not parse.
    for wrong in (b"0001Z02U" + b"B" * 32 + tail.encode(), b"0001Z01U" + b"B" * 64 + tail.encode()):
        with pytest.raises(hsm.HsmProtocolError):
            hsm.decode_request(wrong)


def test_encoding_invalid_requests_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        hsm.encode_request("01", hsm.Diagnostics())
    with pytest.raises(LocalProtocolError):
        hsm.encode_request("0001", hsm.KeyCheckValue(key="U1234"))
    with pytest.raises(LocalProtocolError):
        hsm.encode_request("0001", hsm.GenerateKey(mode="1"))
    with pytest.raises(LocalProtocolError):
        hsm.encode_request(
            "0001", hsm.GenerateCvv(cvk="U" + "0" * 32, pan="12", expiry="2812", service_code="101")
        )


CORE = HsmCore(LMK_HEX)


@settings(max_examples=500)
@given(payload=st.binary(max_size=200))
def test_random_bytes_get_an_error_response(payload: bytes) -> None:
    with contextlib.suppress(hsm.HsmProtocolError):
        hsm.decode_request(payload)
    out = CORE.process(payload)
    assert len(out) >= 8
    assert out[6:8].isalnum()


@settings(max_examples=300)
@given(request=REQUESTS, cut=st.integers(min_value=0, max_value=400), junk=st.binary(max_size=8))
def test_truncated_or_padded_commands_never_crash(
    request: hsm.Request, cut: int, junk: bytes
) -> None:
    payload = hsm.encode_request("0001", request)
    for variant in (payload[:cut], payload + junk, payload[:cut] + junk):
        out = CORE.process(variant)
        head = variant[:4]
        readable = len(head) == 4 and head.isascii() and head.decode().isprintable()
        assert out[:4] == (head if readable else b"0000")
        hsm.decode_response(out)  # always a decodable response


def test_codec_loads_no_event_loop() -> None:
    source = Path(hsm.__file__).read_text(encoding="utf-8")
    for name in ("anyio", "asyncio", "trio", "socket", "structlog", "time"):
        assert f"import {name}" not in source
