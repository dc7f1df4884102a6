"""Translation between the canonical message and a link's ISO 8583 version, sans-IO.

The pipeline, its participants, the journal and the terminals see one form: ISO 8583:1987 as
SPEC's terminal dialect has it. A link whose host speaks ISO 8583:1993 gets its messages
translated at the link boundary, by :class:`LinkCodec` (the link's codec), both ways: MTI
version (0200 <-> 1200 ...), field re-layout (1987 7/12/13 <-> 1993 7/12, 22 <-> the
12-character POS data code, 70 <-> function code 24, 90 <-> 56, 95 <-> 30 and 24 ``401``) and
response codes (39: ``00`` <-> ``000`` ...). The tables are data
(:mod:`protocols.dialects.map_iso87_iso93`); per-link overrides replace entries.

A code the table lacks is never passed through or approved: an unknown action code from a
link becomes the link's fallback decline (``05`` unless configured) and ``on_fallback`` is
told (the caller logs and counts it). Canonical -> 1993 -> canonical gives the message back
for everything the switch sends (tests/protocols/test_translate.py, with hypothesis); where
1993 has no room (a 1987 field without a 1993 home, field 90's forwarding institution, a POS
entry mode missing from the table) the loss is reported the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from protocols.codec import Codec, UndecodableError
from protocols.dialects import map_iso87_iso93 as table
from protocols.errors import LocalProtocolError
from protocols.mac import mac_field
from protocols.message import Message, WireMessage

__all__ = [
    "DIALECT_VERSIONS",
    "Fallback",
    "LinkCodec",
    "Table",
    "TranslationError",
    "Translator",
    "default_table",
    "table_size",
]

# Which ISO 8583 version each registered dialect is (the canonical form is 1987).
DIALECT_VERSIONS: dict[str, str] = {
    "terminal": "1987",
    "iso87-ascii": "1987",
    "iso87-ascii-hex": "1987",
    "iso87-bcd": "1987",
    "iso93-ascii": "1993",
    "iso93-bcd": "1993",
}

# Fields whose 1987 and 1993 meanings and value forms are the same: passed as they are.
SAME_FIELDS = frozenset(
    {
        *("2", "3", "4", "5", "6", "7", "11", "14", "18", "19", "23", "32", "33"),
        *("35", "37", "38", "41", "42", "43", "44", "45", "48", "49", "52", "54", "55"),
        *("60", "61", "62", "63", "100", "102", "103"),
    }
)
_MAC_FIELDS = ("64", "128")
_REVERSAL_CLASS = "4"
_NETWORK_CLASS = "8"
_PARTIAL_REVERSAL = "401"
_RC_CANONICAL = re.compile(r"[0-9A-Z]{2}")
_RC_1993 = re.compile(r"[0-9]{3}")
_MTI_1987 = re.compile(r"0[0-9]{3}")
_MTI_1993 = re.compile(r"1[0-9]{3}")


class TranslationError(UndecodableError):
    """A link message has no canonical form (its MTI is not in the table): not usable."""


@dataclass(frozen=True, slots=True)
class Fallback:
    """Something the table lacked, and what was used instead (safe to log: codes only)."""

    direction: str
    """``from_link`` or ``to_link``."""
    field: str
    """``39``, ``22``, ``70``, ``90`` ... or ``mti``."""
    code: str
    """The value the table has no entry for (a field's value is never given for others:
    ``dropped`` when a whole field had no home)."""
    used: str
    """What was put in its place (``""``: left out)."""


@dataclass(frozen=True, slots=True)
class Table:
    """The translation tables of one link (defaults: :func:`default_table`)."""

    mti_to_link: Mapping[str, tuple[str, str, str]]
    mti_default_from_link: Mapping[str, str]
    network_to_link: Mapping[str, str]
    response_to_link: Mapping[str, str]
    approved_by_class: Mapping[str, str]
    response_from_link: Mapping[str, str]
    fallback: str = "05"
    """Canonical code for a link action code the table lacks (never ``00``)."""
    _mti_from_link: dict[str, list[tuple[str, str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _network_from_link: dict[str, str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for canonical, (link, _, reason) in self.mti_to_link.items():
            self._mti_from_link.setdefault(link, []).append((reason, canonical))
        for code, function in self.network_to_link.items():
            self._network_from_link[function] = code

    def with_overrides(
        self,
        *,
        response_codes: Mapping[str, str] | None = None,
        mti: Mapping[str, str] | None = None,
        fallback: str | None = None,
    ) -> Table:
        """This table with a link's overrides: ``response_codes`` canonical -> 1993 action
        code (used both ways), ``mti`` canonical -> 1993 MTI, ``fallback`` the canonical
        decline for unknown action codes. Raises ``ValueError`` naming the bad entry."""
        to_link = dict(self.response_to_link)
        from_link = dict(self.response_from_link)
        for canonical, link in (response_codes or {}).items():
            if not _RC_CANONICAL.fullmatch(canonical):
                raise ValueError(f"response_codes: {canonical!r} is not a 2-character code")
            if not _RC_1993.fullmatch(link):
                raise ValueError(
                    f"response_codes.{canonical}: {link!r} is not a 3-digit action code"
                )
            to_link[canonical] = link
            from_link[link] = canonical
        mtis = dict(self.mti_to_link)
        defaults = dict(self.mti_default_from_link)
        for canonical, link in (mti or {}).items():
            if canonical not in mtis:
                raise ValueError(f"mti: {canonical!r} is not a canonical MTI of the table")
            if not _MTI_1993.fullmatch(link):
                raise ValueError(f"mti.{canonical}: {link!r} is not a 1993 MTI (1xxx)")
            _, function, reason = mtis[canonical]
            mtis[canonical] = (link, function, reason)
            defaults.setdefault(link, canonical)
        chosen = self.fallback if fallback is None else fallback
        if not _RC_CANONICAL.fullmatch(chosen) or chosen == "00":
            raise ValueError(f"fallback: {chosen!r} must be a 2-character decline, not 00")
        if chosen not in to_link:
            raise ValueError(f"fallback: {chosen!r} has no action code in the table")
        return replace(
            self,
            mti_to_link=mtis,
            mti_default_from_link=defaults,
            response_to_link=to_link,
            response_from_link=from_link,
            fallback=chosen,
        )


def default_table() -> Table:
    return Table(
        mti_to_link=table.MTI_TO_LINK,
        mti_default_from_link=table.MTI_DEFAULT_FROM_LINK,
        network_to_link=table.NETWORK_TO_LINK,
        response_to_link=table.RESPONSE_TO_LINK,
        approved_by_class=table.APPROVED_BY_CLASS,
        response_from_link=table.RESPONSE_FROM_LINK,
    )


def table_size(t: Table | None = None) -> dict[str, int]:
    """Entries per table (README and the closing note quote these)."""
    t = t or default_table()
    return {
        "mti": len(t.mti_to_link) + len(t.mti_default_from_link),
        "network": len(t.network_to_link),
        "response_to_link": len(t.response_to_link) + len(t.approved_by_class),
        "response_from_link": len(t.response_from_link),
        "pos_entry": len(table.ENTRY_MODE_TO_LINK)
        + len(table.ENTRY_MODE_FROM_LINK)
        + len(table.PIN_CAPABILITY_TO_LINK)
        + len(table.PIN_CAPABILITY_FROM_LINK),
    }


def _year(mmdd: str, now: dt.datetime) -> str:
    """The two-digit year that puts month-day ``mmdd`` nearest to ``now`` (a message's date is
    within a day or so of the present; across New Year this picks the right side)."""
    month = mmdd[:2]
    if month.isdigit() and abs(int(month) - now.month) <= 5 and 0 < int(month) <= 12:
        # Within five months of now's month the same year is always the nearest (at most
        # 184 days away, the neighbouring years at least 185): the usual case, no dates built.
        return f"{now.year % 100:02d}"
    best: tuple[float, int] | None = None
    for year in (now.year - 1, now.year, now.year + 1):
        try:
            day = dt.datetime(year, int(mmdd[:2]), int(mmdd[2:4]), tzinfo=now.tzinfo)
        except ValueError:
            continue
        distance = abs((day - now).total_seconds())
        if best is None or distance < best[0]:
            best = (distance, year)
    return f"{(best[1] if best is not None else now.year) % 100:02d}"


class Translator:
    """Canonical (1987) <-> 1993, by one :class:`Table`. Stateless but for the callback."""

    __slots__ = ("on_fallback", "table")

    def __init__(
        self, t: Table | None = None, on_fallback: Callable[[Fallback], None] | None = None
    ) -> None:
        self.table = t or default_table()
        self.on_fallback = on_fallback

    def _fallback(self, direction: str, fld: str, code: str, used: str) -> None:
        if self.on_fallback is not None:
            self.on_fallback(Fallback(direction, fld, code, used))

    # -- canonical -> link ------------------------------------------------------------------

    def to_link(self, msg: Message, now: dt.datetime) -> Message:
        """The 1993 form of canonical ``msg``; ``now`` dates fields that carry a year."""
        t = self.table
        row = t.mti_to_link.get(msg.mti)
        if row is None:
            raise LocalProtocolError(f"MTI {msg.mti} has no 1993 form in the table")
        link_mti, function, reason = row
        src = msg.fields
        # Most fields pass as they are (one comprehension); the loop sees only the others.
        out = {k: v for k, v in src.items() if k in SAME_FIELDS}
        mac: str | None = None
        mti_class = msg.mti[1]
        for key in src.keys() - SAME_FIELDS if len(out) < len(src) else ():
            value = src[key]
            if key in _MAC_FIELDS:
                mac = value
            elif key == "12" or key == "13":
                continue  # below, together
            elif key == "15" and len(value) == 4:
                out["15"] = _year(value, now) + value
            elif key == "22":
                out["22"] = self._pos_to_link(value, "52" in src)
            elif key == "39":
                out["39"] = self._rc_to_link(value, mti_class)
            elif key == "70" and mti_class == _NETWORK_CLASS:
                function = t.network_to_link.get(value, "")
                if not function:
                    self._fallback("to_link", "70", value, "")
            elif key == "90" and mti_class == _REVERSAL_CLASS:
                out["56"] = self._original_to_link(value, now)
            elif key == "95" and mti_class == _REVERSAL_CLASS and "4" in src:
                # A partial reversal: 1993 carries the original amounts in 30 (transaction,
                # reconciliation), the amount that stays in 4, and function code 401.
                out["30"] = src["4"] * 2
                function = _PARTIAL_REVERSAL
            else:
                self._fallback("to_link", key, "dropped", "")
        if function == _PARTIAL_REVERSAL:
            out["4"] = src["95"][:12]
        date, time_ = src.get("13"), src.get("12")
        if time_ is not None:
            if date is None:
                date = src.get("7", "")[:4]  # 1993 12 needs a date: the transmission's
            if len(date) == 4 and len(time_) == 6:
                out["12"] = _year(date, now) + date + time_
            else:
                self._fallback("to_link", "12", "dropped", "")
        elif date is not None:
            self._fallback("to_link", "13", "dropped", "")  # a date alone has no 1993 home
        if function:
            out["24"] = function
        if reason:
            out["25"] = reason
        if mac is not None:
            out[mac_field(out)] = mac
        return Message(link_mti, out)

    def _pos_to_link(self, value: str, pin: bool) -> str:
        entry = table.ENTRY_MODE_TO_LINK.get(value[:2])
        if entry is None:
            self._fallback("to_link", "22", value[:2], "00")
            entry = table.ENTRY_MODE_TO_LINK["00"]
        capability = table.PIN_CAPABILITY_TO_LINK.get(value[2:3])
        if capability is None:
            self._fallback("to_link", "22", value[2:3], "0")
            capability = table.PIN_CAPABILITY_TO_LINK["0"]
        fixed = table.POS_FIXED
        return "".join(
            (
                entry[0],
                capability[0],
                fixed["3"],
                fixed["4"],
                fixed["5"],
                fixed["6"],
                entry[1],
                "1" if pin else "0",  # cardholder authentication method: PIN
                "3" if pin else "0",  # authenticated by the authorising agent (online PIN)
                entry[2],
                fixed["11"],
                capability[1],
            )
        )

    def _rc_to_link(self, code: str, mti_class: str) -> str:
        t = self.table
        if code == "00":
            return t.approved_by_class.get(mti_class, t.response_to_link["00"])
        link = t.response_to_link.get(code)
        if link is None:
            link = t.response_to_link[t.fallback]
            self._fallback("to_link", "39", code, link)
        return link

    def _original_to_link(self, value: str, now: dt.datetime) -> str:
        """90 (MTI 4, STAN 6, transmission MMDDhhmmss 10, acquirer 11, forwarder 11) -> 56
        (MTI 4, STAN 6, date-time YYMMDDhhmmss 12, LL + acquirer): 1993 names the original's
        local date-time; the switch and its issuers match originals on field 7 (SPEC), so the
        original's transmission date-time goes there, dated."""
        mti, stan, when = value[:4], value[4:10], value[10:20]
        acquirer, forwarder = value[20:31], value[31:42]
        row = self.table.mti_to_link.get(mti)
        if row is None:
            self._fallback("to_link", "90", mti, mti)
        if forwarder.strip("0"):
            self._fallback("to_link", "90", "forwarding institution", "")
        ident = acquirer.lstrip("0") or "0"
        link_mti = row[0] if row is not None else mti
        return f"{link_mti}{stan}{_year(when[:4], now)}{when}{len(ident):02d}{ident}"

    # -- link -> canonical ------------------------------------------------------------------

    def from_link(self, msg: Message, wire: bytes = b"") -> WireMessage:
        """The canonical form of 1993 ``msg`` (``wire``: the bytes it came in, for its MAC)."""
        t = self.table
        src = msg.fields
        canonical_mti = self._mti_from_link(msg.mti, src.get("25"))
        mti_class = canonical_mti[1]
        out = {k: v for k, v in src.items() if k in SAME_FIELDS}
        mac: str | None = None
        for key in src.keys() - SAME_FIELDS if len(out) < len(src) else ():
            value = src[key]
            if key in _MAC_FIELDS:
                mac = value
            elif key == "12" and len(value) == 12:
                out["12"], out["13"] = value[6:], value[2:6]
            elif key == "15" and len(value) == 6:
                out["15"] = value[2:]
            elif key == "22" and len(value) == 12:
                out["22"] = self._pos_from_link(value)
            elif key == "24" and mti_class == _NETWORK_CLASS:
                code = t._network_from_link.get(value)
                if code is None:
                    self._fallback("from_link", "24", value, "")
                else:
                    out["70"] = code
            elif key == "39":
                out["39"] = self._rc_from_link(value)
            elif key == "56" and mti_class == _REVERSAL_CLASS:
                out["90"] = self._original_from_link(value)
            # Everything else (24 and 25, read above; 30, read below; 1993 fields with no
            # canonical home, such as 93/94 of a 1814) is left out.
        if (
            mti_class == _REVERSAL_CLASS
            and src.get("24") == _PARTIAL_REVERSAL
            and len(src.get("30", "")) == 24
            and "4" in src
        ):
            out["95"] = src["4"] + "0" * 30
            out["4"] = src["30"][:12]
        if mac is not None:
            out[mac_field(out)] = mac
        return WireMessage(canonical_mti, out, wire)

    def _mti_from_link(self, mti: str, reason: str | None) -> str:
        rows = self.table._mti_from_link.get(mti)
        if rows:
            for row_reason, canonical in rows:
                if row_reason and row_reason == reason:
                    return canonical
        default = self.table.mti_default_from_link.get(mti)
        if default is not None:
            return default
        if rows:
            return rows[0][1]
        raise TranslationError(f"MTI {mti} has no canonical form", field="t")

    def _pos_from_link(self, value: str) -> str:
        mode = table.ENTRY_MODE_FROM_LINK.get(value[6])
        if mode is None:
            self._fallback("from_link", "22", value[6], "00")
            mode = "00"
        capability = table.PIN_CAPABILITY_FROM_LINK.get(value[11])
        if capability is None:
            self._fallback("from_link", "22", value[11], "0")
            capability = "0"
        return mode + capability

    def _rc_from_link(self, code: str) -> str:
        t = self.table
        canonical = t.response_from_link.get(code)
        if canonical is None:
            canonical = t.fallback
            self._fallback("from_link", "39", code, canonical)
        return canonical

    def _original_from_link(self, value: str) -> str:
        mti, stan, when = value[:4], value[4:10], value[10:22]
        length = value[22:24]
        ident = value[24:]
        if not length.isdigit() or int(length) != len(ident) or len(ident) > 11:
            # Not an original this switch could name: refused, as a field that fails to decode.
            raise TranslationError("original data elements malformed", field="56")
        try:
            canonical = self._mti_from_link(mti, None)
        except TranslationError:
            self._fallback("from_link", "56", mti, mti)
            canonical = mti
        return f"{canonical}{stan}{when[2:]}{ident:0>11}{'0' * 11}"


