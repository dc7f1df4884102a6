"""The fuzz targets: one check per decoder of a peer's bytes, shared with the hypothesis tests.

Each check takes arbitrary bytes and fails (any exception but the decoder's typed error) when
the decoder breaks its contract: bad input raises only :class:`ProtocolError` (pydantic's
``ValidationError`` for the QR API's bodies, which the API answers 422), and what decodes
comes back unchanged through encode then decode.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.qr import models
from protocols import emv, hsm, keychange, qr_cpm, qr_mpm
from protocols.codec import Codec, MessageFormatError, UndecodableError
from protocols.crc import crc16_hex
from protocols.dialects import DIALECTS
from protocols.errors import FramingError, ProtocolError
from protocols.fastcodec import FastCodec, best_codec
from protocols.framing import ASCII4, FRAMINGS, TPDU_SIZE, Framing
from protocols.message import Message
from protocols.translate import LinkCodec, Translator
from protocols.validate import check_request, parse_field48

Check = Callable[[bytes], None]


def _text(data: bytes) -> str:
    # Peer text reaches the decoders as str (JSON, the codec's fields): any code point may come.
    return data.decode("utf-8", "surrogateescape")


def _decode_outcome(codec: Codec, raw: bytes) -> tuple[Any, ...]:
    try:
        msg = codec.decode(raw)
    except MessageFormatError as exc:
        return ("format", exc.field, exc.reason, exc.mti, exc.rc, exc.echo)
    except UndecodableError as exc:
        return ("undecodable", exc.field, exc.reason, exc.rc)
    return ("ok", msg.mti, msg.fields)


def iso8583(dialect: str) -> Check:
    """FastCodec and pyiso8583 (:class:`Codec`) agree on every input, fail only with their
    typed errors, and a decoded message survives encode then decode on both."""
    exact, fast = Codec(DIALECTS[dialect]), FastCodec(DIALECTS[dialect])

    def check(data: bytes) -> None:
        outcome = _decode_outcome(fast, data)
        assert outcome == _decode_outcome(exact, data), "FastCodec and pyiso8583 disagree"
        if outcome[0] == "format":  # the echo must go back in the format-error answer
            fast.encode(Message(outcome[3], outcome[5]))
        if outcome[0] == "ok":
            msg = Message(outcome[1], outcome[2])
            assert fast.decode(fast.encode(msg)) == msg
            assert exact.decode(exact.encode(msg)) == msg

    return check


def translated(dialect: str) -> Check:
    """An issuer link translating ``dialect`` (1993) to the canonical form: bad bytes raise
    only ProtocolError, and what decodes goes back onto the link (a host's answer echoes it)."""
    codec = LinkCodec(best_codec(DIALECTS[dialect]), Translator(), clock=_fixed_now)

    def check(data: bytes) -> None:
        try:
            msg = codec.decode(data)
        except ProtocolError:
            return
        codec.decode(codec.encode(msg))

    return check


def _fixed_now() -> dt.datetime:
    return dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def framing(data: bytes) -> None:
    """Each framing: fed all at once or byte by byte, a stream gives the same frames and the
    same error, and each frame encodes back to its bytes."""
    for framing in FRAMINGS.values():

        def frames(chunks: list[bytes], framing: Framing = framing) -> tuple[list[bytes], bool]:
            framer, out = framing.framer(256), []
            try:
                for chunk in chunks:
                    framer.feed(chunk)
                    while (frame := framer.next_frame()) is not None:
                        out.append(frame)
            except FramingError:
                return out, True
            return out, False

        whole = frames([data])
        assert whole == frames([data[i : i + 1] for i in range(len(data))])
        header = 4 if framing is ASCII4 else 2
        for frame in whole[0]:
            assert 0 < len(frame) <= 256 + (TPDU_SIZE if framing.tpdu else 0)
            assert framing.encode(frame, 256)[header:] == frame


def emv_tlv(data: bytes) -> None:
    """BER-TLV, flat and recursive: TlvError only; what decodes re-encodes to the same items."""
    for recursive in (False, True):
        try:
            tlv = emv.decode(data, recursive=recursive)
        except emv.TlvError:
            continue
        assert emv.decode(tlv.encode(), recursive=recursive) == tlv
    emv.redact(data)  # logs any peer's field 55: never raises


def _with_crc(text: str) -> str:
    # A mutation almost always breaks the CRC, which decode checks first: this copy gets a
    # right one, so the fuzzer reaches the structure behind it.
    try:
        return text[:-4] + crc16_hex(text[:-4].encode("utf-8"))
    except UnicodeEncodeError:
        return text


def qr_mpm_payload(data: bytes) -> None:
    text = _text(data)
    for payload in (text, _with_crc(text)):
        try:
            qr = qr_mpm.decode(payload)
        except qr_mpm.MpmError:
            continue
        assert qr_mpm.decode(qr_mpm.encode(qr.objects)) == qr


def qr_cpm_payload(data: bytes) -> None:
    """The bytes as sent, and as the BER-TLV inside the base64 (where the structure is)."""
    for payload in (data, base64.b64encode(data)):
        try:
            qr = qr_cpm.decode(payload)
        except qr_cpm.CpmError:
            continue
        assert qr_cpm.decode(qr_cpm.encode(qr.tlv)) == qr


def hsm_request(data: bytes) -> None:
    """What the HSM parses from the gateway (or anyone reaching its port)."""
    try:
        header, request = hsm.decode_request(data)
    except hsm.HsmProtocolError:
        return
    assert hsm.decode_request(hsm.encode_request(header, request)) == (header, request)


def hsm_response(data: bytes) -> None:
    """What the gateway parses from the HSM."""
    try:
        answer = hsm.decode_response(data)
    except hsm.HsmProtocolError:
        return
    again = hsm.encode_response(answer.header, answer.code, answer.error_code, answer.body)
    assert hsm.decode_response(again) == answer


def field48(data: bytes) -> None:
    try:
        parsed = parse_field48(_text(data))
    except ProtocolError:
        return
    assert parse_field48("".join(f"{t}{len(v):02d}{v}" for t, v in parsed.items())) == parsed


def terminal_request(data: bytes) -> None:
    """The field checks take whatever the terminal dialect decodes, and never raise."""
    try:
        msg = _TERMINAL.decode(data)
    except ProtocolError:
        return
    check_request(msg)


def key_change(data: bytes) -> None:
    """A key-change 0800 as either end of an issuer link reads it (``protocols.keychange``):
    only its typed error, and what parses is what the same change is written as."""
    try:
        msg = _TERMINAL.decode(data)
    except ProtocolError:
        return
    if not keychange.is_key_change(msg):
        return
    try:
        change = keychange.parse(msg)
    except keychange.KeyChangeError:
        return
    fields = keychange.request(change.kind, change.key_block, change.kcv, change.generation)
    assert fields == {k: msg.fields[k] for k in ("70", "48", "53")}
    assert keychange.parse(Message("0800", {**msg.fields, **fields})) == change


_TERMINAL = FastCodec(DIALECTS["terminal"])
# The QR API's bodies; the first byte picks the model, the rest is the JSON body.
_MODELS: tuple[type[BaseModel], ...] = (
    models.PaymentRequest,
    models.VerifyRequest,
    models.RefundRequest,
    models.MpmRequest,
)


def qr_api_body(data: bytes) -> None:
    if not data:
        return
    model = _MODELS[data[0] % len(_MODELS)]
    try:
        body = model.model_validate_json(data[1:])
    except ValidationError:
        return
    assert model.model_validate_json(body.model_dump_json()) == body


TARGETS: dict[str, Check] = {
    **{f"iso8583-{name}": iso8583(name) for name in sorted(DIALECTS) if name != "terminal"},
    "translate-iso93-bcd": translated("iso93-bcd"),
    "framing": framing,
    "emv-tlv": emv_tlv,
    "qr-mpm": qr_mpm_payload,
    "qr-cpm": qr_cpm_payload,
    "hsm-request": hsm_request,
    "hsm-response": hsm_response,
    "field48": field48,
    "check-request": terminal_request,
    "key-change": key_change,
    "qr-api": qr_api_body,
}
