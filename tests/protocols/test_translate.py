"""Translation canonical (1987) <-> ISO 8583:1993 (protocols/translate.py): the table, jPOS's own
1993 messages (../shared/golden/jpos/) read into the canonical form and built from it, the
fallback for codes the table lacks, the link codec with header and MAC input, and a hypothesis
round trip canonical -> 1993 -> canonical over the messages the switch sends."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.codec import UndecodableError
from protocols.dialects import get_dialect
from protocols.dialects import map_iso87_iso93 as data
from protocols.errors import LocalProtocolError, ProtocolError
from protocols.fastcodec import best_codec
from protocols.keys import original_data
from protocols.mac import mac_field, mac_input
from protocols.message import Message, WireMessage
from protocols.translate import (
    Fallback,
    LinkCodec,
    TranslationError,
    Translator,
    _year,
    default_table,
    table_size,
)

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "golden" / "jpos"
NOW = dt.datetime(2026, 12, 7, 5, 0, tzinfo=dt.UTC)  # the day jPOS's vectors are dated
# SPEC's response-code table (field 39), every code.
SPEC_CODES = (
    *("00", "05", "12", "13", "14", "15", "25", "30", "41", "51", "54", "55", "57", "59"),
    *("61", "63", "65", "75", "91", "94", "96"),
)


def golden(packager: str, name: str) -> Message:
    path = GOLDEN / f"{packager}.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the jPOS vectors live in ../shared)")
    for v in json.loads(path.read_text())["vectors"]:
        if v["name"] == name:
            f: dict[str, Any] = v["fields"]
            return Message(f["0"], {k: x for k, x in f.items() if k not in ("0", "binary_fields")})
    raise AssertionError(name)


def collect() -> tuple[Translator, list[Fallback]]:
    seen: list[Fallback] = []
    return Translator(on_fallback=seen.append), seen


@pytest.mark.parametrize("code", SPEC_CODES)
def test_every_spec_response_code_maps_both_ways(code: str) -> None:
    t, seen = collect()
    for mti in ("0210", "0110", "0410", "0430", "0810", "0230"):
        link = t.to_link(Message(mti, {"39": code}), NOW)
        assert len(link.fields["39"]) == 3
        assert t.from_link(link).fields["39"] == code
    assert seen == []


def test_issues_examples_and_approval_by_class() -> None:
    t, _ = collect()
    pairs = {"00": "000", "51": "116", "55": "117", "54": "101", "14": "111", "91": "911"}
    for canonical, link in pairs.items():
        assert t.to_link(Message("0210", {"39": canonical}), NOW).fields["39"] == link
        assert t.from_link(Message("1210", {"39": link})).fields["39"] == canonical
    # jPOS's vectors: a reversal is accepted with 400, network management with 800.
    assert t.to_link(Message("0430", {"39": "00"}), NOW).fields["39"] == "400"
    assert t.to_link(Message("0810", {"39": "00", "70": "001"}), NOW).fields["39"] == "800"


def test_unmapped_action_code_becomes_the_fallback_decline_and_is_reported() -> None:
    t, seen = collect()
    assert t.from_link(Message("1210", {"39": "002"})).fields["39"] == "05"  # partial amount
    assert seen == [Fallback("from_link", "39", "002", "05")]
    custom = Translator(default_table().with_overrides(fallback="57"), seen.append)
    assert custom.from_link(Message("1210", {"39": "199"})).fields["39"] == "57"
    assert seen[-1] == Fallback("from_link", "39", "199", "57")


def test_unmapped_canonical_code_toward_the_link_is_the_fallbacks_action_code() -> None:
    t, seen = collect()
    assert t.to_link(Message("0210", {"39": "N7"}), NOW).fields["39"] == "100"
    assert seen == [Fallback("to_link", "39", "N7", "100")]


def test_overrides_are_validated_and_apply_both_ways() -> None:
    table = default_table().with_overrides(response_codes={"51": "199"}, mti={"0400": "1400"})
    t = Translator(table)
    assert t.to_link(Message("0210", {"39": "51"}), NOW).fields["39"] == "199"
    assert t.from_link(Message("1210", {"39": "199"})).fields["39"] == "51"
    assert t.from_link(Message("1210", {"39": "116"})).fields["39"] == "51"  # default stays
    assert t.to_link(Message("0400", {}), NOW).mti == "1400"
    assert t.from_link(Message("1400", {})).mti == "0400"
    bad: list[dict[str, Any]] = [
        {"response_codes": {"5": "116"}},
        {"response_codes": {"51": "11"}},
        {"mti": {"0999": "1999"}},
        {"mti": {"0400": "0400"}},
        {"fallback": "00"},
        {"fallback": "ZZ"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            default_table().with_overrides(**kwargs)


def test_jpos_1987_purchase_translates_to_jpos_1993_purchase() -> None:
    """jPOS's ISO87BPackager 0200 and ISO93BPackager 1200 carry the same purchase (the 1200
    without 1987's 25, which has no 1993 home): our translation of one is the other."""
    p87 = golden("ISO87BPackager", "0200 purchase")
    p93 = golden("ISO93BPackager", "1200 purchase")
    t, seen = collect()
    link = t.to_link(p87, NOW)
    assert link.mti == p93.mti
    assert link.fields == p93.fields
    assert seen == [Fallback("to_link", "25", "dropped", "")]
    back = t.from_link(p93)
    assert back.mti == "0200"
    assert back.fields == {k: v for k, v in p87.fields.items() if k != "25"}


