"""The pipeline's limits-and-risk participant: assess and reserve, confirm or release, and
give back on reversals. The engine itself lives in :mod:`gateway.risk`."""

from __future__ import annotations

from gateway.flow.pipeline import BaseParticipant, Context
from gateway.risk import RiskEngine, RiskInput, kind_from_iso
from gateway.risk.cardkey import CardKeyer
from gateway.risk.rules import PIN_REQUIRED
from gateway.risk.verification import card_cvm
from kit.logs import get_logger
from protocols.redact import mask_pan

log = get_logger("gateway.risk")

ASSESSED = frozenset({"0100", "0200"})
REVERSALS = frozenset({"0400", "0420"})
CONTACTLESS = "07"
"""Field 22's PAN entry mode of a contactless tap: its CVM is derived for the no-CVM cap."""


class CheckRisk(BaseParticipant):
    name = "check-risk"

    def __init__(self, engine: RiskEngine) -> None:
        self.engine = engine
        # the HMAC key schedule once, not per card key (the key cannot change on reload)
        self.card_key = CardKeyer(engine.config.pan_key())

    async def prepare(self, ctx: Context) -> str | None:
        req = ctx.request
        if req.mti not in ASSESSED or ctx.merchant is None:
            return None
        fields = req.fields
        kind, counts = kind_from_iso(req.mti, fields["3"])
        merchant = ctx.merchant
        entry = fields.get("22")
        decision = await self.engine.assess(
            RiskInput(
                txn_id=ctx.rrn,
                card_key=self.card_key(ctx.pan),
                masked_pan=mask_pan(ctx.pan),
                pan_prefix=ctx.pan[:8],
                amount=int(fields["4"]),
                currency=fields["49"],
                mcc=merchant.mcc,
                merchant_id=merchant.id,
                terminal_id=fields["41"],
                merchant_country=merchant.country,
                card_country=None,
                counts=counts,
                now=ctx.now,
                kind=kind,
                cvm=card_cvm(fields, ctx.icc)
                if entry is not None and entry[:2] == CONTACTLESS
                else None,
                qr=ctx.qr,
            )
        )
        ctx.risk = decision
        if decision.alerted:
            log.warning("risk_alert", **decision.to_log())
        if decision.rc is not None:
            fired = ",".join(
                h.name if h.detail != PIN_REQUIRED else f"{h.name} ({PIN_REQUIRED})"
                for h in decision.hits
                if h.rc == decision.rc
            )
            return ctx.decline(decision.rc, f"risk: {fired or 'risk'}")
        return None

    async def commit(self, ctx: Context) -> None:
        if ctx.risk is not None:
            await self.engine.confirm(ctx.risk)
        original = ctx.original
        if ctx.request.mti in REVERSALS and ctx.reversed_amount and original is not None:
            await self.engine.reverse(
                self.card_key(original.pan),
                ctx.reversed_amount,
                original.when,
                currency=original.currency,
            )

    async def abort(self, ctx: Context) -> None:
        if ctx.risk is not None:
            await self.engine.release(ctx.risk)
