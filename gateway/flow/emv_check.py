"""Field 55 (EMV data) checks for chip and contactless requests, before anything else runs.

SPEC: a chip (22 = 051) or contactless (22 = 071) authorization or financial request carries
field 55 with tags 9F26 9F27 9F10 9F37 9F36 95 9A 9C 9F02 9F03 5F2A 82 9F1A. A missing field 55,
data that is not BER-TLV, a missing tag or a tag of the wrong length is a format error (30).
Other requests may carry field 55 too (a QR payment with a cryptogram, a reversal): it must
decode, and when it holds a cryptogram (9F26) the data the issuer needs to verify it.

The switch does not verify the cryptogram here: that is the issuer's (it holds the IMK-AC),
except in stand-in, which verifies it at the HSM on the issuer's behalf (gateway/flow/standin.py).
"""

from __future__ import annotations

from typing import Final

from gateway.flow.pipeline import BaseParticipant, Context
from protocols import emv

CHIP_ENTRY_MODES: Final = frozenset({"051", "071"})
AUTHORIZING_MTIS: Final = frozenset({"0100", "0200"})
_CRYPTOGRAM_TAGS: Final = ("9F26", *emv.ARQC_TAGS)


class CheckEmv(BaseParticipant):
    name = "check-emv"

    async def prepare(self, ctx: Context) -> str | None:
        return self.prepare_now(ctx)

    def prepare_now(self, ctx: Context) -> str | None:
        req = ctx.request
        f55 = req.fields.get("55")
        chip = req.mti in AUTHORIZING_MTIS and req.fields.get("22") in CHIP_ENTRY_MODES
        if f55 is None:
            if chip:
                return ctx.decline("30", "field 55 missing for a chip or contactless request")
            return None
        try:
            tlv = emv.decode(bytes.fromhex(f55))
        except ValueError:
            return ctx.decline("30", "field 55 is not binary data")
        except emv.TlvError as exc:
            return ctx.decline("30", f"field 55: {exc.reason}")
        ctx.icc = tlv
        if chip:
            required: tuple[str, ...] = emv.CONTACTLESS_TAGS
        elif "9F26" in tlv:
            required = _CRYPTOGRAM_TAGS
        else:
            return None
        missing = emv.missing_tags(tlv, required)
        if missing:
            return ctx.decline("30", f"field 55 misses tags {' '.join(missing)}")
        try:
            emv.check_lengths(tlv, required)
        except emv.TlvError as exc:
            return ctx.decline("30", f"field 55: {exc.reason}")
        return None