# A 1993 dialect's golden translation row: (dialect, jPOS packager of its bytes).
WIRE_GOLDEN = [("iso93-ascii", "ISO93APackager"), ("iso93-bcd", "ISO93BPackager")]


@pytest.mark.parametrize(("dialect", "packager"), WIRE_GOLDEN)
def test_jpos_1993_bytes_read_as_jpos_1987_fields_and_back(dialect: str, packager: str) -> None:
    """On the wire: the bytes jPOS packed for a 1200 purchase, read by a link on ``dialect``,
    are the canonical purchase jPOS packed as a 1987 0200 (but 25, no 1993 home); the
    canonical 0200 sent on that link gives jPOS's bytes back exactly."""
    path = GOLDEN / f"{packager}.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the jPOS vectors live in ../shared)")
    [vector] = [v for v in json.loads(path.read_text())["vectors"] if v["name"] == "1200 purchase"]
    wire = bytes.fromhex(vector["hex"])
    codec = LinkCodec(best_codec(get_dialect(dialect)), Translator(), clock=lambda: NOW)
    p87 = golden("ISO87BPackager", "0200 purchase")
    canonical = Message("0200", {k: v for k, v in p87.fields.items() if k != "25"})
    decoded = codec.decode(wire)
    assert (decoded.mti, decoded.fields) == (canonical.mti, canonical.fields)
    assert codec.encode(canonical) == wire


@pytest.mark.parametrize(("dialect", "packager"), WIRE_GOLDEN)
@pytest.mark.parametrize(
    ("name93", "name87"),
    [("1210 approval", "0210 approval"), ("1200 balance inquiry", "0200 balance inquiry")],
)
def test_jpos_1993_bytes_of_other_messages_read_as_their_1987_twins(
    dialect: str, packager: str, name93: str, name87: str
) -> None:
    """The other pairs of the same transaction, read from jPOS's 1993 bytes. (Sent back they
    differ from jPOS's bytes by what its vectors chose: its 1210 carries no function code, its
    balance inquiry's POS data code says PIN without a PIN block.)"""
    path = GOLDEN / f"{packager}.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the jPOS vectors live in ../shared)")
    [vector] = [v for v in json.loads(path.read_text())["vectors"] if v["name"] == name93]
    codec = LinkCodec(best_codec(get_dialect(dialect)), Translator(), clock=lambda: NOW)
    decoded = codec.decode(bytes.fromhex(vector["hex"]))
    twin = golden("ISO87BPackager", name87)
    assert decoded.mti == twin.mti
    assert decoded.fields == {k: v for k, v in twin.fields.items() if k != "25"}


