"""A link's ISO 8583 dialect as configured (gateway ``[[links]]``, issuer-sim ``[[issuers]]``):
the config model both sides validate with, and the codec it makes.

The canonical form is SPEC's (ISO 8583:1987); a link on a 1993 dialect gets
:class:`protocols.translate.LinkCodec` with a translator (its table with this link's
overrides); a 1987 link keeps the plain fast codec of its dialect (no translation to pay for)
unless it has a static header.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

from pydantic import Field
from pydantic.dataclasses import dataclass

from kit.conf import FROZEN
from protocols.codec import Codec
from protocols.dialects import DIALECTS, get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message
from protocols.translate import DIALECT_VERSIONS, Fallback, LinkCodec, Table, Translator

MAX_HEADER = 32


@dataclass(config=FROZEN)
class TranslationConfig:
    """Overrides of the 1987 <-> 1993 translation table for one link (1993 dialects only)."""

    fallback: str = "05"
    """Canonical response code for an action code the table lacks (logged and counted);
    never ``00``. Its own action code (``100`` for ``05``) answers canonical codes the table
    lacks toward the link."""
    response_codes: dict[str, str] = Field(default_factory=dict)
    """Canonical code -> the link's 3-digit action code, used both ways (``"51" = "116"``);
    replaces the table's entry for that code."""
    mti: dict[str, str] = Field(default_factory=dict)
    """Canonical MTI -> the link's 1993 MTI (``"0400" = "1400"`` for a host that takes 1993
    reversal requests instead of the default 1420 advice)."""


def check_link_dialect(dialect: str, header: str, translation: TranslationConfig | None) -> None:
    """``ValueError`` naming the key at fault (the config loader prefixes its path)."""
    if dialect not in DIALECTS:
        known = sorted(DIALECTS)
        raise ValueError(f"dialect: unknown ISO 8583 dialect {dialect!r}; known: {known}")
    if len(header) > MAX_HEADER or not header.isascii() or not header.isprintable():
        raise ValueError(f"header: at most {MAX_HEADER} printable ASCII characters")
    if translation is not None:
        if DIALECT_VERSIONS.get(dialect) != "1993":
            raise ValueError(
                f"translation: dialect {dialect!r} is the canonical version (1987): nothing to"
                " translate; overrides apply to iso93 dialects"
            )
        table_for(translation)


def table_for(translation: TranslationConfig | None) -> Table:
    table = Translator().table
    if translation is None:
        return table
    try:
        return table.with_overrides(
            response_codes=translation.response_codes,
            mti=translation.mti,
            fallback=translation.fallback,
        )
    except ValueError as exc:
        raise ValueError(f"translation.{exc}") from None


def mti_is_ascii(dialect: str) -> bool:
    """Whether ``dialect`` sends its MTI as ASCII digits (else BCD): what tells two dialects
    apart from a connection's first byte."""
    return str(get_dialect(dialect)["t"]["data_enc"]) == "ascii"


def link_codec(
    dialect: str,
    *,
    header: str = "",
    translation: TranslationConfig | None = None,
    clock: Callable[[], dt.datetime],
    on_fallback: Callable[[Fallback], None] | None = None,
) -> Codec:
    """The codec of a link: canonical messages in and out, the link's dialect on the wire."""
    inner = best_codec(get_dialect(dialect))
    if get_dialect(dialect).get("35", {}).get("data_enc") == "b":
        inner = cast(Codec, Track2Nibbles(inner))
    if DIALECT_VERSIONS.get(dialect) == "1993":
        translator = Translator(table_for(translation), on_fallback)
        return LinkCodec(inner, translator, header=header.encode("ascii"), clock=clock)
    if header:
        return LinkCodec(inner, header=header.encode("ascii"), clock=clock)
    return inner


class Track2Nibbles:
    """A dialect whose track 2 (35) travels as BCD nibbles has ``D`` for its separator: a
    canonical track 2 from SPEC's ASCII terminals (``PAN=YYMM...``) gets it on the way out.
    Without it such a purchase could not be encoded for the link, which the switch took for
    an unavailable issuer (91, then stand-in once the breaker opened); found by ``loadtest
    fuzz-live``'s checks. Decoding is the inner codec's (the ``D`` stays: every reader of
    track 2 takes either separator). Everything else is the inner codec's."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Codec) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, msg: Message) -> bytes:
        track2 = msg.fields.get("35")
        if track2 is not None and "=" in track2:
            msg = Message(msg.mti, {**msg.fields, "35": track2.replace("=", "D")})
        return self._inner.encode(msg)