class LinkCodec(Codec):
    """A link's codec: its dialect's codec, a static header, and a :class:`Translator` when the
    link speaks another version than the canonical one. ``decode`` gives canonical messages
    (:class:`WireMessage` when translated), ``encode`` takes them."""

    __slots__ = ("clock", "inner", "translator")

    def __init__(
        self,
        inner: Codec,
        translator: Translator | None = None,
        *,
        header: bytes = b"",
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__(inner.spec)
        self.inner = inner
        self.translator = translator
        self.header = header
        self.clock = clock or _no_clock

    def decode(self, data: bytes) -> Message:
        if self.header:
            # A static header: its length is fixed, its content not checked (hosts put a
            # status or a flag in their answers' headers).
            if len(data) < len(self.header):
                raise UndecodableError("message shorter than the link header")
            data = data[len(self.header) :]
        msg = self.inner.decode(data)
        if self.translator is None:
            return msg
        return self.translator.from_link(msg, data)

    def encode_body(self, msg: Message) -> bytes:
        if self.translator is not None:
            msg = self.translator.to_link(msg, self.clock())
        return self.inner.encode(msg)

    def encode(self, msg: Message) -> bytes:
        return self.header + self.encode_body(msg) if self.header else self.encode_body(msg)


def _no_clock() -> dt.datetime:
    raise LocalProtocolError("a translating link codec needs a clock")