def test_jpos_1993_answers_read_into_the_canonical_form() -> None:
    t, seen = collect()
    approval = t.from_link(golden("ISO93BPackager", "1210 approval"))
    assert (approval.mti, approval["39"], approval["12"], approval["13"]) == (
        "0210",
        "00",
        "094512",
        "1207",
    )
    rev = t.from_link(golden("ISO93BPackager", "1430 reversal advice response"))
    assert (rev.mti, rev["39"]) == ("0430", "00")  # 25 4021: the switch's timeout advice
    # 56 -> 90: original 1200 -> 0200, STAN, its date-time without the year, acquirer 11.
    assert rev["90"] == "0200" + "000123" + "1207094512" + "00004123456" + "0" * 11
    net = t.from_link(golden("ISO93BPackager", "1814 network management response"))
    assert (net.mti, net["39"], net["70"]) == ("0810", "00", "001")
    assert seen == []


def test_network_management_and_reversals_take_function_and_reason_codes() -> None:
    t, _ = collect()
    for code, function in data.NETWORK_TO_LINK.items():
        link = t.to_link(Message("0800", {"7": "1207000001", "11": "000001", "70": code}), NOW)
        assert (link.mti, link["24"], "70" in link) == ("1804", function, False)
        assert t.from_link(link).fields["70"] == code
    advice = t.to_link(Message("0420", {"4": "000000001000"}), NOW)
    request = t.to_link(Message("0400", {"4": "000000001000"}), NOW)
    assert (advice.mti, advice["24"], advice["25"]) == ("1420", "400", "4021")
    assert (request.mti, request["24"], request["25"]) == ("1420", "400", "4013")
    assert t.from_link(advice).mti == "0420"
    assert t.from_link(request).mti == "0400"
    assert t.from_link(Message("1420", {})).mti == "0420"  # no reason code: an advice


def test_partial_reversal_carries_original_amounts_in_30() -> None:
    t, _ = collect()
    rev = Message("0400", {"4": "000000001000", "95": f"{400:012d}" + "0" * 30})
    link = t.to_link(rev, NOW)
    assert (link["4"], link["30"], link["24"]) == ("000000000400", "000000001000" * 2, "401")
    back = t.from_link(link)
    assert back.fields == rev.fields


def test_field_12_year_is_the_nearest_to_now() -> None:
    t, _ = collect()
    new_year = dt.datetime(2027, 1, 1, 0, 0, 5, tzinfo=dt.UTC)
    late = Message("0200", {"12": "235959", "13": "1231"})
    assert t.to_link(late, new_year)["12"] == "261231235959"
    assert t.to_link(Message("0200", {"12": "000001", "13": "0101"}), new_year)["12"] == (
        "270101000001"
    )


def test_untranslatable_mtis() -> None:
    t, _ = collect()
    with pytest.raises(LocalProtocolError):
        t.to_link(Message("0600", {}), NOW)
    with pytest.raises(TranslationError):
        t.from_link(Message("1604", {}))
    assert issubclass(TranslationError, UndecodableError)


def test_link_codec_translates_on_the_wire_with_header_and_mac_over_link_bytes() -> None:
    codec = LinkCodec(
        best_codec(get_dialect("iso93-bcd")),
        Translator(),
        header=b"ISO0123",
        clock=lambda: NOW,
    )
    msg = Message(
        "0400",
        {
            "3": "000000",
            "4": "000000012345",
            "7": "1207014540",
            "11": "000123",
            "12": "094512",
            "13": "1207",
            "41": "TERM0001",
            "90": original_data("0200", "000123", "1207014512", "4123456"),
            "128": "00" * 8,
        },
    )
    wire = codec.encode(msg)
    assert wire.startswith(b"ISO0123")
    body = wire[len(b"ISO0123") :]
    assert body[:2] == bytes.fromhex("1420")  # BCD MTI
    assert mac_input(codec, msg) == body[:-8]  # MAC over the 1993 bytes, header excluded
    decoded = codec.decode(wire)
    assert isinstance(decoded, WireMessage)
    assert (decoded.mti, decoded.fields) == (msg.mti, msg.fields)
    assert decoded.wire == body
    # The MAC of a received message covers what came, not a re-encoding.
    assert mac_input(codec, decoded) == body[:-8]
    with pytest.raises(UndecodableError):
        codec.decode(b"ISO")


def test_table_size_is_reported() -> None:
    size = table_size()
    assert size["response_to_link"] == len(data.RESPONSE_TO_LINK) + 2
    assert size["response_from_link"] == len(data.RESPONSE_FROM_LINK)
    assert sum(size.values()) > 100


# -- round trip ---------------------------------------------------------------------------

DIGITS = "0123456789"
ROUND_TRIP_CODES = sorted(c for c in data.RESPONSE_TO_LINK if c != "64")  # 64 is one way


def digits(n: int) -> st.SearchStrategy[str]:
    return st.text(DIGITS, min_size=n, max_size=n)


@st.composite
def canonical_messages(draw: st.DrawFn) -> Message:
    """What the switch and the issuer simulator send on a link, in the canonical form."""
    mti = draw(st.sampled_from(sorted(data.MTI_TO_LINK)))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28))
    clock = f"{draw(st.integers(0, 23)):02d}{draw(st.integers(0, 59)):02d}{draw(digits(2))}"
    f: dict[str, str] = {"7": f"{month:02d}{day:02d}{clock}", "11": draw(digits(6))}
    if mti[1] == "8":
        f["70"] = draw(st.sampled_from(sorted(data.NETWORK_TO_LINK)))
    else:
        f["2"] = draw(st.text(DIGITS, min_size=12, max_size=19))
        f["3"] = draw(st.sampled_from(["000000", "010000", "200000", "310000"]))
        f["4"] = draw(digits(12))
        f["12"], f["13"] = clock, f"{month:02d}{day:02d}"
        f["22"] = draw(st.sampled_from(sorted(data.ENTRY_MODE_TO_LINK))) + draw(
            st.sampled_from("012")
        )
        f["41"] = draw(st.text("ABCDEFGH0123456789", min_size=8, max_size=8))
        f["49"] = draw(st.sampled_from(["156", "840"]))
        for key, value in (
            ("14", digits(4)),
            ("23", digits(3)),
            ("32", st.text(DIGITS, min_size=1, max_size=11)),
            ("37", st.text("0123456789ABC", min_size=12, max_size=12)),
            ("52", st.binary(min_size=8, max_size=8).map(lambda b: b.hex().upper())),
            ("55", st.binary(min_size=1, max_size=40).map(lambda b: b.hex().upper())),
        ):
            if draw(st.booleans()):
                f[key] = draw(value)
        if mti[1] == "4":
            acquirer = draw(st.text(DIGITS, min_size=1, max_size=11))
            f["90"] = original_data(
                draw(st.sampled_from(["0100", "0200"])), draw(digits(6)), f["7"], acquirer
            )
            if draw(st.booleans()):
                f["95"] = draw(digits(12)) + "0" * 30
    if mti[2] in "13":
        f["39"] = draw(st.sampled_from(ROUND_TRIP_CODES))
    if draw(st.booleans()):
        f[mac_field(f)] = draw(st.binary(min_size=8, max_size=8)).hex().upper()
    return Message(mti, f)


@given(canonical_messages(), st.sampled_from(["iso93-bcd", "iso93-ascii"]))
def test_round_trip_canonical_to_1993_to_canonical(msg: Message, dialect: str) -> None:
    seen: list[Fallback] = []
    codec = LinkCodec(
        best_codec(get_dialect(dialect)), Translator(on_fallback=seen.append), clock=lambda: NOW
    )
    back = codec.decode(codec.encode(msg))
    assert (back.mti, back.fields) == (msg.mti, msg.fields)
    assert seen == []


@given(
    st.datetimes(min_value=dt.datetime(2001, 1, 1), max_value=dt.datetime(2098, 12, 31)),
    st.integers(1, 12),
    st.integers(1, 31),
)
def test_year_is_the_nearest_one(now: dt.datetime, month: int, day: int) -> None:
    """The shortcut for months near now's agrees with trying the three candidate years."""
    candidates = []
    for year in (now.year - 1, now.year, now.year + 1):
        try:
            candidates.append((abs((dt.datetime(year, month, day) - now).total_seconds()), year))
        except ValueError:
            continue
    if not candidates:
        return  # 31 February: no such day in any year
    assert _year(f"{month:02d}{day:02d}", now) == f"{min(candidates)[1] % 100:02d}"


def test_translate_bench_runs_and_checks_its_links() -> None:
    import time

    from benchmarks.translate import measure

    result = measure(time.process_time, 1, 20)
    assert set(result) == {"iso87-ascii", "iso87-bcd", "iso93-bcd", "translation alone"}
    assert all(us > 0 for us in result.values())


def _golden_hex(packager: str) -> list[bytes]:
    path = GOLDEN / f"{packager}.json"
    if not path.is_file():
        return []
    return [bytes.fromhex(v["hex"]) for v in json.loads(path.read_text())["vectors"]]


_MUTABLE = _golden_hex("ISO93BPackager")


@pytest.mark.skipif(not _MUTABLE, reason="the jPOS vectors live in ../shared")
@given(st.data())
def test_bad_bytes_on_a_translated_link_raise_only_protocol_errors(draw: st.DataObject) -> None:
    """jPOS's 1993 messages with bytes changed, cut or added: the link codec either gives a
    canonical message or raises a ProtocolError (the link logs it), never anything else."""
    codec = LinkCodec(best_codec(get_dialect("iso93-bcd")), Translator(), clock=lambda: NOW)
    raw = bytearray(draw.draw(st.sampled_from(_MUTABLE)))
    for _ in range(draw.draw(st.integers(1, 4))):
        at = draw.draw(st.integers(0, len(raw) - 1))
        raw[at] = draw.draw(st.integers(0, 255))
    raw = raw[: draw.draw(st.integers(0, len(raw)))] + draw.draw(st.binary(max_size=8))
    try:
        msg = codec.decode(bytes(raw))
    except ProtocolError:
        return
    assert msg.mti in set(data.MTI_TO_LINK) | set(data.MTI_DEFAULT_FROM_LINK.values())


def test_every_registered_dialect_has_a_version() -> None:
    """A new dialect must say which version it is, or its links would not know whether to
    translate (README, "How to add a dialect that needs translation")."""
    from protocols.dialects import DIALECTS
    from protocols.translate import DIALECT_VERSIONS

    assert set(DIALECT_VERSIONS) == set(DIALECTS)
    assert set(DIALECT_VERSIONS.values()) == {"1987", "1993"}


def test_what_has_no_1993_home_is_reported() -> None:
    t, seen = collect()
    link = t.to_link(Message("0200", {"7": "1207101500", "12": "101500", "26": "12"}), NOW)
    assert link["12"] == "261207101500"  # a time without 13 is dated by field 7
    assert seen == [Fallback("to_link", "26", "dropped", "")]
    t.to_link(Message("0200", {"13": "1207"}), NOW)
    t.to_link(Message("0200", {"22": "901"}), NOW)  # 90: full magnetic stripe, not in the table
    assert seen[1:] == [
        Fallback("to_link", "13", "dropped", ""),
        Fallback("to_link", "22", "90", "00"),
    ]
